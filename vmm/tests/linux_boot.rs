//! Boots the project's guest kernel (`scripts/build-guest-kernel`, ADR 0009) on real KVM with an
//! initramfs built here: its init (`guest-kernel/test-init.c`, compiled with `gcc -static`)
//! checks what a container guest agent relies on (erofs, overlay, ext4, cgroup v2 controllers
//! and BPF device filters, namespaces, AF_VSOCK, a virtio-blk drive from the command line),
//! prints one line per check on the 8250 console, and reboots: the VM must end with
//! [`VmExit::Reset`].
//!
//! The kernel: `$UNICRI_GUEST_KERNEL`, else the newest `*/vmlinux` in the build cache
//! (`$UNICRI_KERNEL_CACHE`, default `/var/cache/unicri/guest-kernel`).
//!
//! Skips loudly without `/dev/kvm`, on PVM hosts (a stock kernel runs emulated there and dies;
//! only a `CONFIG_PVM_GUEST` kernel boots), without a built kernel, or without a static C
//! toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use unicri_vmm::boot::EntryMode;
use unicri_vmm::host::KvmFlavor;
use unicri_vmm::vm::DriveConfig;
use unicri_vmm::{Vm, VmConfig, VmExit};

/// How long a boot may take before the test stops the VM (a hardware-KVM boot takes ~1 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The first line of the test drive (32 bytes with its newline); the guest prints it back.
const DRIVE_MARKER: &str = "unicri guest-kernel test drive\n";

fn cache_root() -> PathBuf {
    std::env::var_os("UNICRI_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/unicri/guest-kernel"))
}

/// The kernel to boot, or why there is none.
fn guest_kernel() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("UNICRI_GUEST_KERNEL") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("UNICRI_GUEST_KERNEL={} is not a file", p.display()))
        };
    }
    let root = cache_root();
    let newest = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    newest.map(|(_, p)| p).ok_or_else(|| {
        format!(
            "no guest kernel built in {} (run scripts/build-guest-kernel, or set \
             UNICRI_GUEST_KERNEL)",
            root.display()
        )
    })
}

/// Why a guest kernel cannot run here, if it cannot; else the kernel.
fn runnable_kernel() -> Result<PathBuf, String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm is missing on this host".into());
    }
    if KvmFlavor::detect() == KvmFlavor::Pvm {
        return Err(
            "this host's KVM is PVM (kvm_pvm): a stock kernel cannot boot on PVM; \
                    needs a CONFIG_PVM_GUEST kernel"
                .into(),
        );
    }
    guest_kernel()
}

/// Compiles the test init statically.
fn build_init(dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kernel/test-init.c");
    let bin = dir.join("init");
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gcc -static cannot build {} (static libc missing?): {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(bin)
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// An uncompressed initramfs: `/init`, `/dev/console` (the kernel opens it for init's stdio),
/// and the mount points.
fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    cpio_entry(&mut a, 1, "dev", 0o040755, (0, 0), &[]);
    cpio_entry(&mut a, 2, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut a, 3, "proc", 0o040555, (0, 0), &[]);
    cpio_entry(&mut a, 4, "sys", 0o040555, (0, 0), &[]);
    cpio_entry(&mut a, 5, "init", 0o100755, (0, 0), init);
    cpio_entry(&mut a, 0, "TRAILER!!!", 0, (0, 0), &[]);
    a
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

#[test]
fn guest_kernel_boots_an_initramfs_that_finds_what_containers_need() {
    let test = "guest_kernel_boots_an_initramfs_that_finds_what_containers_need";
    let kernel = match runnable_kernel() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = match build_init(dir.path()) {
        Ok(i) => i,
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            return;
        }
    };
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(
        &initrd,
        initramfs(&std::fs::read(&init).expect("read init")),
    )
    .expect("write initramfs");
    let drive = dir.path().join("drive.img");
    let mut image = DRIVE_MARKER.as_bytes().to_vec();
    image.resize(64 * 1024, 0);
    std::fs::write(&drive, image).expect("write drive");

    let console = Console::default();
    let cfg = VmConfig {
        kernel: kernel.clone(),
        initrd: Some(initrd),
        cmdline: "console=ttyS0 reboot=k panic=-1".into(),
        mem_mib: 256,
        vcpus: 1,
        drives: vec![DriveConfig {
            id: "test".into(),
            path: Some(drive),
            read_only: true,
        }],
    };
    let vm = Vm::new(&cfg, Box::new(console.clone())).expect("vm");
    assert_eq!(
        vm.entry.mode,
        EntryMode::Pvh,
        "{} has no PVH note",
        kernel.display()
    );
    let ctl = vm.control();
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(BOOT_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
            ctl.shutdown();
        }
    });
    let start = Instant::now();
    let end = vm.run();
    let took = start.elapsed();
    let _ = done.send(());
    watchdog.join().expect("watchdog");
    let out = console.text();
    eprintln!("{} booted in {took:.2?}, ended {end:?}", kernel.display());

    assert_ne!(
        end,
        VmExit::Stopped,
        "no reboot within {BOOT_TIMEOUT:?}:\n{out}"
    );
    assert!(out.contains("UNICRI-GUEST-INIT"), "init never ran:\n{out}");
    let failed: Vec<&str> = out.lines().filter(|l| l.contains(" FAIL ")).collect();
    assert!(failed.is_empty(), "checks failed: {failed:#?}\n{out}");
    for check in [
        "fs-erofs",
        "fs-overlay",
        "fs-ext4",
        "fs-tmpfs",
        "fs-cgroup2",
        "af-vsock",
        "af-inet",
        "namespaces",
        "cgroup2",
        "cgroup-device-bpf",
    ] {
        assert!(
            out.contains(&format!("check {check} ok")),
            "no `check {check} ok`:\n{out}"
        );
    }
    assert!(
        out.contains(&format!("check virtio-blk ok {}", DRIVE_MARKER.trim_end())),
        "the guest did not read the drive:\n{out}"
    );
    assert!(out.contains("UNICRI-GUEST-DONE 0"), "{out}");
    assert_eq!(end, VmExit::Reset, "{out}");
}

/// Loads the kernel without running it: the build must produce an ELF the VMM enters through
/// PVH. Runs on PVM hosts too (nothing executes).
#[test]
fn guest_kernel_is_entered_through_pvh() {
    let test = "guest_kernel_is_entered_through_pvh";
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP {test}: /dev/kvm is missing on this host");
        return;
    }
    let kernel = match guest_kernel() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIP {test}: {why}");
            return;
        }
    };
    let cfg = VmConfig {
        kernel: kernel.clone(),
        cmdline: "console=ttyS0".into(),
        ..VmConfig::default()
    };
    let vm = Vm::new(&cfg, Box::new(std::io::sink())).expect("vm");
    assert_eq!(vm.entry.mode, EntryMode::Pvh, "{}", kernel.display());
}

#[test]
fn initramfs_is_valid_newc() {
    let a = initramfs(b"#!/bin/sh\n");
    assert_eq!(a.len() % 4, 0);
    assert!(a.starts_with(b"070701"));
    // the trailer closes it
    let trailer = a
        .windows(b"TRAILER!!!".len())
        .position(|w| w == b"TRAILER!!!")
        .expect("trailer");
    assert_eq!(&a[trailer - 110..trailer - 104], b"070701");
    // the console is a character device 5:1
    let console = a
        .windows(b"dev/console".len())
        .position(|w| w == b"dev/console")
        .expect("console");
    let h = &a[console - 110..console];
    assert_eq!(&h[14..22], b"00002180"); // mode 020600
    assert_eq!(&h[78..86], b"00000005"); // rdev major
    assert_eq!(&h[86..94], b"00000001"); // rdev minor
}
