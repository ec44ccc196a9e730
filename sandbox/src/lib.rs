//! unicri's domain model, shared by every crate and free of I/O.
//!
//! * [`ErrorKind`]: the one classification every crate's error maps to; `cri-server` turns it into a
//!   gRPC status in exactly one place.
//! * [`id`]: 64-hex-digit object ids (the form kubelet and crictl expect) and id-prefix matching.
//! * [`pod`]: the backend-neutral pod description ([`pod::PodSpec`]) a CRI `PodSandboxConfig` maps to.
//! * [`container`]: the backend-neutral container description ([`container::ContainerSpec`]), the
//!   image config it starts from, its state and exit status.
//!
//! The pod/container state machines and the `SandboxBackend`/`TaskRuntime` traits arrive with the
//! linux-pods issue; until then this crate holds only what the image service and the edge share.

pub mod container;
pub mod id;
pub mod pod;

/// What kind of failure an error is, independent of the crate it came from.
///
/// Each variant maps to exactly one gRPC code (see `cri-server`'s `status` module); the mapping is
/// documented in `docs/adr/0003-error-mapping.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is malformed (bad reference, empty id, unknown config key).
    InvalidArgument,
    /// The object named by the request does not exist.
    NotFound,
    /// An object with that name or id already exists.
    AlreadyExists,
    /// The request is well-formed but the object's state forbids it (image in use, ...).
    FailedPrecondition,
    /// Credentials were missing or rejected by a registry.
    Unauthenticated,
    /// The registry or helper refused for permission reasons.
    PermissionDenied,
    /// Remote content is malformed or hostile (digest mismatch, path escape, size limit).
    DataLoss,
    /// A remote party (registry, helper process) could not be reached.
    Unavailable,
    /// A deadline ran out while waiting on another process or host.
    DeadlineExceeded,
    /// The feature is not implemented (yet).
    Unimplemented,
    /// A local failure that is nobody's input: I/O, database, bug.
    Internal,
}

/// Implemented by every crate's error type so the edge can map it once.
pub trait Classify {
    /// The failure class of this error.
    fn kind(&self) -> ErrorKind;
}
