//! Confinement of the VMM process (`unicri_vmm::confine`): the seccomp allowlist kills what it
//! forbids (in a child process: this test binary run again), on every thread; and `unicri-vmm`
//! boots the project's test guests with seccomp on, in fresh cgroups, as uid/gid 65534. The
//! boot needs `/dev/kvm`, root, gcc/ld and a writable cgroup fs, and skips loudly without them.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use unicri_vmm::confine::Confinement;

/// Set in the child: which scenario to run.
const CHILD: &str = "UNICRI_CONFINE_TEST_CHILD";

/// In the child: the confinement a VMM without cgroups or uid gets (no new privileges, not
/// dumpable: SIGSYS leaves no core file), seccomp on.
fn confine_child() {
    let c = Confinement::default();
    c.drop_privileges().expect("drop privileges");
    c.apply_seccomp().expect("seccomp");
}

fn say(s: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Runs this test again in a child process with `CHILD=scenario`; its status and stdout.
fn run_child(test: &str, scenario: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The child's part of `seccomp_kills_what_it_forbids`.
fn child_scenario(scenario: &str) -> ! {
    match scenario {
        // allowed things work, then a forbidden socket family kills the process
        "inet" | "spawn" => {
            confine_child();
            say("filter installed");
            // a new thread (clone3 answers ENOSYS, glibc falls back to clone(CLONE_THREAD))
            let v = std::thread::spawn(|| 6 * 7).join().expect("join");
            assert_eq!(v, 42);
            // an AF_UNIX socket and connect: allowed (the path does not exist)
            let e = std::os::unix::net::UnixStream::connect("/nonexistent/unicri-confine.sock")
                .expect_err("no such socket");
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            // reading a file without creating it
            let status = std::fs::read_to_string("/proc/self/status").expect("read status");
            assert!(status.contains("Seccomp:\t2"), "{status}");
            // removing a file: refused with EPERM, not fatal
            let e = std::fs::remove_file("/nonexistent/unicri-confine").expect_err("refused");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            say("allowed ok");
            if scenario == "inet" {
                // socket(AF_INET): forbidden
                let _ = std::net::TcpListener::bind("127.0.0.1:0");
            } else {
                // a new process: clone without CLONE_THREAD, forbidden (execve too)
                let _ = Command::new("/bin/true").status();
            }
            say("survived");
        }
        // a thread that exists before the filter is installed gets it too (TSYNC)
        "tsync" => {
            let (tx, rx) = mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = rx.recv();
                let _ = std::net::TcpListener::bind("127.0.0.1:0");
                say("thread survived");
            });
            confine_child();
            say("filter installed");
            let _ = tx.send(());
            let _ = t.join();
            say("survived");
        }
        other => say(&format!("unknown scenario {other}")),
    }
    std::process::exit(0)
}

#[test]
fn seccomp_kills_what_it_forbids() {
    const TEST: &str = "seccomp_kills_what_it_forbids";
    if let Ok(s) = std::env::var(CHILD) {
        child_scenario(&s);
    }
    for scenario in ["inet", "spawn"] {
        let (status, out) = run_child(TEST, scenario);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{scenario}: {status:?}\n{out}"
        );
        assert!(out.contains("filter installed\n"), "{scenario}: {out}");
        assert!(out.contains("allowed ok\n"), "{scenario}: {out}");
        assert!(!out.contains("survived"), "{scenario}: {out}");
    }
    let (status, out) = run_child(TEST, "tsync");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "tsync: {status:?}\n{out}"
    );
    assert!(out.contains("filter installed\n"), "tsync: {out}");
    assert!(!out.contains("survived"), "tsync: {out}");
}

#[test]
fn a_uid_without_a_gid_is_refused_before_anything_changes() {
    let c = Confinement {
        uid: Some(65534),
        seccomp: false,
        ..Confinement::default()
    };
    assert!(c.drop_privileges().is_err());
    assert!(c.apply_early().is_err());
    // nothing was dropped: this process is as it was
    assert_eq!(
        nix::unistd::Uid::current(),
        nix::unistd::Uid::effective(),
        "uid unchanged"
    );
}

fn guests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Assembles `src` and links it with the test guests' linker script.
fn build_guest(dir: &Path, name: &str, src: &Path) -> Option<PathBuf> {
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let ok = Command::new("gcc")
        .args(["-c", "-x", "assembler-with-cpp"])
        .arg(src)
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
                "--build-id=none",
            ])
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

/// More output than a pipe holds (64 KiB): the VMM stays blocked writing it until the test
/// reads on, so the test can look at the live process without racing its end.
const CHATTY_DOTS: usize = 128 * 1024;

/// A 64-bit-entry guest: a line, `CHATTY_DOTS` dots, a last line, reset.
fn chatty_source() -> String {
    format!(
        r#"
        .macro print msg
        leaq \msg(%rip), %rsi
1:      lodsb
        testb %al, %al
        jz 2f
        outb %al, %dx
        jmp 1b
2:
        .endm
        .text
        .code64
        .globl _start
_start:
        movw $0x3f8, %dx
        print msg1
        movl ${CHATTY_DOTS}, %ecx
3:      movb $'.', %al
        outb %al, %dx
        decl %ecx
        jnz 3b
        print msg2
        movb $0xfe, %al
        outb %al, $0x64
4:      hlt
        jmp 4b
        .section .rodata
msg1:   .asciz "hello from a confined guest\n"
msg2:   .asciz "\nbye\n"
"#
    )
}

const NOBODY: u32 = 65534;

/// Fresh cgroups for one VMM, removed on drop (leaf, then its parent).
struct Cgroups {
    /// (hierarchy mount, leaf) pairs; the leaf is `<mount>/<unique>/vm`.
    leaves: Vec<(PathBuf, PathBuf)>,
    v2: bool,
}

impl Cgroups {
    fn new() -> Option<Cgroups> {
        let root = Path::new("/sys/fs/cgroup");
        let unique = format!(
            "unicri-confine-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let v2 = root.join("cgroup.controllers").exists();
        let mounts: Vec<PathBuf> = if v2 {
            vec![root.to_path_buf()]
        } else {
            // v1: the accounting, memory, cpuset (exercises the inheritance of cpus/mems) and
            // pids hierarchies, where mounted
            ["cpuacct", "memory", "cpuset", "pids"]
                .iter()
                .map(|c| root.join(c))
                .filter(|m| m.join("cgroup.procs").exists())
                .collect()
        };
        if mounts.is_empty() {
            return None;
        }
        let leaves = mounts
            .into_iter()
            .map(|m| {
                let leaf = m.join(&unique).join("vm");
                (m, leaf)
            })
            .collect();
        Some(Cgroups { leaves, v2 })
    }

    /// The `--cgroup` arguments (not created yet: the VMM creates them).
    fn args(&self) -> Vec<String> {
        self.leaves
            .iter()
            .flat_map(|(_, l)| ["--cgroup".to_string(), l.display().to_string()])
            .collect()
    }

    /// CPU time the cgroup's processes used, in ns (it outlives them).
    fn cpu_ns(&self) -> Option<u64> {
        if self.v2 {
            let stat = std::fs::read_to_string(self.leaves[0].1.join("cpu.stat")).ok()?;
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|us| us * 1000)
        } else {
            let (_, leaf) = self.leaves.iter().find(|(m, _)| m.ends_with("cpuacct"))?;
            std::fs::read_to_string(leaf.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for (_, leaf) in &self.leaves {
            for dir in [Some(leaf.as_path()), leaf.parent()].into_iter().flatten() {
                // a task that just exited may keep a cgroup busy for a moment
                let deadline = Instant::now() + Duration::from_secs(5);
                while dir.exists() && std::fs::remove_dir(dir).is_err() {
                    if Instant::now() > deadline {
                        eprintln!("LEAK: cannot remove cgroup {}", dir.display());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Kills the VMM if the test does not finish with it in time (or panics).
struct Watchdog {
    child: Arc<Mutex<std::process::Child>>,
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(child: std::process::Child, limit: Duration) -> Watchdog {
        let child = Arc::new(Mutex::new(child));
        let (tx, rx) = mpsc::channel::<()>();
        let c = child.clone();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("the VMM ran past {limit:?}: killed");
                let _ = c.lock().unwrap_or_else(|e| e.into_inner()).kill();
            }
        });
        Watchdog {
            child,
            done: Some(tx),
            thread: Some(thread),
        }
    }

    fn wait(&self) -> std::process::ExitStatus {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wait()
            .expect("wait")
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn confined_vmm_boots_the_test_guests() {
    const TEST: &str = "confined_vmm_boots_the_test_guests";
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP {TEST}: /dev/kvm is missing on this host");
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {TEST}: needs root (cgroups, setuid)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let chatty_src = dir.path().join("chatty.S");
    std::fs::write(&chatty_src, chatty_source()).expect("write chatty.S");
    let (Some(hello), Some(chatty)) = (
        build_guest(dir.path(), "hello", &guests().join("hello.S")),
        build_guest(dir.path(), "chatty", &chatty_src),
    ) else {
        eprintln!("SKIP {TEST}: gcc/ld cannot build the test guests");
        return;
    };
    let Some(cgroups) = Cgroups::new() else {
        eprintln!("SKIP {TEST}: no cgroup hierarchy under /sys/fs/cgroup");
        return;
    };
    let vmm = env!("CARGO_BIN_EXE_unicri-vmm");
    let ids = [
        "--uid".to_string(),
        NOBODY.to_string(),
        "--gid".to_string(),
        NOBODY.to_string(),
    ];

    // 1. hello.S through PVH, 2 vCPUs (the second is kicked out of KVM_RUN at the end):
    //    seccomp on by default, fresh cgroups, nobody
    let out = Command::new(vmm)
        .args(["--kernel".as_ref(), hello.as_os_str()])
        .args(["--vcpus", "2", "--mem-mib", "64"])
        .args(cgroups.args())
        .args(&ids)
        .stdin(Stdio::null())
        .output()
        .expect("run unicri-vmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?} (SIGSYS = {}: a syscall outside the allowlist)\nstdout: {stdout}\nstderr: {stderr}",
        out.status,
        libc::SIGSYS
    );
    assert_eq!(stdout, "hello from a PVH guest\n", "stderr: {stderr}");
    for (_, leaf) in &cgroups.leaves {
        assert!(leaf.is_dir(), "the VMM created {}", leaf.display());
    }
    assert!(
        cgroups.cpu_ns().is_some_and(|ns| ns > 0),
        "the VM's CPU time was charged to its cgroup: {:?}",
        cgroups.cpu_ns()
    );

    // 2. the chatty guest: look at the VMM while it is blocked writing to our pipe
    let child = Command::new(vmm)
        .args(["--kernel".as_ref(), chatty.as_os_str()])
        .args(["--mem-mib", "64"])
        .args(cgroups.args())
        .args(&ids)
        .arg("--seccomp")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn unicri-vmm");
    let pid = child.id();
    let mut child = child;
    let mut pipe = child.stdout.take().expect("stdout");
    let dog = Watchdog::new(child, Duration::from_secs(120));
    // the first line, byte by byte: the rest stays in the pipe
    let mut first = Vec::new();
    let mut b = [0u8; 1];
    while first.last() != Some(&b'\n') {
        match pipe.read(&mut b) {
            Ok(1) => first.push(b[0]),
            other => panic!("the VMM's output ended early: {other:?} after {first:?}"),
        }
    }
    assert_eq!(first, b"hello from a confined guest\n");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    let nobody = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    assert_eq!(status_field(&status, "Uid:"), nobody, "{status}");
    assert_eq!(status_field(&status, "Gid:"), nobody, "{status}");
    assert_eq!(status_field(&status, "Groups:"), "", "{status}");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for (mount, leaf) in &cgroups.leaves {
        let rel = leaf.strip_prefix(mount).expect("under its mount");
        let rel = format!(":/{}", rel.display());
        assert!(
            cg.lines().any(|l| l.ends_with(&rel)),
            "{} in {cg}",
            leaf.display()
        );
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).expect("cgroup.procs");
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{pid} in {}: {procs}",
            leaf.display()
        );
    }
    let mut rest = String::new();
    pipe.read_to_string(&mut rest).expect("read the rest");
    let st = dog.wait();
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(rest.len(), CHATTY_DOTS + "\nbye\n".len());
    assert!(rest.ends_with("\nbye\n"));
    assert!(rest[..CHATTY_DOTS].bytes().all(|c| c == b'.'));
    drop(dog);
    // the VMM is gone: its cgroups are empty, and removed with `cgroups`
    for (_, leaf) in &cgroups.leaves {
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).expect("cgroup.procs");
        assert!(procs.trim().is_empty(), "{}: {procs}", leaf.display());
    }
    drop(cgroups);
}
