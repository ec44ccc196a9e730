//! A pod's VM: start, liveness, stop, and images attached at run time, over both engines
//! ([`Engine::Uml`]: a user-mode-Linux kernel process, [`crate::uml`]; [`Engine::Kvm`]: a
//! `unicri-vmm` process, [`crate::kvm`]).
//!
//! # The engine process
//! It outlives the daemon: it is started in a session (and process group) of its own, so a
//! daemon `kill -9` or its terminal going away does not reach it, inside the pod's network
//! namespace (`setns` in the child between fork and exec; the daemon's threads never change
//! namespace), in the given cgroups (the child writes `0` into every `cgroup.procs` before
//! exec, so the engine and everything it forks are charged there from the start), with stdin
//! `/dev/null` and stdout/stderr appended to `<dir>/console.log` (the guest console), and
//! `TMPDIR=/dev/shm` (UML's guest memory file). While the daemon lives, a small thread of it
//! waits for the child, so an engine that exits leaves no zombie; after a daemon restart the
//! engine is an orphan of init (or of the nearest subreaper), which reaps it.
//!
//! [`VmState`] is what the daemon persists: pid plus the process start time (field 22 of
//! `/proc/<pid>/stat`), so a recycled pid is never taken for the engine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{VmError, io_err};
use crate::{kvm, uml};

/// Which engine runs a pod's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// A user-mode-Linux kernel process (`linux` built by `scripts/build-guest-kernel uml`).
    Uml,
    /// A KVM microVM on `unicri-vmm`.
    Kvm,
}

impl Engine {
    /// `uml` or `kvm`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uml => "uml",
            Engine::Kvm => "kvm",
        }
    }
}

/// How to start a pod's VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The engine.
    pub engine: Engine,
    /// The pod id (names the UML instance; logged).
    pub pod_id: String,
    /// The per-pod state directory (console log, UML's instance dir, the control socket).
    /// Keep it short: unix socket paths under it must fit in 108 bytes.
    pub dir: PathBuf,
    /// The pod's pinned network namespace (the taps of [`crate::net::setup`] are in it).
    pub netns: PathBuf,
    /// Host `cgroup.procs` files to put the engine process into (one per v1 hierarchy, or one
    /// v2 file).
    pub cgroup_procs: Vec<PathBuf>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// vCPUs (UML: always 1).
    pub vcpus: u32,
    /// UML: the `linux` executable; KVM: the guest `vmlinux`.
    pub kernel: PathBuf,
    /// The initramfs ([`crate::initramfs::build`]).
    pub initramfs: PathBuf,
    /// The pod NIC: tap name and the guest NIC's MAC (eth0's).
    pub nic: Option<(String, String)>,
    /// The control link: tap name and the guest control NIC's MAC.
    pub ctl: (String, String),
    /// More kernel command line words.
    pub cmdline_extra: Vec<String>,
    /// KVM: the `unicri-vmm` binary.
    pub vmm_binary: PathBuf,
    /// KVM: how many empty drive slots to declare for images (UML: up to 15 at run time).
    pub image_slots: usize,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            engine: Engine::Uml,
            pod_id: String::new(),
            dir: PathBuf::new(),
            netns: PathBuf::new(),
            cgroup_procs: Vec::new(),
            mem_mib: 256,
            vcpus: 1,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            nic: None,
            ctl: (String::new(), String::new()),
            cmdline_extra: Vec::new(),
            vmm_binary: PathBuf::from("unicri-vmm"),
            image_slots: 8,
        }
    }
}

/// An image attached to a running VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// UML: the ubd unit; KVM: the index of the `img<N>` slot.
    pub slot: usize,
    /// The image file on the host.
    pub path: PathBuf,
    /// The block device in the guest (`/dev/ubdb`, `/dev/vda`).
    pub device: String,
}

/// A started VM, as the daemon persists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The engine.
    pub engine: Engine,
    /// The engine process (also its session and process group id).
    pub pid: i32,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// The per-pod state directory.
    pub dir: PathBuf,
    /// UML: the mconsole socket; KVM: unicri-vmm's control socket.
    pub control_socket: PathBuf,
    /// The guest console (engine stdout/stderr).
    pub console_log: PathBuf,
    /// UML: the instance id (`umid`).
    pub umid: String,
    /// KVM: how many image slots were declared.
    pub slots: usize,
    /// The images attached so far.
    pub drives: Vec<Drive>,
}

fn invalid(what: &'static str, value: impl Into<String>, reason: &str) -> VmError {
    VmError::InvalidArgument {
        what,
        value: value.into(),
        reason: reason.into(),
    }
}

/// Starts the VM: the engine process, detached (see the module docs). Returns once the
/// process runs (the guest boots on: wait for the agent with
/// [`crate::client::AgentClient::wait_ready`]).
pub fn start(cfg: &VmConfig) -> Result<VmState, VmError> {
    if cfg.pod_id.is_empty() {
        return Err(invalid("pod id", "", "empty"));
    }
    if cfg.ctl.0.is_empty() || cfg.ctl.1.is_empty() {
        return Err(invalid(
            "control link",
            format!("{:?}", cfg.ctl),
            "needs a tap and a MAC",
        ));
    }
    if cfg.mem_mib < 32 {
        return Err(invalid(
            "guest memory",
            cfg.mem_mib.to_string(),
            "at least 32 MiB",
        ));
    }
    std::fs::create_dir_all(&cfg.dir).map_err(io_err("create VM directory", &cfg.dir))?;
    let console_log = cfg.dir.join("console.log");
    let (argv, control_socket, umid, slots): (Vec<OsString>, PathBuf, String, usize) =
        match cfg.engine {
            Engine::Uml => {
                let umid = uml::umid(&cfg.pod_id);
                let sock = uml::mconsole_path(&cfg.dir, &umid);
                check_socket_path(&sock)?;
                // a stale instance directory (a VM killed hard) makes UML refuse the umid
                let _ = std::fs::remove_dir_all(cfg.dir.join(&umid));
                (uml::argv(cfg, &umid), sock, umid, uml::MAX_UBD - 1)
            }
            Engine::Kvm => {
                let sock = kvm::api_socket_path(&cfg.dir);
                check_socket_path(&sock)?;
                let _ = std::fs::remove_file(&sock);
                (kvm::argv(cfg, &sock), sock, String::new(), cfg.image_slots)
            }
        };
    let (pid, start_time) = spawn::detached(&argv, &cfg.netns, &cfg.cgroup_procs, &console_log)
        .map_err(|source| VmError::Spawn {
            engine: cfg.engine.name(),
            pod_id: cfg.pod_id.clone(),
            source,
        })?;
    tracing::info!(pod_id = %cfg.pod_id, engine = cfg.engine.name(), pid, "vm engine started");
    Ok(VmState {
        engine: cfg.engine,
        pid,
        start_time,
        dir: cfg.dir.clone(),
        control_socket,
        console_log,
        umid,
        slots,
        drives: Vec::new(),
    })
}

fn check_socket_path(p: &Path) -> Result<(), VmError> {
    if p.as_os_str().len() >= 100 {
        return Err(invalid(
            "VM directory",
            p.to_string_lossy(),
            "the control socket path under it is too long for a unix socket",
        ));
    }
    Ok(())
}

/// `/proc/<pid>/stat`: (state, session id, start time).
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command may hold spaces and parentheses: fields start after the last ')'
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); session is field 6, starttime field 22
    let state = f.first()?.chars().next()?;
    let session = f.get(3)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, session, start))
}

/// The start time of `pid` (`/proc/<pid>/stat` field 22), if it exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, _, t)| t)
}

/// Whether the engine process still runs (same pid and start time, not a zombie).
pub fn alive(state: &VmState) -> bool {
    matches!(proc_stat(state.pid), Some((s, _, t)) if t == state.start_time && s != 'Z' && s != 'X')
}

/// Every live process of the engine's session (the engine and what it forked: UML's
/// userspace processes), the engine first.
fn session_pids(state: &VmState) -> Vec<i32> {
    let mut pids = Vec::new();
    if !alive(state) && proc_stat(state.pid).is_some_and(|(_, _, t)| t != state.start_time) {
        // the pid is another process now; its session is not ours
        return pids;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((s, sid, _)) = proc_stat(pid)
            && sid == state.pid
            && s != 'Z'
            && s != 'X'
        {
            pids.push(pid);
        }
    }
    pids.sort_by_key(|p| (*p != state.pid, *p));
    pids
}

/// Resident set of the engine's main process, KiB (`VmRSS`).
pub fn rss_kib(state: &VmState) -> Option<u64> {
    if !alive(state) {
        return None;
    }
    status_kib(state.pid, "VmRSS:")
}

/// Resident set of every process of the engine's session, KiB (shared pages counted once
/// per process).
pub fn session_rss_kib(state: &VmState) -> u64 {
    session_pids(state)
        .iter()
        .filter_map(|p| status_kib(*p, "VmRSS:"))
        .sum()
}

fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Stops the VM: asks the engine to end (UML: mconsole `halt`; KVM: control `shutdown`;
/// SIGTERM if that fails), waits up to `grace`, then SIGKILLs every process of the engine's
/// session and waits until they are gone; removes the control socket / UML instance
/// directory. Idempotent: a VM already gone is fine. (Shutting the guest down cleanly through
/// the agent first is the caller's business.) Blocking.
pub fn stop(state: &VmState, grace: Duration) -> Result<(), VmError> {
    if alive(state) {
        let asked = match state.engine {
            Engine::Uml => {
                uml::mconsole(&state.control_socket, "halt", Duration::from_secs(1)).map(|_| ())
            }
            Engine::Kvm => kvm::api(
                &state.control_socket,
                &serde_json::json!({"op": "shutdown"}),
            )
            .map(|_| ()),
        };
        if let Err(e) = asked {
            tracing::debug!(error = %e, pid = state.pid, "graceful stop refused; SIGTERM");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(state.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        wait_gone(state, grace);
    }
    // the engine's helpers (UML's userspace processes) go too, however the engine ended
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = session_pids(state);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(VmError::StopTimeout {
                pid: state.pid,
                waited_ms: 5000,
            });
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match state.engine {
        Engine::Uml if !state.umid.is_empty() => {
            let d = state.dir.join(&state.umid);
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove UML instance directory", d)(e)),
            }
        }
        _ => {
            let _ = std::fs::remove_file(&state.control_socket);
        }
    }
    tracing::info!(pid = state.pid, dir = %state.dir.display(), "vm engine stopped");
    Ok(())
}

fn wait_gone(state: &VmState, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(state) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Attaches the image file `path` read-only to the running VM and records it in `state`;
/// returns the guest block device (`/dev/ubdb`…, `/dev/vda`…). Attaching a path already
/// attached returns its device. Blocking (one round trip to the engine).
pub fn attach_image(state: &mut VmState, path: &Path) -> Result<String, VmError> {
    if let Some(d) = state.drives.iter().find(|d| d.path == path) {
        return Ok(d.device.clone());
    }
    if !alive(state) {
        return Err(VmError::NotRunning {
            pid: state.pid,
            dir: state.dir.clone(),
        });
    }
    let first = match state.engine {
        Engine::Uml => 1,
        Engine::Kvm => 0,
    };
    let slot = (first..first + state.slots)
        .find(|s| !state.drives.iter().any(|d| d.slot == *s))
        .ok_or_else(|| VmError::NoFreeSlot {
            dir: state.dir.clone(),
            slots: state.slots,
        })?;
    let device = match state.engine {
        Engine::Uml => uml::attach(&state.control_socket, slot, path)?,
        Engine::Kvm => kvm::attach(&state.control_socket, slot, path)?,
    };
    state.drives.push(Drive {
        slot,
        path: path.to_path_buf(),
        device: device.clone(),
    });
    Ok(device)
}

/// Detaches the image `path` (the guest must have unmounted it: UML refuses a busy device).
/// Not attached is fine.
pub fn detach_image(state: &mut VmState, path: &Path) -> Result<(), VmError> {
    let Some(i) = state.drives.iter().position(|d| d.path == path) else {
        return Ok(());
    };
    let slot = state.drives[i].slot;
    if alive(state) {
        match state.engine {
            Engine::Uml => uml::detach(&state.control_socket, slot)?,
            Engine::Kvm => kvm::detach(&state.control_socket, slot)?,
        }
    }
    state.drives.remove(i);
    Ok(())
}

/// Spawning the engine detached: the only `unsafe` of the crate (`pre_exec`).
#[allow(unsafe_code)]
mod spawn {
    use std::ffi::OsString;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// Starts `argv` in its own session, in the netns pinned at `netns`, in the cgroups of
    /// `cgroup_procs`, stdio to `console`; returns its pid and start time.
    pub(super) fn detached(
        argv: &[OsString],
        netns: &Path,
        cgroup_procs: &[PathBuf],
        console: &Path,
    ) -> std::io::Result<(i32, u64)> {
        let Some((prog, args)) = argv.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command line",
            ));
        };
        let ctx = |what: String| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let ns = File::open(netns).map_err(ctx(format!("open netns {}", netns.display())))?;
        let cgroups: Vec<File> = cgroup_procs
            .iter()
            .map(|p| {
                File::options()
                    .write(true)
                    .open(p)
                    .map_err(ctx(format!("open {}", p.display())))
            })
            .collect::<Result<_, _>>()?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(console)
            .map_err(ctx(format!("open {}", console.display())))?;
        let log2 = log.try_clone()?;
        let ns_fd = ns.as_raw_fd();
        let cg_fds: Vec<i32> = cgroups.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env("TMPDIR", "/dev/shm")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir("/");
        // SAFETY: the closure runs in the forked child before exec and only makes raw
        // syscalls (setsid, setns, write) on fds the parent keeps open until `spawn` returns
        // (`ns`, `cgroups` live to the end of this function); it allocates nothing and takes
        // no lock, so it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(ns_fd, libc::CLONE_NEWNET) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in &cg_fds {
                    // "0": the writing process itself
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(ns);
        drop(cgroups);
        let pid = child.id() as i32;
        let start = super::process_start_time(pid).ok_or_else(|| {
            std::io::Error::other(format!("engine process {pid} vanished right after start"))
        })?;
        // reap it when it ends, so no zombie stays while the daemon lives
        let reaper = std::thread::Builder::new()
            .name(format!("vm-reap-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!(error = %e, pid, "no reaper thread for the vm engine");
        }
        Ok((pid, start))
    }
}
