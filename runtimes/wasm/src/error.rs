//! The crate's error type: one variant per kind of failure, each mapped to one [`ErrorKind`].

use unicri_sandbox::{Classify, ErrorKind};

/// What went wrong in the `wasm` backend.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The container or image cannot run as WebAssembly (not a module, bad mount, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the container's state forbids.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Compiling or loading the module failed.
    #[error("compile {what}: {message}")]
    Compile {
        /// The module.
        what: String,
        /// wasmtime's message.
        message: String,
    },
    /// A local I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// The failed step, with its path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl WasmError {
    /// An [`WasmError::Io`] for `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WasmError {
        let what = what.into();
        move |source| WasmError::Io { what, source }
    }
}

impl Classify for WasmError {
    fn kind(&self) -> ErrorKind {
        match self {
            WasmError::InvalidArgument(_) | WasmError::Compile { .. } => ErrorKind::InvalidArgument,
            WasmError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            WasmError::Io { .. } => ErrorKind::Internal,
        }
    }
}
