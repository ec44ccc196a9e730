//! The image service's error type: one variant per failed operation, lowercase messages with
//! context, and one [`ErrorKind`] per variant.
//!
//! `ImageError` is `Clone` (I/O errors are held in an `Arc`) so that one download or unpack shared
//! by several concurrent pulls can hand the same result to every waiter.

use std::path::PathBuf;
use std::sync::Arc;

use unicri_sandbox::{Classify, ErrorKind};

/// Shared I/O error (cloneable).
pub type IoError = Arc<std::io::Error>;

/// Everything that can go wrong in the image service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// A configuration file (hosts.toml, credentials) could not be read or parsed.
    #[error("load config file {path}: {reason}")]
    LoadConfig { path: PathBuf, reason: String },
    /// A local filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: IoError,
    },
    /// A registry could not be reached (connection refused, TLS failure, timeout).
    #[error("connect to registry {url}: {reason}")]
    Connect { url: String, reason: String },
    /// A registry request returned an unexpected HTTP status.
    #[error("registry request {url}: http status {status}")]
    RegistryStatus { url: String, status: u16 },
    /// Authentication with the registry failed.
    #[error("authenticate to {url}: {reason}")]
    Authenticate { url: String, reason: String },
    /// The image (manifest) does not exist on any configured endpoint.
    #[error("resolve {reference}: not found")]
    Resolve { reference: String },
    /// An index / manifest list had no linux/amd64 entry (nor a wasm one to fall back to).
    #[error("select platform in index {digest}: no linux/amd64 manifest (nor a wasm/wasi one)")]
    SelectPlatform { digest: String },
    /// A manifest, config or layer used a media type this runtime refuses.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },
    /// A fetched object exceeded its size limit.
    #[error("read {what}: exceeds size limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// Content did not hash to the expected digest.
    #[error("verify digest of {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Content length differed from the descriptor size (truncated or oversized body).
    #[error("verify size of {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// The uncompressed layer did not hash to the config's diff id.
    #[error("verify diff id of layer {digest}: expected {expected}, got {actual}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    /// A manifest, index or config could not be parsed.
    #[error("parse {what}: {reason}")]
    Parse { what: String, reason: String },
    /// A layer tar contained a hostile or unsupported entry.
    #[error("unpack layer {digest}: entry {entry:?}: {reason}")]
    HostileLayer {
        digest: String,
        entry: String,
        reason: String,
    },
    /// Unpacking a layer failed locally.
    #[error("unpack layer {digest}: {reason}")]
    Unpack { digest: String, reason: String },
    /// An archive or layout to import is malformed.
    #[error("import {path}: {reason}")]
    Import { path: PathBuf, reason: String },
    /// A background task panicked or was cancelled.
    #[error("join task {what}: {reason}")]
    Task { what: String, reason: String },
}

impl ImageError {
    /// Wraps an I/O error with the operation and path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Whether a pull should try the next endpoint after this error.
    pub(crate) fn is_fallthrough(&self) -> bool {
        match self {
            ImageError::Connect { .. } | ImageError::Resolve { .. } => true,
            ImageError::RegistryStatus { status, .. } => *status == 404 || *status >= 500,
            _ => false,
        }
    }
}

impl Classify for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. }
            | ImageError::LoadConfig { .. }
            | ImageError::UnsupportedMediaType { .. }
            | ImageError::Import { .. } => ErrorKind::InvalidArgument,
            ImageError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            ImageError::Connect { .. } => ErrorKind::Unavailable,
            ImageError::RegistryStatus { status, .. } => match status {
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::PermissionDenied,
                404 => ErrorKind::NotFound,
                408 | 504 => ErrorKind::DeadlineExceeded,
                _ => ErrorKind::Unavailable,
            },
            ImageError::Authenticate { .. } => ErrorKind::Unauthenticated,
            ImageError::Resolve { .. } | ImageError::SelectPlatform { .. } => ErrorKind::NotFound,
            ImageError::TooLarge { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::DiffIdMismatch { .. }
            | ImageError::Parse { .. }
            | ImageError::HostileLayer { .. } => ErrorKind::DataLoss,
            ImageError::Unpack { .. } | ImageError::Task { .. } => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let e = ImageError::InvalidReference {
            reference: "X".into(),
            reason: "uppercase".into(),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().starts_with("invalid image reference"));
        let e = ImageError::DigestMismatch {
            what: "blob".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(e.kind(), ErrorKind::DataLoss);
        assert_eq!(
            ImageError::RegistryStatus {
                url: "u".into(),
                status: 401
            }
            .kind(),
            ErrorKind::Unauthenticated
        );
        assert!(
            ImageError::RegistryStatus {
                url: "u".into(),
                status: 404
            }
            .is_fallthrough()
        );
        assert!(
            !ImageError::DigestMismatch {
                what: "b".into(),
                expected: "a".into(),
                actual: "b".into()
            }
            .is_fallthrough()
        );
    }
}
