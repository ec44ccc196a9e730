//! The agent's error: a class (the wire's `kind`) and a message saying what failed and why.

use std::fmt;

use unicri_vm_agent::proto::Response;

/// The class of a failed request, as sent in [`Response::Error`]'s `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request itself is wrong.
    InvalidArgument,
    /// Something the request names does not exist.
    NotFound,
    /// The guest is not in a state to do it (e.g. no `Setup` yet, a mount refused).
    FailedPrecondition,
    /// Anything else.
    Internal,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InvalidArgument => "invalid_argument",
            Kind::NotFound => "not_found",
            Kind::FailedPrecondition => "failed_precondition",
            Kind::Internal => "internal",
        }
    }
}

/// A failed request.
#[derive(Debug)]
pub struct Error {
    /// Its class.
    pub kind: Kind,
    /// Lowercase, with context.
    pub message: String,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Kind::FailedPrecondition, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }
    /// An I/O failure of `what`, classed by its errno (`ENOENT` → not found).
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => Kind::NotFound,
            _ => Kind::Internal,
        };
        Self::new(kind, format!("{what}: {e}"))
    }
    /// A failed syscall (nix) of `what`.
    pub fn sys(what: impl fmt::Display, e: nix::Error) -> Self {
        Self::io(what, &std::io::Error::from(e))
    }
    /// The wire form.
    pub fn into_response(self) -> Response {
        Response::Error {
            kind: self.kind.as_str().to_string(),
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
