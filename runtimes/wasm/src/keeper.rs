//! The `wasm` node keeper (`unicri wasm-keeper`): one process per node that runs every
//! WebAssembly container as a thread ([`crate::instance`]), so instances outlive daemon restarts
//! and no process is made per pod or per container (ADR 0007).
//!
//! It speaks the `linux` keeper's protocol ([`unicri_runtime_linux::keeper::proto`]) on its own
//! socket, so the daemon drives it with the same [`KeeperClient`]
//! (`unicri_runtime_linux::keeper::KeeperClient::with_command("wasm-keeper")`). A container is
//! created from the `wasm.json` in its bundle ([`crate::spec::WasmSpec`]): the module is
//! compiled (or loaded from the cache) at create, so start only instantiates. Records in
//! `records/<id>.json` keep exit codes across keeper restarts; an instance that was running when
//! its keeper died is reported as exited with code 255 (its thread died with the process).
//!
//! [`KeeperClient`]: unicri_runtime_linux::keeper::KeeperClient

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use unicri_runtime_linux::keeper::logs::LogFile;
use unicri_runtime_linux::keeper::now_ns;
use unicri_runtime_linux::keeper::proto::{
    ContainerInfo, CreateRequest, PROTOCOL_VERSION, Request, Response,
};
use unicri_sandbox::container::ExitStatus;

use crate::engine::{Compiled, Runtime};
use crate::error::WasmError;
use crate::instance::{self, Outcome, Running};
use crate::spec::{SPEC_FILE, WasmSpec, detect};

/// What `unicri wasm-keeper` is started with.
#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// The keeper directory: `keeper.sock`, `keeper.lock`, `records/`, `cache/`.
    pub dir: PathBuf,
    /// Exit after this long without containers or requests; `None`: never.
    pub idle_exit: Option<Duration>,
}

/// A container record as persisted in `records/<id>.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    info: ContainerInfo,
    bundle: PathBuf,
}

struct Entry {
    record: Record,
    spec: Option<WasmSpec>,
    compiled: Option<Compiled>,
    log: Option<LogFile>,
    running: Option<Running>,
    exited: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Entry>,
    last_activity: Option<Instant>,
    busy: usize,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Ctx {
    state: Shared,
    records: PathBuf,
    rt: Arc<Runtime>,
}

/// Runs the keeper until it is idle long enough (or SIGTERM while it holds no container).
/// Returns `Ok(false)` when another keeper already owns `dir`.
pub fn run(cfg: KeeperConfig) -> std::io::Result<bool> {
    let records = cfg.dir.join("records");
    std::fs::create_dir_all(&records)?;
    let lock_file = File::create(cfg.dir.join("keeper.lock"))?;
    let lock = match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, e)) => return Err(std::io::Error::from(e)),
    };
    let rt = Runtime::new(&cfg.dir.join("cache")).map_err(std::io::Error::other)?;
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ctx = Arc::new(Ctx {
        state: Arc::new(Mutex::new(State {
            last_activity: Some(Instant::now()),
            ..State::default()
        })),
        records,
        rt,
    });
    let result = tokio_rt.block_on(serve(cfg, ctx));
    drop(lock);
    result.map(|()| true)
}

async fn serve(cfg: KeeperConfig, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    load_records(&ctx);
    let socket = cfg.dir.join("keeper.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tracing::info!(dir = %cfg.dir.display(), pid = std::process::id(), "wasm keeper serving");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let ctx = ctx.clone();
                    lock(&ctx.state).busy += 1;
                    tokio::spawn(async move {
                        if let Err(error) = handle_conn(stream, &ctx).await {
                            tracing::debug!(%error, "wasm keeper connection ended with an error");
                        }
                        let mut st = lock(&ctx.state);
                        st.busy -= 1;
                        st.last_activity = Some(Instant::now());
                    });
                }
            }
            _ = sigterm.recv() => {
                if lock(&ctx.state).containers.is_empty() {
                    break;
                }
                tracing::warn!("SIGTERM ignored: the wasm keeper holds containers");
            }
            _ = tick.tick() => {
                if let Some(idle) = cfg.idle_exit {
                    let st = lock(&ctx.state);
                    let quiet = st.containers.is_empty() && st.busy == 0;
                    if quiet && st.last_activity.is_some_and(|t| t.elapsed() >= idle) {
                        break;
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    tracing::info!("wasm keeper exiting: idle");
    Ok(())
}

async fn handle_conn(stream: UnixStream, ctx: &Arc<Ctx>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd);
    rd.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => dispatch(req, ctx).await,
        Err(e) => error("invalid_argument", format!("bad keeper request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

fn error(kind: &str, message: impl Into<String>) -> Response {
    Response::Error {
        kind: kind.into(),
        message: message.into(),
    }
}

fn not_found(id: &str) -> Response {
    error(
        "not_found",
        format!("container {id} is not known to the wasm keeper"),
    )
}

fn from_wasm_error(e: &WasmError) -> Response {
    let kind = match e {
        WasmError::InvalidArgument(_) | WasmError::Compile { .. } => "invalid_argument",
        WasmError::FailedPrecondition(_) => "failed_precondition",
        WasmError::Io { .. } => "internal",
    };
    error(kind, e.to_string())
}

const NO_PROCESSES: &str = "a WebAssembly container has no processes: exec, attach and a \
     shared PID namespace are not available on the wasm runtime handler";

async fn dispatch(req: Request, ctx: &Arc<Ctx>) -> Response {
    match req {
        Request::Ping => Response::Pong {
            version: PROTOCOL_VERSION,
            pid: std::process::id() as i32,
        },
        Request::Create(req) => create(req, ctx).await,
        Request::Start { id } => start(&id, ctx),
        Request::Kill { id, signal, .. } => kill(&id, signal, ctx),
        Request::State { id } => match lock(&ctx.state).containers.get(&id) {
            Some(e) => Response::Container(info_of(e)),
            None => not_found(&id),
        },
        Request::List => Response::Containers {
            containers: lock(&ctx.state).containers.values().map(info_of).collect(),
        },
        Request::Wait { id, timeout_ms } => wait(&id, timeout_ms, ctx).await,
        Request::ReopenLog { id } => match lock(&ctx.state).containers.get(&id) {
            Some(Entry { log: Some(log), .. }) => match log.reopen() {
                Ok(()) => Response::Ok,
                Err(e) => error("internal", format!("reopen the log of {id}: {e}")),
            },
            Some(_) => Response::Ok,
            None => not_found(&id),
        },
        Request::Delete { id } => delete(&id, ctx).await,
        Request::Exec(_)
        | Request::ExecStream(_)
        | Request::Attach { .. }
        | Request::PodInit { .. } => error("failed_precondition", NO_PROCESSES),
    }
}

fn info_of(e: &Entry) -> ContainerInfo {
    let mut info = e.record.info.clone();
    if let Some(r) = &e.running {
        info.usage = Some(r.meter.usage());
    }
    info
}

fn persist(ctx: &Ctx, record: &Record) {
    let path = ctx.records.join(format!("{}.json", record.info.id));
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = result {
        tracing::error!(id = %record.info.id, %error, "cannot persist a wasm container record");
    }
}

fn load_records(ctx: &Ctx) {
    let Ok(rd) = std::fs::read_dir(&ctx.records) else {
        return;
    };
    let mut st = lock(&ctx.state);
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(mut record) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if record.info.exit.is_none() && record.info.state == "running" {
            // its thread died with the previous keeper
            record.info.state = "unknown".into();
            record.info.exit = Some(ExitStatus {
                code: 255,
                finished_at: now_ns(),
                message: "the wasm keeper restarted while the instance ran".into(),
                ..ExitStatus::default()
            });
            persist(ctx, &record);
        }
        let done = record.info.exit.is_some();
        let log = record
            .info
            .log_path
            .as_deref()
            .and_then(|p| LogFile::open(p).ok());
        st.containers.insert(
            record.info.id.clone(),
            Entry {
                record,
                spec: None,
                compiled: None,
                log,
                running: None,
                exited: tokio::sync::watch::Sender::new(done),
            },
        );
    }
}

/// Reads the bundle's spec and compiles (or loads) its module.
fn prepare(rt: &Runtime, bundle: &Path) -> Result<(WasmSpec, Compiled), WasmError> {
    let path = bundle.join(SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(WasmError::io(format!("read {}", path.display())))?;
    let spec: WasmSpec = serde_json::from_slice(&bytes)
        .map_err(|e| WasmError::InvalidArgument(format!("{}: {e}", path.display())))?;
    let mut head = [0u8; 8];
    let n = std::io::Read::read(
        &mut File::open(&spec.module)
            .map_err(WasmError::io(format!("open {}", spec.module.display())))?,
        &mut head,
    )
    .map_err(WasmError::io(format!("read {}", spec.module.display())))?;
    let kind = detect(&head[..n]).map_err(|what| {
        WasmError::InvalidArgument(format!(
            "{} is not a WebAssembly module but {what}",
            spec.module.display()
        ))
    })?;
    let (compiled, source) = rt.load(&spec.module, kind)?;
    tracing::debug!(module = %spec.module.display(), ?source, "module ready");
    Ok((spec, compiled))
}

async fn create(req: CreateRequest, ctx: &Arc<Ctx>) -> Response {
    if let Some(e) = lock(&ctx.state).containers.get(&req.id) {
        return Response::Container(info_of(e));
    }
    let rt = ctx.rt.clone();
    let bundle = req.bundle.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&rt, &bundle)).await;
    let (spec, compiled) = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return from_wasm_error(&e),
        Err(e) => return error("internal", format!("compile task: {e}")),
    };
    let log = match &req.log_path {
        Some(p) => match LogFile::open(p) {
            Ok(l) => Some(l),
            Err(e) => return error("internal", format!("open log {}: {e}", p.display())),
        },
        None => None,
    };
    let record = Record {
        info: ContainerInfo {
            id: req.id.clone(),
            pid: std::process::id() as i32,
            state: "created".into(),
            created_at: now_ns(),
            log_path: req.log_path.clone(),
            ..ContainerInfo::default()
        },
        bundle: req.bundle.clone(),
    };
    let mut st = lock(&ctx.state);
    if let Some(e) = st.containers.get(&req.id) {
        return Response::Container(info_of(e));
    }
    persist(ctx, &record);
    let info = record.info.clone();
    st.containers.insert(
        req.id.clone(),
        Entry {
            record,
            spec: Some(spec),
            compiled: Some(compiled),
            log,
            running: None,
            exited: tokio::sync::watch::Sender::new(false),
        },
    );
    Response::Container(info)
}

fn start(id: &str, ctx: &Arc<Ctx>) -> Response {
    let mut st = lock(&ctx.state);
    let Some(e) = st.containers.get_mut(id) else {
        return not_found(id);
    };
    if e.record.info.state != "created" {
        return if e.record.info.state == "running" {
            Response::Container(info_of(e))
        } else {
            error(
                "failed_precondition",
                format!("container {id} is {}, not created", e.record.info.state),
            )
        };
    }
    // a keeper restart between create and start lost the compiled module: prepare again
    if e.spec.is_none() || e.compiled.is_none() {
        match prepare(&ctx.rt, &e.record.bundle) {
            Ok((s, c)) => {
                e.spec = Some(s);
                e.compiled = Some(c);
            }
            Err(err) => return from_wasm_error(&err),
        }
    }
    let (Some(spec), Some(compiled)) = (e.spec.take(), e.compiled.take()) else {
        return error("internal", "prepared module vanished");
    };
    let weak = Arc::downgrade(ctx);
    let cid = id.to_string();
    let started = instance::start(ctx.rt.clone(), compiled, spec, e.log.clone(), move |o| {
        if let Some(ctx) = weak.upgrade() {
            finished(&ctx, &cid, o);
        }
    });
    match started {
        Ok(running) => {
            e.running = Some(running);
            e.record.info.state = "running".into();
            e.record.info.started_at = now_ns();
            persist(ctx, &e.record);
            Response::Container(info_of(e))
        }
        Err(err) => error("internal", format!("start the instance thread: {err}")),
    }
}

/// Called on the instance's thread when it ends.
fn finished(ctx: &Ctx, id: &str, o: Outcome) {
    let mut st = lock(&ctx.state);
    let Some(e) = st.containers.get_mut(id) else {
        return;
    };
    let usage = e.running.take().map(|r| r.meter.usage());
    tracing::info!(%id, code = o.code, oom_killed = o.oom_killed, message = %o.message, "wasm container exited");
    e.record.info.exit = Some(ExitStatus {
        code: o.code,
        signal: o.signal,
        oom_killed: o.oom_killed,
        finished_at: now_ns(),
        message: o.message,
    });
    e.record.info.usage = usage;
    e.record.info.state = "exited".into();
    persist(ctx, &e.record);
    e.exited.send_replace(true);
}

fn kill(id: &str, signal: i32, ctx: &Arc<Ctx>) -> Response {
    let mut st = lock(&ctx.state);
    let Some(e) = st.containers.get_mut(id) else {
        return not_found(id);
    };
    match e.record.info.state.as_str() {
        "running" => {
            if let Some(r) = e.running.as_mut() {
                r.kill(signal);
            }
        }
        "created" => {
            e.record.info.state = "exited".into();
            e.record.info.exit = Some(ExitStatus {
                code: 128 + signal,
                signal: Some(signal),
                finished_at: now_ns(),
                ..ExitStatus::default()
            });
            e.spec = None;
            e.compiled = None;
            persist(ctx, &e.record);
            e.exited.send_replace(true);
        }
        _ => {}
    }
    Response::Ok
}

async fn wait(id: &str, timeout_ms: u64, ctx: &Arc<Ctx>) -> Response {
    let rx = match lock(&ctx.state).containers.get(id) {
        Some(e) => e.exited.subscribe(),
        None => return not_found(id),
    };
    let mut rx = rx;
    let done = rx.wait_for(|d| *d);
    if timeout_ms == 0 {
        let _ = done.await;
    } else {
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), done).await;
    }
    match lock(&ctx.state).containers.get(id) {
        Some(e) => Response::Container(info_of(e)),
        None => not_found(id),
    }
}

async fn delete(id: &str, ctx: &Arc<Ctx>) -> Response {
    let rx = {
        let mut st = lock(&ctx.state);
        let Some(e) = st.containers.get_mut(id) else {
            return Response::Ok;
        };
        if let Some(r) = e.running.as_mut() {
            r.kill(9);
        }
        e.exited.subscribe()
    };
    let running = lock(&ctx.state)
        .containers
        .get(id)
        .is_some_and(|e| e.record.info.state == "running");
    if running {
        let mut rx = rx;
        if tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|d| *d))
            .await
            .is_err()
        {
            return error(
                "internal",
                format!("container {id} did not end within 10s of its kill"),
            );
        }
    }
    lock(&ctx.state).containers.remove(id);
    let _ = std::fs::remove_file(ctx.records.join(format!("{id}.json")));
    Response::Ok
}
