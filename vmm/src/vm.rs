//! A VM: KVM objects, guest memory, the legacy devices (8250 serial on 0x3f8 / IRQ 4, the
//! i8042's reset line), one thread per vCPU, and how the VM ended.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, EntryMode};
use crate::cpu;
use crate::error::VmmError;
use crate::host::KvmFlavor;
use crate::layout::*;

/// What a VM is made of.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// ELF `vmlinux` (PVH when it has the note, else 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs (1..=254).
    pub vcpus: u8,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: 128,
            vcpus: 1,
        }
    }
}

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest pulsed the i8042 reset line (Linux `reboot`, and `poweroff` with `reboot=k`):
    /// the VM is over, cleanly.
    Reset,
    /// The CPU shut down (triple fault): the guest crashed.
    Shutdown,
    /// KVM could not go on (internal error, failed entry, unexpected exit).
    Error(String),
}

impl VmExit {
    /// The `unicri vmm` process exit code for this end: 0 reset, 2 shutdown, 1 error.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::Reset => 0,
            VmExit::Shutdown => 2,
            VmExit::Error(_) => 1,
        }
    }
}

struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

type SerialDev = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// Port I/O devices shared by the vCPU threads.
struct Bus {
    serial: Mutex<SerialDev>,
}

const SERIAL_BASE: u16 = 0x3f8;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

enum Io {
    Continue,
    Reset,
}

impl Bus {
    fn out(&self, port: u16, data: &[u8]) -> Io {
        match (port, data) {
            (p, [v, ..]) if (SERIAL_BASE..SERIAL_BASE + 8).contains(&p) => {
                let mut s = self
                    .serial
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = s.write((p - SERIAL_BASE) as u8, *v);
                let _ = s.writer_mut().flush();
                Io::Continue
            }
            (I8042_COMMAND, [I8042_RESET, ..]) => Io::Reset,
            _ => Io::Continue,
        }
    }

    fn input(&self, port: u16, data: &mut [u8]) {
        let v = match port {
            p if (SERIAL_BASE..SERIAL_BASE + 8).contains(&p) => self
                .serial
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .read((p - SERIAL_BASE) as u8),
            // i8042: no data, input buffer empty
            0x60 | I8042_COMMAND => 0,
            _ => 0xff,
        };
        data.fill(v);
    }
}

/// A booted-to-be VM.
pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    bus: Arc<Bus>,
    /// What kind of KVM this is.
    pub flavor: KvmFlavor,
    /// The entry the vCPUs start at.
    pub entry: boot::Entry,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("flavor", &self.flavor)
            .field("entry", &self.entry)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates the VM, loads the kernel and sets up every vCPU; the serial console writes to
    /// `console`.
    pub fn new(cfg: &VmConfig, console: Box<dyn Write + Send>) -> Result<Vm, VmmError> {
        if cfg.vcpus == 0 || cfg.vcpus > 254 {
            return Err(VmmError::Config(format!("{} vCPUs (1..=254)", cfg.vcpus)));
        }
        if cfg.mem_mib < 16 {
            return Err(VmmError::Config(format!(
                "{} MiB of memory (16 at least)",
                cfg.mem_mib
            )));
        }
        let flavor = KvmFlavor::detect();
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        let vm = kvm.create_vm().map_err(VmmError::ioctl("KVM_CREATE_VM"))?;
        let mem = boot::guest_memory(cfg.mem_mib << 20)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            kvm_mem::register(&vm, r)?;
        }
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmmError::ioctl("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(VmmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(VmmError::ioctl("KVM_CREATE_PIT2"))?;

        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
            what: "serial irq eventfd".into(),
            source,
        })?;
        vm.register_irqfd(&irq, 4)
            .map_err(VmmError::ioctl("KVM_IRQFD (serial)"))?;
        let bus = Arc::new(Bus {
            serial: Mutex::new(Serial::new(IrqTrigger(irq), console)),
        });

        let (entry, _end) = boot::load_kernel(&mem, &cfg.kernel)?;
        let initrd = cfg
            .initrd
            .as_deref()
            .map(|p| boot::load_initrd(&mem, p))
            .transpose()?;
        boot::write_cmdline(&mem, &cfg.cmdline)?;
        boot::write_gdt(&mem, entry.mode)?;
        match entry.mode {
            EntryMode::Pvh => boot::write_pvh_info(&mem, cfg.cmdline.len(), initrd)?,
            EntryMode::Long64 => {
                boot::write_page_tables(&mem)?;
                boot::write_zero_page(&mem, None, cfg.cmdline.len(), initrd)?;
            }
        }

        let base_cpuid = cpu::cpuid(&kvm, flavor)?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        for id in 0..cfg.vcpus {
            let v = vm
                .create_vcpu(u64::from(id))
                .map_err(VmmError::ioctl("KVM_CREATE_VCPU"))?;
            cpu::set_cpuid(&v, &base_cpuid, id, cfg.vcpus)?;
            cpu::set_msrs(&v)?;
            cpu::set_regs(&v, entry.mode, entry.addr.raw_value())?;
            cpu::set_fpu(&v)?;
            cpu::set_lint(&v)?;
            vcpus.push(v);
        }
        tracing::info!(
            flavor = flavor.describe(),
            ?entry,
            vcpus = cfg.vcpus,
            mem_mib = cfg.mem_mib,
            "vm ready"
        );
        Ok(Vm {
            _kvm: kvm,
            _vm: vm,
            _mem: mem,
            vcpus,
            bus,
            flavor,
            entry,
        })
    }

    /// Runs every vCPU on its own thread until the VM ends; the other vCPUs are then stopped.
    pub fn run(mut self) -> VmExit {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        kick_handler();
        let mut threads = Vec::new();
        for (i, mut vcpu) in self.vcpus.drain(..).enumerate() {
            let (tx, flag, bus) = (tx.clone(), stop.clone(), self.bus.clone());
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    let end = run_vcpu(&mut vcpu, &bus, &flag);
                    if let Some(end) = end {
                        let _ = tx.send(end);
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    return VmExit::Error(format!("spawn vcpu thread: {e}"));
                }
            }
        }
        drop(tx);
        let end = rx
            .recv()
            .unwrap_or_else(|_| VmExit::Error("every vCPU thread ended".into()));
        stop.store(true, Ordering::Release);
        // kick the others out of KVM_RUN until they are gone
        let deadline = Instant::now() + Duration::from_secs(2);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                use vmm_sys_util::signal::Killable;
                let _ = t.kill(vmm_sys_util::signal::SIGRTMIN());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        end
    }
}

/// A no-op handler for the kick signal: its only job is to make KVM_RUN return EINTR.
fn kick_handler() {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    let _ = vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), noop);
}

fn run_vcpu(vcpu: &mut VcpuFd, bus: &Bus, stop: &AtomicBool) -> Option<VmExit> {
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Io::Reset = bus.out(port, data) {
                    return Some(VmExit::Reset);
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => bus.input(port, data),
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::Hlt) => return Some(VmExit::Shutdown),
            Ok(VcpuExit::Shutdown) => return Some(VmExit::Shutdown),
            Ok(VcpuExit::InternalError) => {
                return Some(VmExit::Error("KVM_EXIT_INTERNAL_ERROR".into()));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(VmExit::Error(format!(
                    "KVM_EXIT_FAIL_ENTRY (reason {reason:#x}, cpu {cpu})"
                )));
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => return Some(VmExit::Error(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(VmExit::Error(format!("KVM_RUN: {e}"))),
        }
    }
}

#[allow(unsafe_code)]
mod kvm_mem {
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::VmFd;

    use crate::error::VmmError;

    /// Registers one guest RAM region.
    pub fn register(vm: &VmFd, r: kvm_userspace_memory_region) -> Result<(), VmmError> {
        // SAFETY: the caller passes a region of a live anonymous mapping owned by the
        // `GuestMemoryMmap` that the `Vm` keeps for as long as the VM fd (fields drop in order,
        // `_vm` before `_mem`), never unmapped or resized while the VM exists.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(VmmError::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }
}
