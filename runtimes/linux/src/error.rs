//! The crate's error type: one variant per failed operation, each mapped to one [`ErrorKind`].

use std::path::PathBuf;

use unicri_sandbox::{Classify, ErrorKind};

/// What went wrong in the `linux` backend.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// A spec field the backend cannot honour.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which field.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The pod directory already holds a live pod (pins or shm mounted).
    #[error("pod directory {path} already holds a live pod")]
    PodExists {
        /// The pod directory.
        path: PathBuf,
    },
    /// Creating the pod's IPC/UTS namespaces and pinning them failed.
    #[error("pin namespaces at {path}: {op}: {source}")]
    PinNamespaces {
        /// The pin file or directory involved.
        path: PathBuf,
        /// The failed step.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Entering a pinned namespace failed.
    #[error("enter namespace pinned at {path}: {source}")]
    EnterNamespace {
        /// The pin file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a sysctl failed.
    #[error("set sysctl {name}={value:?}: {source}")]
    SetSysctl {
        /// The sysctl's name as given.
        name: String,
        /// The value.
        value: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Preparing the pods directory as a shared mount failed.
    #[error("prepare pods directory {dir}: {op}: {source}")]
    PreparePodsDir {
        /// The directory.
        dir: PathBuf,
        /// The failed step.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Mounting the pod's /dev/shm failed.
    #[error("mount shm tmpfs at {path}: {source}")]
    MountShm {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Unmounting something failed.
    #[error("unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file-system operation on the pod's files failed.
    #[error("{op} {path}: {source}")]
    PodFile {
        /// The failed step.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something is still mounted under the pod directory, so it is not deleted.
    #[error("pod directory {path} still has mounts under it: {mounts:?}")]
    MountsLeft {
        /// The pod directory.
        path: PathBuf,
        /// The mount points left.
        mounts: Vec<PathBuf>,
    },
    /// Reading the cgroup layout of the node failed.
    #[error("detect cgroups: {reason}")]
    DetectCgroups {
        /// Why.
        reason: String,
    },
    /// Creating a cgroup directory (or preparing it) failed.
    #[error("create cgroup {path}: {op}: {source}")]
    CreateCgroup {
        /// The directory.
        path: PathBuf,
        /// The failed step.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Some cgroup directories could not be removed.
    #[error("remove cgroups: left {}", format_leftovers(.leftovers))]
    RemoveCgroups {
        /// What is left and why.
        leftovers: Vec<CgroupLeftover>,
    },
    /// Reading a cgroup's processes failed.
    #[error("read processes of cgroup {path}: {source}")]
    ReadCgroup {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An operation failed and so did (part of) its rollback.
    #[error("{error} (rollback also failed: {cleanup})")]
    RollbackFailed {
        /// The original error.
        error: Box<LinuxError>,
        /// The first cleanup error.
        cleanup: Box<LinuxError>,
    },
    /// Several independent cleanup steps failed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<LinuxError>),
    /// A file the OCI spec builder reads (in the container's rootfs or on the node) could not be
    /// read.
    #[error("{op} {path}: {source}")]
    SpecIo {
        /// The failed step.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something a container spec names (mount source, device, seccomp profile) does not exist.
    #[error("{what} {path} does not exist")]
    SpecNotFound {
        /// What it is.
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// A container feature the `linux` backend does not support (yet).
    #[error("{what} is not supported by the linux runtime: {reason}")]
    SpecUnsupported {
        /// The feature.
        what: &'static str,
        /// Details.
        reason: String,
    },
    /// A mount asks for a propagation its host mount point does not allow.
    #[error(
        "mount {path} with {propagation} propagation: {path} is on {mount_point}, which is not a {needed} mount"
    )]
    MountPropagation {
        /// The host path of the mount.
        path: PathBuf,
        /// The propagation asked for (`rslave`, `rshared`).
        propagation: &'static str,
        /// The host mount point holding `path`.
        mount_point: PathBuf,
        /// What that mount point would have to be (`shared`, `shared or slave`).
        needed: &'static str,
    },
    /// Talking to the keeper failed (it could not be started, reached or understood).
    #[error("keeper {op}: {message}")]
    Keeper {
        /// The request.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The keeper refused a request.
    #[error("keeper {op}: {message}")]
    KeeperRefused {
        /// The request.
        op: &'static str,
        /// `not_found`, `failed_precondition`, `invalid_argument` or `internal`.
        kind: String,
        /// The keeper's message.
        message: String,
    },
}

/// A cgroup directory that `remove` could not delete.
#[derive(Debug)]
pub struct CgroupLeftover {
    /// The directory.
    pub path: PathBuf,
    /// Why it is still there (EBUSY usually means processes are in it).
    pub error: std::io::Error,
    /// Processes found in it (best effort).
    pub pids: Vec<i32>,
}

fn format_leftovers(l: &[CgroupLeftover]) -> String {
    l.iter()
        .map(|l| {
            if l.pids.is_empty() {
                format!("{} ({})", l.path.display(), l.error)
            } else {
                format!("{} ({}; pids {:?})", l.path.display(), l.error, l.pids)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl LinuxError {
    /// Folds a list of cleanup errors into one (none → `None`).
    pub(crate) fn collect(mut errors: Vec<LinuxError>) -> Option<LinuxError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(LinuxError::Multiple(errors)),
        }
    }
}

impl Classify for LinuxError {
    fn kind(&self) -> ErrorKind {
        match self {
            LinuxError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            LinuxError::PodExists { .. } => ErrorKind::AlreadyExists,
            LinuxError::SpecNotFound { .. } => ErrorKind::NotFound,
            LinuxError::SpecUnsupported { .. } => ErrorKind::Unimplemented,
            LinuxError::MountPropagation { .. } => ErrorKind::FailedPrecondition,
            LinuxError::SpecIo { .. } => ErrorKind::Internal,
            LinuxError::RollbackFailed { error, .. } => error.kind(),
            LinuxError::Multiple(errors) => {
                errors.first().map_or(ErrorKind::Internal, |e| e.kind())
            }
            LinuxError::KeeperRefused { kind, .. } => match kind.as_str() {
                "not_found" => ErrorKind::NotFound,
                "failed_precondition" => ErrorKind::FailedPrecondition,
                "invalid_argument" => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
            LinuxError::Keeper { .. } => ErrorKind::Unavailable,
            LinuxError::PinNamespaces { .. }
            | LinuxError::EnterNamespace { .. }
            | LinuxError::SetSysctl { .. }
            | LinuxError::PreparePodsDir { .. }
            | LinuxError::MountShm { .. }
            | LinuxError::Unmount { .. }
            | LinuxError::PodFile { .. }
            | LinuxError::MountsLeft { .. }
            | LinuxError::DetectCgroups { .. }
            | LinuxError::CreateCgroup { .. }
            | LinuxError::RemoveCgroups { .. }
            | LinuxError::ReadCgroup { .. } => ErrorKind::Internal,
        }
    }
}
