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
//! Not yet (issue 5 continues): virtio-mmio devices (blk, net, vsock), confinement (cgroup,
//! privilege drop, seccomp), the control channel, the guest kernel build.

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
