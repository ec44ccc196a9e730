//! unicri's `wasm` backend: WebAssembly containers on wasmtime (ADR 0007).
//!
//! * [`spec`]: what a container runs with ([`spec::WasmSpec`], written by the daemon into the
//!   bundle as `wasm.json`), built from the backend-neutral container description; refuses
//!   images whose entrypoint is not a WebAssembly module.
//! * [`engine`]: the wasmtime engine, epoch ticker, linkers and the compile cache (on disk by
//!   content digest, in memory as pre-linked instances).
//! * [`instance`]: one container = one thread with its own runtime in the pod's netns; log
//!   sinks, memory limiter, CPU throttle, kill.
//! * [`keeper`]: the node-wide `unicri wasm-keeper` process, speaking the `linux` keeper's
//!   protocol so the daemon drives both the same way.

pub mod engine;
pub mod error;
pub mod instance;
pub mod keeper;
pub mod spec;

pub use error::WasmError;
