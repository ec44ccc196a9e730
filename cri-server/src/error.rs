//! The edge's error type and the one place where an error becomes a gRPC status.

use unicri_sandbox::{Classify, ErrorKind};

/// An error on its way out of an RPC: its kind decides the gRPC code, its message is what the
/// client reads.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CriError {
    /// Failure class.
    pub kind: ErrorKind,
    /// Lowercase, with context.
    pub message: String,
}

impl CriError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// `InvalidArgument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    /// `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// `Unimplemented`, naming the RPC and where it will come from.
    pub fn unimplemented(rpc: &str, when: &str) -> Self {
        Self::new(
            ErrorKind::Unimplemented,
            format!("{rpc} is not implemented yet in unicri ({when})"),
        )
    }
    /// Wraps any classified error, prefixing context.
    pub fn from_classified<E: Classify + std::fmt::Display>(context: &str, e: &E) -> Self {
        let message = if context.is_empty() {
            e.to_string()
        } else {
            format!("{context}: {e}")
        };
        Self {
            kind: e.kind(),
            message,
        }
    }
}

impl From<unicri_image::ImageError> for CriError {
    fn from(e: unicri_image::ImageError) -> Self {
        Self::from_classified("", &e)
    }
}

impl From<unicri_storage::StoreError> for CriError {
    fn from(e: unicri_storage::StoreError) -> Self {
        Self::from_classified("state store", &e)
    }
}

/// The mapping from failure class to gRPC code (ADR 0003).
pub fn code_for(kind: ErrorKind) -> tonic::Code {
    use tonic::Code;
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<CriError> for tonic::Status {
    fn from(e: CriError) -> Self {
        tonic::Status::new(code_for(e.kind), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_own_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::DataLoss,
            ErrorKind::Unavailable,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Unimplemented,
            ErrorKind::Internal,
        ];
        let codes: std::collections::HashSet<_> =
            kinds.iter().map(|k| code_for(*k) as i32).collect();
        assert_eq!(codes.len(), kinds.len());
        let s: tonic::Status = CriError::not_found("image \"x\" not found").into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "image \"x\" not found");
    }
}
