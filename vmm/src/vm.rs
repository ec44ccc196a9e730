//! A VM: KVM objects, guest memory, the legacy devices (8250 serial on 0x3f8 / IRQ 4, the
//! i8042's reset line), one thread per vCPU, and how the VM ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{DriveInfo, Drives};
use crate::boot::{self, EntryMode};
use crate::cpu;
use crate::error::VmmError;
use crate::host::KvmFlavor;
use crate::layout::*;
use crate::virtio::block::{self, Block};
use crate::virtio::mmio::{MMIO_LEN, MmioTransport};
use crate::virtio::{Interrupt, VirtioDevice};

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
    /// virtio-blk drives, in order (their media can change at run time: [`crate::api`]).
    pub drives: Vec<DriveConfig>,
}

/// One virtio-blk drive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveConfig {
    /// Its id (the control channel's name for it; also its virtio serial).
    pub id: String,
    /// The media; `None`: an empty slot, filled later.
    pub path: Option<PathBuf>,
    /// Read-only (fixed for the slot: the guest reads it at probe).
    pub read_only: bool,
}

/// The VM's drives by id, for the control channel.
#[derive(Default)]
pub struct DriveTable {
    drives: Vec<DriveSlot>,
}

/// One drive: id, device, media path.
type DriveSlot = (String, Arc<Mutex<Block>>, Mutex<Option<PathBuf>>);

impl std::fmt::Debug for DriveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.drives.iter().map(|(id, _, _)| id))
            .finish()
    }
}

impl Drives for DriveTable {
    fn set_media(&self, id: &str, path: Option<&Path>, read_only: bool) -> Result<(), String> {
        let (_, dev, media) = self
            .drives
            .iter()
            .find(|(d, _, _)| d == id)
            .ok_or_else(|| format!("no drive {id:?}"))?;
        let file = path
            .map(|p| {
                block::open_image(p, read_only).map_err(|e| format!("open {}: {e}", p.display()))
            })
            .transpose()?;
        lock(dev)
            .set_media(file.map(|f| (f, read_only)))
            .map_err(|e| format!("drive {id}: {e}"))?;
        *lock(media) = path.map(Path::to_path_buf);
        Ok(())
    }

    fn list(&self) -> Vec<DriveInfo> {
        self.drives
            .iter()
            .map(|(id, dev, media)| {
                let d = lock(dev);
                DriveInfo {
                    id: id.clone(),
                    path: lock(media).clone(),
                    read_only: d.is_read_only(),
                    capacity: d.capacity() * block::SECTOR_SIZE,
                }
            })
            .collect()
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: 128,
            vcpus: 1,
            drives: Vec::new(),
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
    /// Stopped through the control channel.
    Stopped,
}

impl VmExit {
    /// The `unicri vmm` process exit code for this end: 0 reset, 2 shutdown, 1 error.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::Stopped => 0,
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

/// Port I/O and MMIO devices shared by the vCPU threads.
struct Bus {
    serial: Mutex<SerialDev>,
    /// virtio-mmio transports by window base.
    mmio: Vec<(u64, Mutex<MmioTransport>)>,
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

    fn mmio(&self, addr: u64) -> Option<(u64, &Mutex<MmioTransport>)> {
        self.mmio
            .iter()
            .find(|(base, _)| (*base..*base + MMIO_LEN).contains(&addr))
            .map(|(base, t)| (addr - base, t))
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.mmio(addr) {
            Some((off, t)) => t
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .read(off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((off, t)) = self.mmio(addr) {
            t.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write(off, data);
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
    control: Arc<Control>,
    drives: Arc<DriveTable>,
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
        Vm::with_devices(cfg, console, Vec::new())
    }

    /// [`Vm::new`] with virtio-mmio devices: device `i` gets the 4 KiB window at
    /// `MMIO_GAP_START + i * 4 KiB` and GSI `5 + i`, announced on the kernel command line
    /// (`virtio_mmio.device=4K@<addr>:<gsi>`).
    pub fn with_devices(
        cfg: &VmConfig,
        console: Box<dyn Write + Send>,
        devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    ) -> Result<Vm, VmmError> {
        let mut table = DriveTable::default();
        let mut all: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
        for d in &cfg.drives {
            if table.drives.iter().any(|(id, _, _)| *id == d.id) || d.id.is_empty() {
                return Err(VmmError::Config(format!(
                    "drive id {:?} is empty or repeated",
                    d.id
                )));
            }
            let dev = match &d.path {
                Some(p) => Block::open(&d.id, p, d.read_only).map_err(|source| VmmError::Io {
                    what: format!("open drive {} ({})", d.id, p.display()),
                    source,
                })?,
                None if d.read_only => Block::empty_read_only(&d.id),
                None => Block::empty(&d.id),
            };
            let dev = Arc::new(Mutex::new(dev));
            all.push(dev.clone());
            table
                .drives
                .push((d.id.clone(), dev, Mutex::new(d.path.clone())));
        }
        all.extend(devices);
        let devices = all;
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
        let mut mmio = Vec::with_capacity(devices.len());
        let mut cmdline = cfg.cmdline.clone();
        for (i, dev) in devices.into_iter().enumerate() {
            let base = MMIO_GAP_START + (i as u64) * MMIO_LEN;
            let gsi = 5 + i as u32;
            if gsi > 23 {
                return Err(VmmError::Config("more than 19 virtio devices".into()));
            }
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
                what: "virtio irq eventfd".into(),
                source,
            })?;
            vm.register_irqfd(&fd, gsi)
                .map_err(VmmError::ioctl("KVM_IRQFD (virtio)"))?;
            let t = MmioTransport::new(dev, mem.clone(), Interrupt::new(fd));
            mmio.push((base, Mutex::new(t)));
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
        }
        let bus = Arc::new(Bus {
            serial: Mutex::new(Serial::new(IrqTrigger(irq), console)),
            mmio,
        });

        let (entry, _end) = boot::load_kernel(&mem, &cfg.kernel)?;
        let initrd = cfg
            .initrd
            .as_deref()
            .map(|p| boot::load_initrd(&mem, p))
            .transpose()?;
        let cmdline = cmdline.trim().to_string();
        boot::write_cmdline(&mem, &cmdline)?;
        boot::write_gdt(&mem, entry.mode)?;
        match entry.mode {
            EntryMode::Pvh => boot::write_pvh_info(&mem, cmdline.len(), initrd)?,
            EntryMode::Long64 => {
                boot::write_page_tables(&mem)?;
                boot::write_zero_page(&mem, None, cmdline.len(), initrd)?;
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
            control: Arc::new(Control::default()),
            drives: Arc::new(table),
            flavor,
            entry,
        })
    }

    /// The VM's drives, for the control channel.
    pub fn drives(&self) -> Arc<DriveTable> {
        self.drives.clone()
    }

    /// The VM's control block (pause, resume, stop, counters), for the control channel.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Runs every vCPU on its own thread until the VM ends; the other vCPUs are then stopped.
    pub fn run(mut self) -> VmExit {
        let (tx, rx) = mpsc::channel();
        let ctl = self.control.clone();
        *lock(&ctl.end) = Some(tx.clone());
        kick_handler();
        let n = self.vcpus.len();
        ctl.vcpus.store(n, Ordering::Release);
        for (i, mut vcpu) in self.vcpus.drain(..).enumerate() {
            let (tx, c, bus) = (tx.clone(), ctl.clone(), self.bus.clone());
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    if let Some(end) = run_vcpu(&mut vcpu, &bus, &c) {
                        let _ = tx.send(end);
                    }
                });
            match t {
                Ok(t) => lock(&ctl.threads).push(t),
                Err(e) => {
                    ctl.stop.store(true, Ordering::Release);
                    return VmExit::Error(format!("spawn vcpu thread: {e}"));
                }
            }
        }
        drop(tx);
        let end = rx
            .recv()
            .unwrap_or_else(|_| VmExit::Error("every vCPU thread ended".into()));
        *lock(&ctl.end) = None;
        ctl.stop.store(true, Ordering::Release);
        ctl.cv.notify_all();
        // kick the others out of KVM_RUN until they are gone
        let deadline = Instant::now() + Duration::from_secs(2);
        while lock(&ctl.threads).iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            ctl.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        end
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pause, resume and stop of a running VM, and its counters (the control channel's handle).
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    paused: Mutex<bool>,
    cv: Condvar,
    parked: AtomicUsize,
    vcpus: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    end: Mutex<Option<mpsc::Sender<VmExit>>>,
    started: Mutex<Option<Instant>>,
    /// VM exits handled, by kind.
    pub exits: ExitCounters,
}

/// VM exit counters.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port I/O exits.
    pub io: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Interrupted runs (kicks, signals).
    pub intr: AtomicU64,
}

impl Control {
    fn kick(&self) {
        use vmm_sys_util::signal::Killable;
        for t in lock(&self.threads).iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(vmm_sys_util::signal::SIGRTMIN());
        }
    }

    /// Whether the vCPUs are (asked to be) paused.
    pub fn is_paused(&self) -> bool {
        *lock(&self.paused)
    }

    /// Pauses every vCPU; returns once all of them are parked (or after 2 s: `false`).
    pub fn pause(&self) -> bool {
        *lock(&self.paused) = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.parked.load(Ordering::Acquire) < self.vcpus.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                return false;
            }
            self.kick();
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Resumes the vCPUs.
    pub fn resume(&self) {
        *lock(&self.paused) = false;
        self.cv.notify_all();
    }

    /// Ends the VM as [`VmExit::Stopped`].
    pub fn shutdown(&self) {
        if let Some(tx) = lock(&self.end).as_ref() {
            let _ = tx.send(VmExit::Stopped);
        }
        self.stop.store(true, Ordering::Release);
        self.cv.notify_all();
        self.kick();
    }

    /// Time since the vCPUs started.
    pub fn uptime(&self) -> Duration {
        lock(&self.started).map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Parks the calling vCPU while paused; `false` when the VM is stopping.
    fn wait_unpaused(&self) -> bool {
        let mut paused = lock(&self.paused);
        if *paused {
            self.parked.fetch_add(1, Ordering::AcqRel);
            while *paused && !self.stop.load(Ordering::Acquire) {
                paused = self
                    .cv
                    .wait(paused)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            self.parked.fetch_sub(1, Ordering::AcqRel);
        }
        !self.stop.load(Ordering::Acquire)
    }
}

/// A no-op handler for the kick signal: its only job is to make KVM_RUN return EINTR.
fn kick_handler() {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    let _ = vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), noop);
}

fn run_vcpu(vcpu: &mut VcpuFd, bus: &Bus, ctl: &Control) -> Option<VmExit> {
    {
        let mut started = lock(&ctl.started);
        if started.is_none() {
            *started = Some(Instant::now());
        }
    }
    loop {
        if !ctl.wait_unpaused() {
            return None;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                ctl.exits.io.fetch_add(1, Ordering::Relaxed);
                if let Io::Reset = bus.out(port, data) {
                    return Some(VmExit::Reset);
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                ctl.exits.io.fetch_add(1, Ordering::Relaxed);
                bus.input(port, data)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctl.exits.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio_read(addr, data)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctl.exits.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio_write(addr, data)
            }
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
            Ok(VcpuExit::Intr) => {
                ctl.exits.intr.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => return Some(VmExit::Error(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ctl.exits.intr.fetch_add(1, Ordering::Relaxed);
            }
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
