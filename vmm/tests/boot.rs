//! Boots the project's own test guest (`tests/guests/hello.S`, assembled and linked here with
//! the host's gcc and ld) on real KVM, through PVH and through the 64-bit entry, and checks what
//! it printed on the serial port and how the VM ended. Skips loudly without `/dev/kvm` or a
//! toolchain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use unicri_vmm::{Vm, VmConfig, VmExit};

fn guests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Assembles and links hello.S; `pvh` keeps the PVH note.
fn build_guest(dir: &Path, pvh: bool) -> Option<PathBuf> {
    let name = if pvh { "pvh" } else { "long64" };
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let mut cc = Command::new("gcc");
    cc.args(["-c", "-x", "assembler-with-cpp"]);
    if !pvh {
        cc.arg("-DNO_PVH");
    }
    let ok = cc
        .arg(guests().join("hello.S"))
        .arg("-o")
        .arg(&obj)
        .status()
        .ok()?
        .success()
        && Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "-z",
                "noexecstack",
            ])
            .arg("--build-id=none")
            .arg("-T")
            .arg(guests().join("guest.ld"))
            .arg(&obj)
            .arg("-o")
            .arg(&elf)
            .status()
            .ok()?
            .success();
    ok.then_some(elf)
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
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

fn skip(test: &str) -> bool {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP {test}: /dev/kvm is missing on this host");
        return true;
    }
    false
}

fn boot(kernel: PathBuf, vcpus: u8) -> (VmExit, String, unicri_vmm::boot::EntryMode) {
    let console = Console::default();
    let cfg = VmConfig {
        kernel,
        mem_mib: 64,
        vcpus,
        ..VmConfig::default()
    };
    let vm = Vm::new(&cfg, Box::new(console.clone())).expect("vm");
    let mode = vm.entry.mode;
    let end = vm.run();
    let out = String::from_utf8_lossy(
        &console
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    (end, out, mode)
}

#[test]
fn boots_a_test_guest_through_pvh_and_the_64_bit_entry() {
    if skip("boots_a_test_guest_through_pvh_and_the_64_bit_entry") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (Some(pvh), Some(long)) = (
        build_guest(dir.path(), true),
        build_guest(dir.path(), false),
    ) else {
        eprintln!("SKIP boots_a_test_guest: gcc/ld cannot build the test guest");
        return;
    };
    let (end, out, mode) = boot(pvh, 1);
    assert_eq!(mode, unicri_vmm::boot::EntryMode::Pvh);
    assert_eq!(out, "hello from a PVH guest\n");
    assert_eq!(end, VmExit::Reset);
    assert_eq!(end.code(), 0);

    let (end, out, mode) = boot(long, 2);
    assert_eq!(mode, unicri_vmm::boot::EntryMode::Long64);
    assert_eq!(out, "hello from a 64-bit guest\n");
    assert_eq!(end, VmExit::Reset);
}

#[test]
fn refuses_bad_configs_and_kernels() {
    if skip("refuses_bad_configs_and_kernels") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a kernel at all").expect("write");
    let e = Vm::new(
        &VmConfig {
            kernel: junk,
            ..VmConfig::default()
        },
        Box::new(std::io::sink()),
    )
    .expect_err("junk refused");
    assert!(e.to_string().contains("neither ELF nor bzImage"), "{e}");
    let e = Vm::new(
        &VmConfig {
            vcpus: 0,
            ..VmConfig::default()
        },
        Box::new(std::io::sink()),
    )
    .expect_err("0 vcpus refused");
    assert!(e.to_string().contains("vCPUs"), "{e}");
}
