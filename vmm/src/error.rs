//! The VMM's error type.

/// What went wrong while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` is missing or refused.
    #[error("open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// The step.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// The configuration cannot be honoured.
    #[error("invalid config: {0}")]
    Config(String),
    /// Guest memory could not be made or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel could not be loaded.
    #[error("load kernel {path}: {message}")]
    Kernel {
        /// The kernel file.
        path: String,
        /// Why.
        message: String,
    },
    /// A host I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl VmmError {
    pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Ioctl { what, source }
    }
}
