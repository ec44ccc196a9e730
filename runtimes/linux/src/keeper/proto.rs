//! The keeper protocol: one JSON request line, one JSON response line, per connection, over
//! `<state>/keeper/keeper.sock`. Every request is idempotent (ids are chosen by the daemon),
//! except the two streaming sessions (`exec_stream`, `attach`): after their `Ok` line the
//! connection carries [`frame`]s both ways until the keeper's exit frame (ADR 0006).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use unicri_sandbox::container::ExitStatus;

/// Bumped when a request or response changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request to the keeper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version.
    Ping,
    /// Create the container from `bundle/config.json` (libcontainer "create": the init waits for
    /// `Start`). Creating an id the keeper already has answers with its current info.
    Create(CreateRequest),
    /// Start the minimal init of a pod with a shared PID namespace (see `podinit`); it is held
    /// like a running container under `id` and ended by [`Request::Delete`]. Idempotent.
    PodInit {
        /// Record id (`pod-<pod id>`).
        id: String,
    },
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Send `signal` to the container's init (`all`: to every process of its cgroup).
    Kill {
        /// Container id.
        id: String,
        /// Signal number.
        signal: i32,
        /// Signal every process in the container's cgroup.
        all: bool,
    },
    /// The container's info.
    State {
        /// Container id.
        id: String,
    },
    /// Every container the keeper holds.
    List,
    /// Wait until the container is not running (or `timeout_ms` passes), then its info.
    Wait {
        /// Container id.
        id: String,
        /// 0: wait forever.
        timeout_ms: u64,
    },
    /// Run a command in the container and collect its output (CRI ExecSync).
    Exec(ExecRequest),
    /// Run a command with live stdio (CRI Exec). After the `Ok` line the connection carries
    /// [`frame`]s both ways; closing it kills the command.
    ExecStream(ExecStreamRequest),
    /// Join the container's live stdio (CRI Attach). After the `Ok` line the connection carries
    /// [`frame`]s; it ends (with an exit frame) when the container's output ends.
    Attach {
        /// Container id.
        id: String,
        /// Forward stdin frames to the container's stdin.
        stdin: bool,
    },
    /// Close and reopen the container's log file (after kubelet rotated it).
    ReopenLog {
        /// Container id.
        id: String,
    },
    /// Kill what is left, remove the container's libcontainer state and the keeper's record.
    /// Deleting an unknown id succeeds.
    Delete {
        /// Container id.
        id: String,
    },
}

/// [`Request::Create`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateRequest {
    /// Container id (libcontainer's too).
    pub id: String,
    /// Directory holding `config.json`.
    pub bundle: PathBuf,
    /// CRI log file; `None`: output is discarded.
    pub log_path: Option<PathBuf>,
    /// Written to `/proc/<init>/oom_score_adj` between create and start (never lowered below
    /// the keeper's own value, like containerd's `restrict_oom_score_adj`).
    pub oom_score_adj: i64,
    /// Directories of the container's cgroup (one per hierarchy), read for OOM kills.
    pub cgroup_dirs: Vec<PathBuf>,
    /// Keep a stdin pipe (for attach); otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Close the container's stdin when the first attach that wrote to it closes its stdin.
    pub stdin_once: bool,
    /// The container runs on a terminal (its spec says `terminal: true`): libcontainer makes it
    /// in the container's devpts and sends the master to the keeper's console socket; the
    /// keeper reads the output from it (one stream, logged as stdout) and attaches to it.
    pub tty: bool,
}

/// [`Request::ExecStream`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecStreamRequest {
    /// Container id.
    pub id: String,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Run on a terminal (its master is held by the keeper; stdout carries both streams).
    pub tty: bool,
    /// Give the command a stdin (else `/dev/null`).
    pub stdin: bool,
}

/// [`Request::Exec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// Container id.
    pub id: String,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// 0: no timeout.
    pub timeout_ms: u64,
}

/// What the keeper knows about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Pid of its init (0 if none).
    pub pid: i32,
    /// `created`, `running`, `exited` or `unknown`.
    pub state: String,
    /// Unix ns.
    pub created_at: i64,
    /// Unix ns; 0 if never started.
    pub started_at: i64,
    /// Set once the init has exited.
    pub exit: Option<ExitStatus>,
    /// The CRI log file.
    pub log_path: Option<PathBuf>,
    /// Resource use measured by the keeper itself, for containers that have no cgroup of their
    /// own (`wasm` instances are threads of the keeper); `None` where the cgroup tells.
    pub usage: Option<Usage>,
}

/// Resource use of one container as its keeper measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// CPU time consumed, nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use now (linear memories, tables and instance state), bytes.
    pub memory_bytes: u64,
    /// The most memory it has held, bytes.
    pub memory_max_bytes: u64,
    /// The memory limit, bytes; 0: none.
    pub memory_limit_bytes: u64,
}

/// [`Request::Exec`]'s result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecResult {
    /// Captured stdout (at most [`EXEC_OUTPUT_LIMIT`] bytes).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most [`EXEC_OUTPUT_LIMIT`] bytes).
    pub stderr: Vec<u8>,
    /// Exit code (`128 + signal` when killed).
    pub exit_code: i32,
    /// The timeout ran out and the process was killed.
    pub timed_out: bool,
}

/// Output cap of an exec, per stream (containerd's 16 MiB).
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// A response from the keeper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Success without data.
    Ok,
    /// [`Request::Ping`]'s answer.
    Pong {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// The keeper's pid.
        pid: i32,
    },
    /// One container.
    Container(ContainerInfo),
    /// Every container.
    Containers {
        /// The containers.
        containers: Vec<ContainerInfo>,
    },
    /// [`Request::Exec`]'s answer.
    Exec(ExecResult),
    /// Failure.
    Error {
        /// `not_found`, `failed_precondition`, `invalid_argument` or `internal`.
        kind: String,
        /// What went wrong (lowercase, with context).
        message: String,
    },
}

/// The frames of a streaming connection ([`Request::ExecStream`], [`Request::Attach`]) after the
/// response line: `kind` (1 byte), payload length (4 bytes, big-endian), payload.
pub mod frame {
    use tokio::io::{AsyncRead, AsyncReadExt};

    /// Daemon to keeper: stdin data.
    pub const STDIN: u8 = 0;
    /// Keeper to daemon: stdout data.
    pub const STDOUT: u8 = 1;
    /// Keeper to daemon: stderr data.
    pub const STDERR: u8 = 2;
    /// Keeper to daemon: the end; payload is the exit code (i32, big-endian).
    pub const EXIT: u8 = 3;
    /// Daemon to keeper: stdin closed.
    pub const STDIN_CLOSE: u8 = 4;
    /// Daemon to keeper: terminal size, width then height (u16 each, big-endian).
    pub const RESIZE: u8 = 5;

    /// Largest payload accepted.
    pub const MAX: usize = 1 << 20;

    /// One encoded frame.
    pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(payload.len() + 5);
        v.push(kind);
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Reads one frame; `Ok(None)` at a clean end of the stream.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut head = [0u8; 5];
        match r.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut head[1..]).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("keeper frame of {len} bytes"),
            ));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        Ok(Some((head[0], payload)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn frames_round_trip() {
            let mut wire = encode(STDOUT, b"hello");
            wire.extend(encode(EXIT, &7i32.to_be_bytes()));
            wire.extend(encode(STDIN_CLOSE, b""));
            let mut r = &wire[..];
            assert_eq!(
                read(&mut r).await.expect("ok"),
                Some((STDOUT, b"hello".to_vec()))
            );
            assert_eq!(
                read(&mut r).await.expect("ok"),
                Some((EXIT, 7i32.to_be_bytes().to_vec()))
            );
            assert_eq!(
                read(&mut r).await.expect("ok"),
                Some((STDIN_CLOSE, Vec::new()))
            );
            assert_eq!(read(&mut r).await.expect("ok"), None);
            let mut torn = &wire[..3];
            assert!(read(&mut torn).await.is_err());
        }
    }
}
