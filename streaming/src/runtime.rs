//! What the streaming server needs from the runtime behind it: running a command with live stdio,
//! joining a container's stdio, and dialing a port in a pod's network. Written once here; each
//! backend (linux now, `vm` and `wasm` later) implements [`StreamRuntime`].

use bytes::Bytes;
use tokio::sync::mpsc;

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The live stdio of one session. A `None` stream was not requested. `stdin` yields `None` when
/// the client closed its stdin; the runtime drops `stdout`/`stderr` when the output ended.
#[derive(Debug, Default)]
pub struct Io {
    /// Client input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Output to the client.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Error output to the client (never with a TTY: it is merged into stdout).
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal resizes (TTY only).
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// How a session failed, as the client is told on the error stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The container, pod or port is not there (any more).
    #[error("{0}")]
    NotFound(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// The backend side of streaming.
#[async_trait::async_trait]
pub trait StreamRuntime: Send + Sync + 'static {
    /// Runs `cmd` in the container with `io` until it exits; its exit code (`128 + signal` when
    /// killed). Dropping the future (client gone) must end the process.
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: Io,
    ) -> Result<i32, StreamError>;

    /// Joins the container's stdio until it exits or the client goes.
    async fn attach(&self, container_id: &str, tty: bool, io: Io) -> Result<(), StreamError>;

    /// A connection to `port` on the pod's loopback, inside the pod's network namespace.
    async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError>;
}
