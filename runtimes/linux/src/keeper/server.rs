//! The keeper process (`unicri keeper`): one per node, single-threaded, child subreaper. It
//! creates containers through libcontainer (so their inits are its children), owns their stdio
//! pipes, writes their CRI log files, reaps them and records exit codes and OOM kills durably
//! under its directory. It exits by itself when it has held no container for `idle_exit`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot, watch};
use unicri_sandbox::container::ExitStatus;

use super::fdio::{ConsoleSocket, FdIo};
use super::logs::{LineSplitter, LogFile, Stream};
use super::proto::frame;
use super::proto::{
    ContainerInfo, CreateRequest, EXEC_OUTPUT_LIMIT, ExecRequest, ExecResult, PROTOCOL_VERSION,
    Request, Response,
};
use super::{KeeperPaths, now_ns};

/// How the keeper runs.
#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// The keeper directory (socket, lock, records, libcontainer state).
    pub dir: PathBuf,
    /// Exit after holding no container (and serving no request) for this long; `None`: never.
    pub idle_exit: Option<Duration>,
}

/// A container record as persisted in `records/<id>.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Record {
    pub(super) info: ContainerInfo,
    bundle: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
}

pub(super) struct Entry {
    pub(super) record: Record,
    log: Option<LogFile>,
    /// The container's stdin (when it asked for one): written by attaches, dropped on delete
    /// or, with `stdin_once`, when the first attach closes its stdin.
    pub(super) stdin: Option<Rc<FdIo>>,
    /// See [`CreateRequest::stdin_once`].
    pub(super) stdin_once: bool,
    /// The container's terminal master (with [`CreateRequest::tty`]), for resizes.
    pub(super) tty: Option<Rc<FdIo>>,
    /// The container's live output for attaches (`None`: not held, e.g. after a keeper restart).
    pub(super) output: Option<Output>,
    /// `true` once the init has exited.
    pub(super) exited: watch::Sender<bool>,
    /// Not our child (loaded after a keeper restart): polled instead of reaped.
    adopted: bool,
}

/// A container's output as it is read: `(frame kind, data)` to every attach; a
/// [`frame::EXIT`] message once both streams ended.
#[derive(Clone)]
pub(super) struct Output {
    pub(super) tx: broadcast::Sender<(u8, Vec<u8>)>,
    /// Output streams still open.
    pub(super) open: Rc<std::cell::Cell<u8>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) containers: HashMap<String, Entry>,
    /// Ids whose create is in progress.
    creating: std::collections::HashSet<String>,
    pub(super) execs: HashMap<i32, oneshot::Sender<i32>>,
    busy: usize,
    last_activity: Option<Instant>,
}

pub(super) type Shared = Rc<RefCell<State>>;

/// Runs the keeper until it is idle long enough (or SIGTERM while it holds no container).
/// Returns `Ok(false)` when another keeper already owns `dir`.
pub fn run(cfg: KeeperConfig) -> std::io::Result<bool> {
    let paths = KeeperPaths::new(&cfg.dir);
    std::fs::create_dir_all(&paths.records)?;
    std::fs::create_dir_all(&paths.libcontainer_root)?;
    let lock = File::create(&paths.lock)?;
    match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            let result = local.block_on(&rt, serve(cfg, paths));
            drop(lock);
            result.map(|()| true)
        }
        Err((_, Errno::EWOULDBLOCK)) => Ok(false),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

async fn serve(cfg: KeeperConfig, paths: KeeperPaths) -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    // SIGCHLD must be handled before the first child exists
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let state: Shared = Rc::new(RefCell::new(State {
        last_activity: Some(Instant::now()),
        ..State::default()
    }));
    load_records(&paths, &state);

    let _ = std::fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket)?;
    std::fs::set_permissions(
        &paths.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    tracing::info!(dir = %cfg.dir.display(), pid = std::process::id(), "keeper serving");

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let state = state.clone();
                    let paths = paths.clone();
                    state.borrow_mut().busy += 1;
                    tokio::task::spawn_local(async move {
                        if let Err(error) = handle_conn(stream, &state, &paths).await {
                            tracing::debug!(%error, "keeper connection ended with an error");
                        }
                        let mut st = state.borrow_mut();
                        st.busy -= 1;
                        st.last_activity = Some(Instant::now());
                    });
                }
            }
            _ = sigchld.recv() => reap(&state, &paths),
            _ = sigterm.recv() => {
                if state.borrow().containers.is_empty() {
                    break;
                }
                tracing::warn!("SIGTERM ignored: the keeper holds containers");
            }
            _ = tick.tick() => {
                reap(&state, &paths);
                poll_adopted(&state, &paths);
                if let Some(idle) = cfg.idle_exit {
                    let st = state.borrow();
                    let quiet = st.containers.is_empty() && st.execs.is_empty() && st.busy == 0;
                    if quiet && st.last_activity.is_some_and(|t| t.elapsed() >= idle) {
                        break;
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&paths.socket);
    tracing::info!("keeper exiting: idle");
    Ok(())
}

async fn handle_conn(
    stream: UnixStream,
    state: &Shared,
    paths: &KeeperPaths,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd);
    rd.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::ExecStream(req)) => {
            return super::stream::exec(req, state, paths, rd, wr).await;
        }
        Ok(Request::Attach { id, stdin }) => {
            return super::stream::attach(&id, stdin, state, rd, wr).await;
        }
        Ok(req) => dispatch(req, state, paths).await,
        Err(e) => error("invalid_argument", format!("bad keeper request: {e}")),
    };
    respond(&mut wr, &response).await?;
    wr.shutdown().await
}

/// Writes one response line.
pub(super) async fn respond(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await
}

pub(super) fn error(kind: &str, message: impl Into<String>) -> Response {
    Response::Error {
        kind: kind.into(),
        message: message.into(),
    }
}

pub(super) fn not_found(id: &str) -> Response {
    error(
        "not_found",
        format!("container {id} is not known to the keeper"),
    )
}

async fn dispatch(req: Request, state: &Shared, paths: &KeeperPaths) -> Response {
    match req {
        Request::Ping => Response::Pong {
            version: PROTOCOL_VERSION,
            pid: std::process::id() as i32,
        },
        Request::Create(c) => create(c, state, paths).await,
        Request::PodInit { id } => pod_init(&id, state, paths),
        Request::Start { id } => start(&id, state, paths),
        Request::Kill { id, signal, all } => kill_container(&id, signal, all, state),
        Request::State { id } => match state.borrow().containers.get(&id) {
            Some(e) => Response::Container(e.record.info.clone()),
            None => not_found(&id),
        },
        Request::List => Response::Containers {
            containers: state
                .borrow()
                .containers
                .values()
                .map(|e| e.record.info.clone())
                .collect(),
        },
        Request::Wait { id, timeout_ms } => wait(&id, timeout_ms, state).await,
        Request::Exec(e) => exec(e, state, paths).await,
        // answered in `handle_conn`
        Request::ExecStream(_) | Request::Attach { .. } => {
            error("invalid_argument", "streaming request in the wrong place")
        }
        Request::ReopenLog { id } => {
            let st = state.borrow();
            match st.containers.get(&id) {
                None => not_found(&id),
                Some(e) if e.record.info.state != "running" => error(
                    "failed_precondition",
                    format!("container {id} is not running: its log cannot be reopened"),
                ),
                Some(e) => match &e.log {
                    Some(log) => match log.reopen() {
                        Ok(()) => Response::Ok,
                        Err(err) => error("internal", format!("reopen log of {id}: {err}")),
                    },
                    None => Response::Ok,
                },
            }
        }
        Request::Delete { id } => delete(&id, state, paths).await,
    }
}

pub(super) fn container_root(paths: &KeeperPaths, id: &str) -> PathBuf {
    paths.libcontainer_root.join(id)
}

async fn create(req: CreateRequest, state: &Shared, paths: &KeeperPaths) -> Response {
    if let Some(e) = state.borrow().containers.get(&req.id) {
        return Response::Container(e.record.info.clone());
    }
    if req.id.is_empty() || req.id.contains('/') || req.id.starts_with('.') {
        return error("invalid_argument", format!("bad container id {:?}", req.id));
    }
    if !state.borrow_mut().creating.insert(req.id.clone()) {
        return error(
            "failed_precondition",
            format!("container {} is being created by another request", req.id),
        );
    }
    // a leftover of an earlier, interrupted create
    let root = container_root(paths, &req.id);
    if root.exists() {
        remove_libcontainer_state(&root);
    }
    let created = create_container(&req, paths).await;
    state.borrow_mut().creating.remove(&req.id);
    match created {
        Ok(created) => {
            let pid = created.pid;
            let log = created.log;
            let info = ContainerInfo {
                id: req.id.clone(),
                pid,
                state: "created".into(),
                created_at: now_ns(),
                started_at: 0,
                exit: None,
                log_path: req.log_path.clone(),
                usage: None,
            };
            let record = Record {
                info: info.clone(),
                bundle: req.bundle.clone(),
                cgroup_dirs: req.cgroup_dirs.clone(),
            };
            persist(paths, &record);
            let (exited, _) = watch::channel(false);
            let master = created
                .master
                .and_then(|m| fdio_or_warn(&req.id, m))
                .map(Rc::new);
            let streams: Vec<(Rc<FdIo>, Stream)> = match &master {
                Some(m) => vec![(m.clone(), Stream::Stdout)],
                None => [(created.out, Stream::Stdout), (created.err, Stream::Stderr)]
                    .into_iter()
                    .filter_map(|(fd, s)| Some((Rc::new(fdio_or_warn(&req.id, fd?)?), s)))
                    .collect(),
            };
            let output = Output {
                tx: broadcast::channel(256).0,
                open: Rc::new(std::cell::Cell::new(streams.len() as u8)),
            };
            for (fd, stream) in streams {
                spawn_log_pump(fd, stream, log.clone(), Some(output.clone()));
            }
            let stdin = match &master {
                Some(m) => req.stdin.then(|| m.clone()),
                None => created
                    .stdin
                    .and_then(|fd| fdio_or_warn(&req.id, fd))
                    .map(Rc::new),
            };
            state.borrow_mut().containers.insert(
                req.id.clone(),
                Entry {
                    record,
                    log,
                    stdin,
                    stdin_once: req.stdin_once,
                    tty: master,
                    output: Some(output),
                    exited,
                    adopted: false,
                },
            );
            tracing::info!(id = %req.id, pid, "container created");
            Response::Container(info)
        }
        Err(message) => {
            remove_libcontainer_state(&root);
            tracing::warn!(id = %req.id, %message, "container create failed");
            error("internal", message)
        }
    }
}

/// What a create hands back: the init's pid, the log, and the keeper's ends of its stdio (a
/// terminal master instead of pipes with `tty`).
struct Created {
    pid: i32,
    log: Option<LogFile>,
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    master: Option<OwnedFd>,
}

async fn create_container(req: &CreateRequest, paths: &KeeperPaths) -> Result<Created, String> {
    let log = match &req.log_path {
        Some(p) => {
            Some(LogFile::open(p).map_err(|e| format!("open log file {}: {e}", p.display()))?)
        }
        None => None,
    };
    // libcontainer runs in a forked worker (see `worker`); the fds it needs are inherited
    let (id, root, bundle) = (
        req.id.clone(),
        paths.libcontainer_root.clone(),
        req.bundle.clone(),
    );
    let mut created = Created {
        pid: 0,
        log,
        stdin: None,
        out: None,
        err: None,
        master: None,
    };
    let mut console = None;
    let spawned = if req.tty {
        let dir = paths
            .socket
            .parent()
            .ok_or_else(|| "keeper socket has no directory".to_string())?;
        let socket = ConsoleSocket::bind(dir)?;
        let path = socket.path().to_path_buf();
        console = Some(socket);
        super::worker::fork_worker(move || {
            let container = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(&root)
                .map_err(|e| format!("libcontainer root: {e}"))?
                .with_console_socket(Some(&path))
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container {id}: {e}"))?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| format!("container {id} has no init pid after create"))
        })
    } else {
        let (out_rd, out_wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_rd, err_wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let stdin_fd = if req.stdin {
            let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            created.stdin = Some(wr);
            rd
        } else {
            OwnedFd::from(File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?)
        };
        created.out = Some(out_rd);
        created.err = Some(err_rd);
        super::worker::fork_worker(move || {
            let container = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(&root)
                .map_err(|e| format!("libcontainer root: {e}"))?
                .with_stdin(stdin_fd)
                .with_stdout(out_wr)
                .with_stderr(err_wr)
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container {id}: {e}"))?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| format!("container {id} has no init pid after create"))
        })
    };
    let result = async {
        // the keeper's copies of the container's ends are dropped with the closures above
        let (_worker, result_fd) = spawned.map_err(|e| format!("fork create worker: {e}"))?;
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(result_fd)
            .map_err(|e| format!("create worker pipe: {e}"))?;
        // one line, not EOF: the container's init inherited the write end and holds it until
        // exec
        let mut line = String::new();
        BufReader::new(rx)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read create worker result: {e}"))?;
        let pid = super::worker::parse_result(&line)?;
        if let Some(socket) = &console {
            let master = socket.receive().await.inspect_err(|_| {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            })?;
            created.master = Some(master);
        }
        Ok::<i32, String>(pid)
    }
    .await;
    drop(console);
    created.pid = result?;
    set_oom_score_adj(created.pid, req.oom_score_adj);
    Ok(created)
}

/// Writes `value` (never below the keeper's own score) to the init's `oom_score_adj`.
fn set_oom_score_adj(pid: i32, value: i64) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let value = value.clamp(own, 1000);
    if value == own {
        return;
    }
    if let Err(error) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string()) {
        tracing::warn!(pid, value, %error, "cannot set oom_score_adj");
    }
}

fn fdio_or_warn(id: &str, fd: OwnedFd) -> Option<FdIo> {
    FdIo::new(fd)
        .inspect_err(|error| tracing::warn!(%id, %error, "container stdio unusable"))
        .ok()
}

fn spawn_log_pump(fd: Rc<FdIo>, stream: Stream, log: Option<LogFile>, output: Option<Output>) {
    let kind = match stream {
        Stream::Stdout => frame::STDOUT,
        Stream::Stderr => frame::STDERR,
    };
    tokio::task::spawn_local(async move {
        let mut splitter = LineSplitter::new(stream);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match fd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(log) = &log {
                        splitter.feed(&buf[..n], log);
                    }
                    if let Some(out) = &output
                        && out.tx.receiver_count() > 0
                    {
                        let _ = out.tx.send((kind, buf[..n].to_vec()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "container output read failed");
                    break;
                }
            }
        }
        if let Some(log) = &log {
            splitter.finish(log);
        }
        if let Some(out) = &output {
            out.open.set(out.open.get().saturating_sub(1));
            if out.open.get() == 0 {
                let _ = out.tx.send((frame::EXIT, Vec::new()));
            }
        }
    });
}

fn pod_init(id: &str, state: &Shared, paths: &KeeperPaths) -> Response {
    if let Some(e) = state.borrow().containers.get(id) {
        return Response::Container(e.record.info.clone());
    }
    match super::podinit::spawn() {
        Ok(pid) => {
            let now = now_ns();
            let info = ContainerInfo {
                id: id.to_string(),
                pid,
                state: "running".into(),
                created_at: now,
                started_at: now,
                exit: None,
                log_path: None,
                usage: None,
            };
            let record = Record {
                info: info.clone(),
                ..Record::default()
            };
            persist(paths, &record);
            let (exited, _) = watch::channel(false);
            state.borrow_mut().containers.insert(
                id.to_string(),
                Entry {
                    record,
                    log: None,
                    stdin: None,
                    stdin_once: false,
                    tty: None,
                    output: None,
                    exited,
                    adopted: false,
                },
            );
            tracing::info!(id, pid, "pod init started");
            Response::Container(info)
        }
        Err(e) => error("internal", format!("start pod init {id}: {e}")),
    }
}

fn start(id: &str, state: &Shared, paths: &KeeperPaths) -> Response {
    let current = match state.borrow().containers.get(id) {
        Some(e) => e.record.info.clone(),
        None => return not_found(id),
    };
    match current.state.as_str() {
        "created" => {}
        "running" => return Response::Container(current),
        other => {
            return error(
                "failed_precondition",
                format!("container {id} is {other}: only a created container can start"),
            );
        }
    }
    let result = Container::load(container_root(paths, id)).and_then(|mut c| c.start());
    let mut st = state.borrow_mut();
    let Some(entry) = st.containers.get_mut(id) else {
        return not_found(id);
    };
    match result {
        Ok(()) => {
            // the init may already have exited and been reaped
            if entry.record.info.state == "created" {
                entry.record.info.state = "running".into();
            }
            entry.record.info.started_at = now_ns();
            persist(paths, &entry.record);
            tracing::info!(id, pid = entry.record.info.pid, "container started");
            Response::Container(entry.record.info.clone())
        }
        Err(e) => error("internal", format!("start container {id}: {e}")),
    }
}

fn kill_container(id: &str, signal: i32, all: bool, state: &Shared) -> Response {
    let st = state.borrow();
    let Some(entry) = st.containers.get(id) else {
        return not_found(id);
    };
    if entry.record.info.exit.is_some() {
        return Response::Ok;
    }
    let sig = match Signal::try_from(signal) {
        Ok(s) => s,
        Err(_) => return error("invalid_argument", format!("bad signal {signal}")),
    };
    let mut pids = vec![entry.record.info.pid];
    if all {
        for dir in &entry.record.cgroup_dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
    }
    for pid in pids.into_iter().filter(|p| *p > 0) {
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return error("internal", format!("kill {pid} of {id}: {e}")),
        }
    }
    Response::Ok
}

async fn wait(id: &str, timeout_ms: u64, state: &Shared) -> Response {
    let mut rx = match state.borrow().containers.get(id) {
        Some(e) if e.record.info.exit.is_some() => {
            return Response::Container(e.record.info.clone());
        }
        Some(e) => e.exited.subscribe(),
        None => return not_found(id),
    };
    let waiting = rx.wait_for(|exited| *exited);
    if timeout_ms == 0 {
        let _ = waiting.await;
    } else {
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), waiting).await;
    }
    match state.borrow().containers.get(id) {
        Some(e) => Response::Container(e.record.info.clone()),
        None => not_found(id),
    }
}

/// Reaps every exited child: container inits get their exit recorded, exec processes are handed
/// to their waiter, anything else (reparented orphans) is just reaped.
pub(super) fn reap(state: &Shared, paths: &KeeperPaths) {
    loop {
        let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(s) => s,
            Err(Errno::EINTR) => continue,
            Err(error) => {
                tracing::warn!(%error, "waitpid failed");
                return;
            }
        };
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid.as_raw(), code, None),
            WaitStatus::Signaled(pid, sig, _) => (pid.as_raw(), 128 + sig as i32, Some(sig as i32)),
            _ => continue,
        };
        record_exit(state, paths, pid, code, signal);
    }
}

fn record_exit(state: &Shared, paths: &KeeperPaths, pid: i32, code: i32, signal: Option<i32>) {
    let mut st = state.borrow_mut();
    if let Some(tx) = st.execs.remove(&pid) {
        let _ = tx.send(code);
        return;
    }
    let Some(entry) = st
        .containers
        .values_mut()
        .find(|e| e.record.info.pid == pid && e.record.info.exit.is_none())
    else {
        return;
    };
    let oom_killed = oom_kills(&entry.record.cgroup_dirs) > 0;
    let exit = ExitStatus {
        code,
        signal,
        oom_killed,
        finished_at: now_ns(),
        message: String::new(),
    };
    tracing::info!(id = %entry.record.info.id, pid, code, oom_killed, "container exited");
    entry.record.info.exit = Some(exit);
    entry.record.info.state = "exited".into();
    persist(paths, &entry.record);
    // `send` would drop the value when nobody waits yet; a later `wait` must still see it
    entry.exited.send_replace(true);
}

/// Containers loaded after a keeper restart are not our children: notice their end by polling.
fn poll_adopted(state: &Shared, paths: &KeeperPaths) {
    let gone: Vec<i32> = state
        .borrow()
        .containers
        .values()
        .filter(|e| e.adopted && e.record.info.exit.is_none() && e.record.info.pid > 0)
        .filter(|e| !Path::new(&format!("/proc/{}", e.record.info.pid)).exists())
        .map(|e| e.record.info.pid)
        .collect();
    for pid in gone {
        // the real code went to init; 255 with the state "unknown" says so
        record_exit(state, paths, pid, 255, None);
        if let Some(e) = state
            .borrow_mut()
            .containers
            .values_mut()
            .find(|e| e.record.info.pid == pid)
        {
            e.record.info.state = "unknown".into();
            persist(paths, &e.record);
        }
    }
}

/// OOM kills recorded by the container's memory cgroup (v1 `memory.oom_control`, v2
/// `memory.events`).
fn oom_kills(dirs: &[PathBuf]) -> u64 {
    let mut total = 0;
    for dir in dirs {
        for file in ["memory.oom_control", "memory.events"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("oom_kill ") {
                        total += n.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    total
}

async fn exec(req: ExecRequest, state: &Shared, paths: &KeeperPaths) -> Response {
    match state.borrow().containers.get(&req.id) {
        None => return not_found(&req.id),
        Some(e) if e.record.info.state != "running" => {
            return error(
                "failed_precondition",
                format!("container {} is not running", req.id),
            );
        }
        Some(_) => {}
    }
    if req.argv.is_empty() {
        return error("invalid_argument", "exec needs a command");
    }
    let spawned = spawn_exec(&req, paths);
    let (pid, out_rd, err_rd) = match spawned {
        Ok(x) => x,
        Err(message) => return error("internal", message),
    };
    let (tx, rx) = oneshot::channel();
    state.borrow_mut().execs.insert(pid, tx);
    // it may have exited before it was registered
    reap(state, paths);
    let out = tokio::task::spawn_local(capture(out_rd));
    let err = tokio::task::spawn_local(capture(err_rd));

    let mut timed_out = false;
    let code = if req.timeout_ms > 0 {
        let mut rx = rx;
        match tokio::time::timeout(Duration::from_millis(req.timeout_ms), &mut rx).await {
            Ok(code) => code.unwrap_or(255),
            Err(_) => {
                timed_out = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                rx.await.unwrap_or(137)
            }
        }
    } else {
        rx.await.unwrap_or(255)
    };
    // output still held open by a background process is not waited for long
    let grace = Duration::from_secs(1);
    let stdout = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let stderr = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Response::Exec(ExecResult {
        stdout,
        stderr,
        exit_code: code,
        timed_out,
    })
}

fn spawn_exec(req: &ExecRequest, paths: &KeeperPaths) -> Result<(i32, OwnedFd, OwnedFd), String> {
    let spawned = spawn_process(
        &req.id,
        &req.argv,
        &ExecStdio::Pipes { stdin: false },
        paths,
    )?;
    match (spawned.stdout, spawned.stderr) {
        (Some(out), Some(err)) => Ok((spawned.pid, out, err)),
        _ => Err("exec started without output pipes".into()),
    }
}

/// How an exec'd process gets its stdio.
pub(super) enum ExecStdio {
    /// Pipes for stdout and stderr; a pipe for stdin too, else `/dev/null`.
    Pipes {
        /// Give it a stdin pipe.
        stdin: bool,
    },
    /// A terminal made in the container; its master is sent to the listening socket `console`.
    Tty {
        /// Console socket path.
        console: PathBuf,
    },
}

/// The keeper's ends of a spawned process's stdio (none with a terminal: see the console).
pub(super) struct ExecSpawned {
    pub(super) pid: i32,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

/// Starts `argv` in the running container `id`, as its own process runs: same user, env, cwd,
/// capabilities and seccomp filter.
pub(super) fn spawn_process(
    id: &str,
    argv: &[String],
    stdio: &ExecStdio,
    paths: &KeeperPaths,
) -> Result<ExecSpawned, String> {
    let root = container_root(paths, id);
    let container =
        Container::load(root.clone()).map_err(|e| format!("load container {id}: {e}"))?;
    let config_path = container.bundle().join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config_path)
        .map_err(|e| format!("read {}: {e}", config_path.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("container {id} has no process in its spec"))?;
    process.set_args(Some(argv.to_vec()));
    process.set_terminal(Some(matches!(stdio, ExecStdio::Tty { .. })));
    if let ExecStdio::Tty { .. } = stdio {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        process.set_env(Some(env));
    }
    let process_file = root.join(format!("exec-{}.json", now_ns()));
    let text = serde_json::to_vec(&process).map_err(|e| format!("encode exec process: {e}"))?;
    std::fs::write(&process_file, text)
        .map_err(|e| format!("write {}: {e}", process_file.display()))?;

    let executor = SeccompExecutor {
        seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
    };
    let mut ours = ExecSpawned {
        pid: 0,
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(&paths.libcontainer_root)
        .map_err(|e| format!("libcontainer root: {e}"))?
        .with_executor(executor);
    let builder = match stdio {
        ExecStdio::Pipes { stdin } => {
            let (out_rd, out_wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            let (err_rd, err_wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            let stdin_fd = if *stdin {
                let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
                ours.stdin = Some(wr);
                rd
            } else {
                OwnedFd::from(File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?)
            };
            ours.stdout = Some(out_rd);
            ours.stderr = Some(err_rd);
            builder
                .with_stdin(stdin_fd)
                .with_stdout(out_wr)
                .with_stderr(err_wr)
        }
        ExecStdio::Tty { console } => builder.with_console_socket(Some(console)),
    };
    let result = builder
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&process_file);
    ours.pid = result
        .map_err(|e| format!("exec in container {id}: {e}"))?
        .as_raw();
    Ok(ours)
}

/// Runs an exec'd command under the container's seccomp filter. libcontainer 0.7 drops the
/// filter from the spec of a process joining a running container (runc applies it), so the
/// executor loads it right before `execve`. Capabilities are already dropped by then, so the
/// filter is loaded with `no_new_privs` set (it is a privileged operation otherwise).
#[derive(Clone)]
struct SeccompExecutor {
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl libcontainer::workload::Executor for SeccompExecutor {
    fn exec(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            nix::sys::prctl::set_no_new_privs().map_err(|e| {
                libcontainer::workload::ExecutorError::Other(format!("set no_new_privs: {e}"))
            })?;
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| {
                libcontainer::workload::ExecutorError::Other(format!("load seccomp filter: {e}"))
            })?;
        }
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

async fn capture(fd: OwnedFd) -> Vec<u8> {
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return Vec::new();
    };
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(data.len());
                data.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    data
}

async fn delete(id: &str, state: &Shared, paths: &KeeperPaths) -> Response {
    let running = match state.borrow().containers.get(id) {
        None => {
            // not ours (or already deleted): clean up leftovers idempotently
            remove_libcontainer_state(&container_root(paths, id));
            let _ = std::fs::remove_file(paths.records.join(format!("{id}.json")));
            return Response::Ok;
        }
        Some(e) => e.record.info.exit.is_none(),
    };
    if running {
        let _ = kill_container(id, Signal::SIGKILL as i32, true, state);
        if let Response::Container(info) = wait(id, 10_000, state).await
            && info.exit.is_none()
        {
            return error(
                "internal",
                format!("container {id} did not die after SIGKILL within 10s"),
            );
        }
    }
    remove_libcontainer_state(&container_root(paths, id));
    // libcontainer 0.7 leaves the directories of hierarchies it does not manage (blkio, ...)
    let dirs = state
        .borrow()
        .containers
        .get(id)
        .map(|e| e.record.cgroup_dirs.clone())
        .unwrap_or_default();
    for dir in dirs {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(id, dir = %dir.display(), %error, "cannot remove container cgroup")
            }
        }
    }
    let _ = std::fs::remove_file(paths.records.join(format!("{id}.json")));
    state.borrow_mut().containers.remove(id);
    tracing::info!(id, "container deleted");
    Response::Ok
}

/// libcontainer's delete (kills leftovers, removes its cgroups and state dir); falls back to
/// removing the state dir.
fn remove_libcontainer_state(root: &Path) {
    if !root.exists() {
        return;
    }
    match Container::load(root.to_path_buf()) {
        Ok(mut c) => {
            if let Err(error) = c.delete(true) {
                tracing::warn!(root = %root.display(), %error, "libcontainer delete failed");
            }
        }
        Err(error) => tracing::debug!(root = %root.display(), %error, "no libcontainer state"),
    }
    if root.exists() {
        let _ = std::fs::remove_dir_all(root);
    }
}

fn persist(paths: &KeeperPaths, record: &Record) {
    let path = paths.records.join(format!("{}.json", record.info.id));
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|data| std::fs::write(&tmp, data))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = result {
        tracing::error!(path = %path.display(), %error, "cannot persist container record");
    }
}

fn load_records(paths: &KeeperPaths, state: &Shared) {
    let Ok(rd) = std::fs::read_dir(&paths.records) else {
        return;
    };
    for ent in rd.flatten() {
        let path = ent.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Record>(&data) else {
            tracing::warn!(path = %path.display(), "unreadable container record");
            continue;
        };
        let (exited, _) = watch::channel(record.info.exit.is_some());
        tracing::info!(id = %record.info.id, state = %record.info.state, "container record loaded");
        state.borrow_mut().containers.insert(
            record.info.id.clone(),
            Entry {
                record,
                log: None,
                stdin: None,
                stdin_once: false,
                tty: None,
                output: None,
                exited,
                adopted: true,
            },
        );
    }
}
