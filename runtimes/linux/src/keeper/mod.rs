//! The node keeper: the one process per node that is the parent of every `linux` container, so
//! containers outlive daemon restarts (ADR 0005).
//!
//! * [`server`]: the keeper process itself (`unicri keeper`).
//! * [`proto`]: its request/response protocol.
//! * [`logs`]: the CRI log file writer.
//! * [`podinit`]: the minimal PID 1 of a pod with a shared PID namespace.
//! * [`worker`]: forked workers that run libcontainer creates in parallel.
//! * [`KeeperClient`]: the daemon's side; it starts a keeper when none answers.

mod fdio;
pub mod logs;
pub mod podinit;
pub mod proto;
pub mod server;
mod stream;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::LinuxError;
use proto::{ContainerInfo, CreateRequest, ExecRequest, ExecResult, Request, Response};

/// The files of a keeper directory.
#[derive(Clone, Debug)]
pub struct KeeperPaths {
    /// `keeper.sock`.
    pub socket: PathBuf,
    /// `keeper.lock` (flock: one keeper per directory).
    pub lock: PathBuf,
    /// `records/`: one JSON record per container (exit codes survive everything but a reboot).
    pub records: PathBuf,
    /// `libcontainer/`: libcontainer's state root.
    pub libcontainer_root: PathBuf,
    /// `keeper.log`: the keeper's own log.
    pub log: PathBuf,
}

impl KeeperPaths {
    /// The paths under `dir`.
    pub fn new(dir: &Path) -> KeeperPaths {
        KeeperPaths {
            socket: dir.join("keeper.sock"),
            lock: dir.join("keeper.lock"),
            records: dir.join("records"),
            libcontainer_root: dir.join("libcontainer"),
            log: dir.join("keeper.log"),
        }
    }
}

/// Now as Unix nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A byte stream to a keeper (a unix socket, or a relay to a keeper elsewhere, e.g. in a
/// `vm` pod's guest).
pub trait KeeperStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> KeeperStream for T {}

/// A boxed [`KeeperStream`].
pub type BoxedStream = Box<dyn KeeperStream>;

/// Opens a connection to a keeper that the client does not start itself (see
/// [`KeeperClient::remote`]). An error of kind `NotFound` means the keeper is gone for good
/// (its VM was stopped): the client then answers like for a keeper that does not run.
pub type Connector = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<BoxedStream>> + Send>,
        > + Send
        + Sync,
>;

/// How long one keeper request may take (exec and wait carry their own limits on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The daemon's connection to the keeper of one directory.
#[derive(Clone, Debug)]
pub struct KeeperClient {
    dir: PathBuf,
    paths: KeeperPaths,
    /// `unicri` binary to start `unicri keeper` from.
    exe: PathBuf,
    /// Passed on as `--idle-exit-ms`.
    idle_exit_ms: u64,
    /// The `unicri` subcommand that runs this keeper (`keeper`, `wasm-keeper`).
    command: &'static str,
    /// Held while a keeper is being started, so a burst of requests starts one keeper.
    starting: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Set for a keeper reached through a relay (never started by this client).
    connector: Option<ConnectorDebug>,
}

/// A [`Connector`] with a name for `Debug`.
#[derive(Clone)]
struct ConnectorDebug {
    name: String,
    connect: Connector,
}

impl std::fmt::Debug for ConnectorDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({})", self.name)
    }
}

impl KeeperClient {
    /// A client for the keeper in `dir`, starting `exe keeper --dir <dir>` when none answers.
    pub fn new(dir: impl Into<PathBuf>, exe: impl Into<PathBuf>, idle_exit_ms: u64) -> Self {
        let dir = dir.into();
        KeeperClient {
            paths: KeeperPaths::new(&dir),
            dir,
            exe: exe.into(),
            idle_exit_ms,
            command: "keeper",
            starting: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            connector: None,
        }
    }

    /// A client for a keeper this side does not start, reached through `connect` (e.g. the
    /// keeper inside a `vm` pod's guest, through its agent). `name` shows in errors and logs.
    pub fn remote(name: impl Into<String>, connect: Connector) -> Self {
        let name = name.into();
        KeeperClient {
            paths: KeeperPaths::new(Path::new("/nonexistent")),
            dir: PathBuf::from(&name),
            exe: PathBuf::new(),
            idle_exit_ms: 0,
            command: "keeper",
            starting: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            connector: Some(ConnectorDebug { name, connect }),
        }
    }

    /// Connects to the keeper: its unix socket, or the remote connector.
    async fn connect(&self) -> Result<BoxedStream, CallError> {
        match &self.connector {
            Some(c) => (c.connect)().await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    CallError::Gone(format!("{}: {e}", c.name))
                } else {
                    CallError::NotListening(format!("connect to {}: {e}", c.name))
                }
            }),
            None => UnixStream::connect(&self.paths.socket)
                .await
                .map(|s| Box::new(s) as BoxedStream)
                .map_err(|e| {
                    CallError::NotListening(format!("connect {}: {e}", self.paths.socket.display()))
                }),
        }
    }

    /// The same client for a keeper started as `exe <command>` (another backend's node keeper
    /// speaking this protocol, e.g. `wasm-keeper`).
    pub fn with_command(mut self, command: &'static str) -> Self {
        self.command = command;
        self
    }

    /// The keeper directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends one request, starting a keeper if none listens (every request is idempotent, so a
    /// request lost to a keeper that was just exiting is sent again).
    pub async fn call(&self, req: &Request, extra: Duration) -> Result<Response, LinuxError> {
        let mut started = false;
        let mut last_error = String::new();
        for _ in 0..3 {
            match self.try_call(req, extra).await {
                Ok(resp) => return Ok(resp),
                Err(CallError::Gone(e)) => {
                    // the keeper's home (a VM) is gone: it holds nothing any more
                    return match absent_answer(req) {
                        Response::Error { .. } if !is_read_or_cleanup(req) => {
                            Err(LinuxError::KeeperRefused {
                                op: op_name(req),
                                kind: "failed_precondition".into(),
                                message: e,
                            })
                        }
                        answer => Ok(answer),
                    };
                }
                Err(CallError::NotListening(e)) if self.connector.is_some() => {
                    // a remote keeper is not started from here: try again shortly
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(CallError::NotListening(e)) => {
                    last_error = e;
                    // a keeper with nothing to do exits; there is none at 0 containers
                    if is_read_or_cleanup(req) && !started && !self.paths.socket.exists() {
                        return Ok(absent_answer(req));
                    }
                    self.spawn_keeper().await?;
                    started = true;
                }
                Err(CallError::Broken(e)) => last_error = e,
                Err(CallError::Timeout) => {
                    return Err(LinuxError::Keeper {
                        op: op_name(req),
                        message: "timed out waiting for the keeper".into(),
                    });
                }
            }
        }
        Err(LinuxError::Keeper {
            op: op_name(req),
            message: last_error,
        })
    }

    async fn try_call(&self, req: &Request, extra: Duration) -> Result<Response, CallError> {
        let mut stream = self.connect().await?;
        let work = async {
            let mut line = serde_json::to_vec(req).map_err(|e| CallError::Broken(e.to_string()))?;
            line.push(b'\n');
            stream
                .write_all(&line)
                .await
                .map_err(|e| CallError::Broken(format!("send to keeper: {e}")))?;
            let mut reader = BufReader::new(stream);
            let mut answer = String::new();
            reader
                .read_line(&mut answer)
                .await
                .map_err(|e| CallError::Broken(format!("read from keeper: {e}")))?;
            if answer.is_empty() {
                return Err(CallError::Broken("keeper closed the connection".into()));
            }
            serde_json::from_str::<Response>(&answer)
                .map_err(|e| CallError::Broken(format!("bad keeper answer: {e}")))
        };
        tokio::time::timeout(REQUEST_TIMEOUT + extra, work)
            .await
            .map_err(|_| CallError::Timeout)?
    }

    /// Starts `unicri keeper` in its own process group (so signals to the daemon's group do not
    /// reach it) and waits until it answers.
    async fn spawn_keeper(&self) -> Result<(), LinuxError> {
        let _starting = self.starting.lock().await;
        // another request may have started one while this one waited
        if let Ok(Response::Pong { .. }) = self.try_call(&Request::Ping, Duration::ZERO).await {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| LinuxError::Keeper {
            op: "start",
            message: format!("create {}: {e}", self.dir.display()),
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .map_err(|e| LinuxError::Keeper {
                op: "start",
                message: format!("open {}: {e}", self.paths.log.display()),
            })?;
        let log2 = log.try_clone().map_err(|e| LinuxError::Keeper {
            op: "start",
            message: format!("dup log fd: {e}"),
        })?;
        let mut child = tokio::process::Command::new(&self.exe)
            .arg(self.command)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--idle-exit-ms")
            .arg(self.idle_exit_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| LinuxError::Keeper {
                op: "start",
                message: format!("spawn {} {}: {e}", self.exe.display(), self.command),
            })?;
        tracing::info!(pid = child.id(), dir = %self.dir.display(), "keeper started");
        // reap it when it exits (idle); it outlives us otherwise
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Response::Pong { .. }) = self.try_call(&Request::Ping, Duration::ZERO).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(LinuxError::Keeper {
            op: "start",
            message: format!(
                "the keeper did not answer within 10s (see {})",
                self.paths.log.display()
            ),
        })
    }

    /// Create (idempotent).
    pub async fn create(&self, req: CreateRequest) -> Result<ContainerInfo, LinuxError> {
        let op = Request::Create(req);
        expect_container(&op, self.call(&op, Duration::ZERO).await?)
    }

    /// Starts (or finds) the init of a pod with a shared PID namespace.
    pub async fn pod_init(&self, id: &str) -> Result<ContainerInfo, LinuxError> {
        let op = Request::PodInit { id: id.into() };
        expect_container(&op, self.call(&op, Duration::ZERO).await?)
    }

    /// Start.
    pub async fn start(&self, id: &str) -> Result<ContainerInfo, LinuxError> {
        let op = Request::Start { id: id.into() };
        expect_container(&op, self.call(&op, Duration::ZERO).await?)
    }

    /// Signal.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), LinuxError> {
        let op = Request::Kill {
            id: id.into(),
            signal,
            all,
        };
        expect_ok(&op, self.call(&op, Duration::ZERO).await?)
    }

    /// One container's info; `None` when the keeper does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerInfo>, LinuxError> {
        let op = Request::State { id: id.into() };
        match self.call(&op, Duration::ZERO).await? {
            Response::Container(c) => Ok(Some(c)),
            Response::Error { kind, .. } if kind == "not_found" => Ok(None),
            other => Err(unexpected(&op, other)),
        }
    }

    /// Every container.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>, LinuxError> {
        let op = Request::List;
        match self.call(&op, Duration::ZERO).await? {
            Response::Containers { containers } => Ok(containers),
            other => Err(unexpected(&op, other)),
        }
    }

    /// Waits up to `timeout` (zero: forever) for the container to exit; its info then.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ContainerInfo>, LinuxError> {
        let op = Request::Wait {
            id: id.into(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let extra = if timeout.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            timeout
        };
        match self.call(&op, extra).await? {
            Response::Container(c) => Ok(Some(c)),
            Response::Error { kind, .. } if kind == "not_found" => Ok(None),
            other => Err(unexpected(&op, other)),
        }
    }

    /// ExecSync.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult, LinuxError> {
        let extra = if req.timeout_ms == 0 {
            Duration::from_secs(86_400 * 365)
        } else {
            Duration::from_millis(req.timeout_ms)
        };
        let op = Request::Exec(req);
        match self.call(&op, extra).await? {
            Response::Exec(r) => Ok(r),
            other => Err(unexpected(&op, other)),
        }
    }

    /// Opens a streaming session ([`Request::ExecStream`] or [`Request::Attach`]): the keeper's
    /// answer is read, then the connection carries [`proto::frame`]s. A keeper that does not run
    /// holds no container, so that is `not_found`.
    pub async fn stream(&self, req: &Request) -> Result<KeeperSession, LinuxError> {
        let refused = |kind: &str, message: String| LinuxError::KeeperRefused {
            op: op_name(req),
            kind: kind.into(),
            message,
        };
        let stream = self.connect().await.map_err(|e| {
            let e = match e {
                CallError::Gone(e) | CallError::NotListening(e) | CallError::Broken(e) => e,
                CallError::Timeout => "timed out".into(),
            };
            refused(
                "not_found",
                format!("no keeper runs, so no container does ({e})"),
            )
        })?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut line = serde_json::to_vec(req).map_err(|e| LinuxError::Keeper {
            op: op_name(req),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let broken = |message: String| LinuxError::Keeper {
            op: op_name(req),
            message,
        };
        wr.write_all(&line)
            .await
            .map_err(|e| broken(format!("send to keeper: {e}")))?;
        let mut reader = BufReader::new(rd);
        let mut answer = String::new();
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut answer))
            .await
            .map_err(|_| broken("timed out waiting for the keeper".into()))?
            .map_err(|e| broken(format!("read from keeper: {e}")))?;
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Ok) => Ok(KeeperSession { reader, writer: wr }),
            Ok(other) => Err(unexpected(req, other)),
            Err(e) => Err(broken(format!("bad keeper answer {answer:?}: {e}"))),
        }
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<(), LinuxError> {
        let op = Request::ReopenLog { id: id.into() };
        expect_ok(&op, self.call(&op, Duration::ZERO).await?)
    }

    /// Delete (idempotent).
    pub async fn delete(&self, id: &str) -> Result<(), LinuxError> {
        let op = Request::Delete { id: id.into() };
        expect_ok(&op, self.call(&op, Duration::from_secs(15)).await?)
    }
}

/// An open streaming session with the keeper (see [`KeeperClient::stream`]).
pub struct KeeperSession {
    /// Frames from the keeper.
    pub reader: BufReader<tokio::io::ReadHalf<BoxedStream>>,
    /// Frames to the keeper.
    pub writer: tokio::io::WriteHalf<BoxedStream>,
}

impl std::fmt::Debug for KeeperSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeeperSession")
    }
}

enum CallError {
    /// The remote keeper's home is gone for good.
    Gone(String),
    NotListening(String),
    Broken(String),
    Timeout,
}

/// Requests a keeper that does not run can answer without running: it holds nothing.
fn is_read_or_cleanup(req: &Request) -> bool {
    matches!(
        req,
        Request::List
            | Request::State { .. }
            | Request::Delete { .. }
            | Request::Kill { .. }
            | Request::Wait { .. }
            | Request::ReopenLog { .. }
    )
}

/// What a keeper that does not run would answer: it holds nothing.
fn absent_answer(req: &Request) -> Response {
    match req {
        Request::List => Response::Containers {
            containers: Vec::new(),
        },
        Request::Delete { .. } => Response::Ok,
        Request::State { id }
        | Request::Kill { id, .. }
        | Request::Wait { id, .. }
        | Request::ReopenLog { id } => Response::Error {
            kind: "not_found".into(),
            message: format!("container {id} is not known to the keeper (none runs)"),
        },
        _ => Response::Error {
            kind: "internal".into(),
            message: "no keeper".into(),
        },
    }
}

fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Create(_) => "create",
        Request::PodInit { .. } => "pod_init",
        Request::Start { .. } => "start",
        Request::Kill { .. } => "kill",
        Request::State { .. } => "state",
        Request::List => "list",
        Request::Wait { .. } => "wait",
        Request::Exec(_) => "exec",
        Request::ExecStream(_) => "exec_stream",
        Request::Attach { .. } => "attach",
        Request::ReopenLog { .. } => "reopen_log",
        Request::Delete { .. } => "delete",
    }
}

fn unexpected(req: &Request, resp: Response) -> LinuxError {
    match resp {
        Response::Error { kind, message } => LinuxError::KeeperRefused {
            op: op_name(req),
            kind,
            message,
        },
        other => LinuxError::Keeper {
            op: op_name(req),
            message: format!("unexpected answer {other:?}"),
        },
    }
}

fn expect_ok(req: &Request, resp: Response) -> Result<(), LinuxError> {
    match resp {
        Response::Ok => Ok(()),
        other => Err(unexpected(req, other)),
    }
}

fn expect_container(req: &Request, resp: Response) -> Result<ContainerInfo, LinuxError> {
    match resp {
        Response::Container(c) => Ok(c),
        other => Err(unexpected(req, other)),
    }
}
