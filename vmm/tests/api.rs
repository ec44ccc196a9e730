//! The control channel against a running VM (real KVM): state, pause (the guest's output stops),
//! resume (it goes on), metrics, shutdown (the VM ends as `Stopped`). Skips loudly without
//! `/dev/kvm` or gcc/ld.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unicri_vmm::{Vm, VmConfig, VmExit};

fn build(dir: &Path, src: &str) -> Option<PathBuf> {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let obj = dir.join("g.o");
    let elf = dir.join("g.elf");
    let ok = Command::new("gcc")
        .args(["-c", "-x", "assembler-with-cpp"])
        .arg(guests.join(src))
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
            .arg(guests.join("guest.ld"))
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

impl Console {
    fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

fn call(conn: &mut BufReader<UnixStream>, req: &str) -> serde_json::Value {
    conn.get_mut()
        .write_all(format!("{req}\n").as_bytes())
        .expect("send");
    let mut line = String::new();
    conn.read_line(&mut line).expect("answer");
    serde_json::from_str(&line).expect("json")
}

fn wait_growth(c: &Console, from: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if c.len() > from {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn pause_resume_metrics_and_shutdown_over_the_control_socket() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP pause_resume_metrics_and_shutdown: /dev/kvm is missing on this host");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(kernel) = build(dir.path(), "ticker.S") else {
        eprintln!("SKIP pause_resume_metrics_and_shutdown: gcc/ld cannot build the guest");
        return;
    };
    let console = Console::default();
    let vm = Vm::new(
        &VmConfig {
            kernel,
            mem_mib: 32,
            vcpus: 2,
            drives: vec![unicri_vmm::vm::DriveConfig {
                id: "rootfs1".into(),
                path: None,
                read_only: false,
            }],
            ..VmConfig::default()
        },
        Box::new(console.clone()),
    )
    .expect("vm");
    let sock = dir.path().join("api.sock");
    unicri_vmm::api::serve(&sock, vm.control(), Some(vm.drives())).expect("serve");
    let runner = std::thread::spawn(move || vm.run());
    assert!(wait_growth(&console, 0), "the guest printed nothing");

    let mut conn = BufReader::new(UnixStream::connect(&sock).expect("connect"));
    assert_eq!(call(&mut conn, r#"{"op":"state"}"#)["state"], "running");
    let a = call(&mut conn, r#"{"op":"pause"}"#);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(call(&mut conn, r#"{"op":"state"}"#)["state"], "paused");
    let frozen = console.len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console.len(), frozen, "output grew while paused");

    assert_eq!(call(&mut conn, r#"{"op":"resume"}"#)["ok"], true);
    assert!(wait_growth(&console, frozen), "no output after resume");
    let m = call(&mut conn, r#"{"op":"metrics"}"#);
    assert!(m["exits"]["io"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["rss_kib"].as_u64().unwrap_or(0) > 0, "{m}");
    let bad = call(&mut conn, r#"{"op":"drive","id":"none","path":null}"#);
    assert_eq!(bad["ok"], false, "{bad}");

    // media attached, swapped and ejected while the VM runs
    let d = call(&mut conn, r#"{"op":"drives"}"#);
    assert_eq!(d["drives"][0]["id"], "rootfs1", "{d}");
    assert_eq!(d["drives"][0]["capacity"], 0, "{d}");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&a, vec![0u8; 1 << 20]).expect("a");
    std::fs::write(&b, vec![0u8; 2 << 20]).expect("b");
    for (img, cap) in [(&a, 1u64 << 20), (&b, 2 << 20)] {
        let r = call(
            &mut conn,
            &format!(
                r#"{{"op":"drive","id":"rootfs1","path":"{}"}}"#,
                img.display()
            ),
        );
        assert_eq!(r["ok"], true, "{r}");
        let d = call(&mut conn, r#"{"op":"drives"}"#);
        assert_eq!(d["drives"][0]["capacity"], cap, "{d}");
        assert_eq!(d["drives"][0]["path"], img.display().to_string(), "{d}");
    }
    let missing = call(
        &mut conn,
        r#"{"op":"drive","id":"rootfs1","path":"/nonexistent.img"}"#,
    );
    assert_eq!(missing["ok"], false, "{missing}");
    let r = call(&mut conn, r#"{"op":"drive","id":"rootfs1","path":null}"#);
    assert_eq!(r["ok"], true, "{r}");
    let d = call(&mut conn, r#"{"op":"drives"}"#);
    assert_eq!(d["drives"][0]["capacity"], 0, "{d}");
    let bad = call(&mut conn, r#"{"op":"format-the-disk"}"#);
    assert_eq!(bad["ok"], false, "{bad}");

    assert_eq!(call(&mut conn, r#"{"op":"shutdown"}"#)["ok"], true);
    let end = runner.join().expect("vm thread");
    assert_eq!(end, VmExit::Stopped);
    assert_eq!(end.code(), 0);
}
