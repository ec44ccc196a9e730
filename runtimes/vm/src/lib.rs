//! unicri's `vm` backend, host side: each pod behind its own kernel.
//!
//! * [`initramfs`]: the guest's initramfs (the agent as `/init` and its shared libraries);
//! * [`image`]: container images as shared read-only EROFS files;
//! * [`net`]: the taps of a pod's VM in its network namespace, tc-redirected to `eth0`;
//! * [`engine`]: start, liveness, stop and image hot-plug over both engines, [`uml`]
//!   (user-mode Linux) and [`kvm`] (`unicri-vmm`);
//! * [`client`]: the guest agent's client ([`unicri_vm_agent::proto`]).
//!
//! Never touches SQLite, registries or CRI types; blocking functions (image builds, engine
//! start/stop, `ip`/`tc`) belong on blocking threads of the caller.

pub mod client;
pub mod engine;
pub mod error;
pub mod image;
pub mod initramfs;
pub mod kvm;
pub mod net;
pub mod uml;

pub use client::AgentClient;
pub use engine::{Drive, Engine, VmConfig, VmState};
pub use error::VmError;
