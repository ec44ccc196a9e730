//! The crate's error type: one variant per failed operation, each mapped to one [`ErrorKind`].

use std::path::PathBuf;

use unicri_sandbox::{Classify, ErrorKind};

/// What went wrong in the `vm` backend's host side.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// An argument the backend cannot honour.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The failed step.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A helper command (`ldd`, `mkfs.erofs`, `mount`, `ip`, `tc`, `nsenter`) failed.
    #[error("{command}: {status}: {stderr}")]
    Command {
        /// The command line (program and arguments).
        command: String,
        /// Its exit status, or why it could not run.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The pod's network namespace does not look as expected.
    #[error("pod network in {netns}: {reason}")]
    PodNetwork {
        /// The netns pin.
        netns: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Starting the engine process failed.
    #[error("start {engine} engine for pod {pod_id}: {source}")]
    Spawn {
        /// `uml` or `kvm`.
        engine: &'static str,
        /// The pod.
        pod_id: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine process is gone (or its pid now names another process).
    #[error("engine process {pid} of {dir} is not running")]
    NotRunning {
        /// The recorded pid.
        pid: i32,
        /// The VM's state directory.
        dir: PathBuf,
    },
    /// The engine process did not go away after SIGKILL.
    #[error("engine process {pid} still there {waited_ms} ms after SIGKILL")]
    StopTimeout {
        /// The pid.
        pid: i32,
        /// How long it was waited for.
        waited_ms: u64,
    },
    /// The UML management console refused or failed a command.
    #[error("mconsole {command:?} at {socket}: {message}")]
    Mconsole {
        /// The command sent.
        command: String,
        /// The console socket.
        socket: PathBuf,
        /// The console's answer or the local failure.
        message: String,
    },
    /// unicri-vmm's control channel refused or failed a request.
    #[error("vmm control {op} at {socket}: {message}")]
    VmmApi {
        /// The request.
        op: String,
        /// The control socket.
        socket: PathBuf,
        /// The answer or the local failure.
        message: String,
    },
    /// Every image slot of the VM is in use.
    #[error("no free image slot in the VM of {dir} ({slots} in use)")]
    NoFreeSlot {
        /// The VM's state directory.
        dir: PathBuf,
        /// How many slots there are.
        slots: usize,
    },
    /// The image is not attached to the VM.
    #[error("image {path} is not attached to the VM of {dir}")]
    NotAttached {
        /// The image file.
        path: PathBuf,
        /// The VM's state directory.
        dir: PathBuf,
    },
    /// Talking to the guest agent failed (connect, write, read, bad answer).
    #[error("agent {op}: {source}")]
    AgentIo {
        /// The step.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent answered `error`.
    #[error("agent refused ({kind}): {message}")]
    Agent {
        /// The agent's error class (`invalid_argument`, `not_found`, `failed_precondition`,
        /// `internal`).
        kind: String,
        /// The agent's message.
        message: String,
    },
    /// The agent answered something else than what the request calls for.
    #[error("agent answered {answer} to {request}")]
    AgentUnexpected {
        /// The request.
        request: &'static str,
        /// The answer (JSON).
        answer: String,
    },
    /// A deadline ran out.
    #[error("{what}: no answer within {ms} ms")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        ms: u64,
    },
}

impl Classify for VmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            VmError::NotRunning { .. } | VmError::NoFreeSlot { .. } => {
                ErrorKind::FailedPrecondition
            }
            VmError::NotAttached { .. } => ErrorKind::NotFound,
            VmError::AgentIo { .. } => ErrorKind::Unavailable,
            VmError::Timeout { .. } | VmError::StopTimeout { .. } => ErrorKind::DeadlineExceeded,
            VmError::Agent { kind, .. } => match kind.as_str() {
                "invalid_argument" => ErrorKind::InvalidArgument,
                "not_found" => ErrorKind::NotFound,
                "failed_precondition" => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            VmError::Io { .. }
            | VmError::Command { .. }
            | VmError::PodNetwork { .. }
            | VmError::Spawn { .. }
            | VmError::Mconsole { .. }
            | VmError::VmmApi { .. }
            | VmError::AgentUnexpected { .. } => ErrorKind::Internal,
        }
    }
}

/// Shorthand for [`VmError::Io`].
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.into();
    move |source| VmError::Io { op, path, source }
}

/// Runs a helper command, returning its stdout, or [`VmError::Command`] with the end of its
/// stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<Vec<u8>, VmError> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| VmError::Command {
        command: command.clone(),
        status: format!("cannot run: {e}"),
        stderr: String::new(),
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(VmError::Command {
        command,
        status: out.status.to_string(),
        stderr: tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_kinds_map() {
        let e = VmError::Agent {
            kind: "not_found".into(),
            message: "x".into(),
        };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = run(&mut std::process::Command::new("false")).expect_err("false fails");
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
