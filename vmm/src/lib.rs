//! unicri's VMM (issue 5, first step): a small KVM microVM monitor on rust-vmm crates, one
//! process per VM (`unicri vmm`), knowing nothing of pods, CRI or tokio.
//!
//! * [`layout`]: the guest physical memory map (Firecracker's).
//! * [`boot`]: guest memory, kernel loading (ELF through PVH or the 64-bit entry, bzImage),
//!   `hvm_start_info` / zero page, e820, command line, initramfs, GDT, page tables.
//! * [`cpu`]: CPUID (PVM: the host's hypervisor leaves passed through), MSRs, FPU, LAPIC, registers.
//! * [`host`]: hardware KVM vs PVM.
//! * [`vm`]: the VM, port I/O (8250 serial, i8042 reset), vCPU threads, how it ended.
//!
//! * [`virtio`]: the virtio device trait, the virtio-mmio transport, block (media swappable at
//!   run time), net (tap), vsock (host unix sockets).
//! * [`api`]: the control channel (state, pause/resume, drives, shutdown, metrics).
//! * [`confine`]: cgroups, privilege drop, the seccomp allowlist.
//!
//! The small binary `unicri-vmm` (src/bin) puts these together, one VM per process.

pub mod api;
pub mod boot;
pub mod confine;
pub mod cpu;
pub mod error;
pub mod host;
pub mod layout;
pub mod virtio;
pub mod vm;

pub use error::VmmError;
pub use vm::{Vm, VmConfig, VmExit};
