//! `unicri-bench vm`: pods of the `vm` runtime handler (issue 6), each behind a kernel of its
//! own, over CRI only, on the engine that runs here (`uml`: a user-mode-Linux kernel process
//! per pod).
//!
//! One unicri daemon on a private root with `[runtimes.vm] backend = "vm"`, a guest memory
//! size (default 128 MiB) and the engine; the CNI conflist of `unicri-bench pods`; a busybox
//! image imported through `unicri image import` (as the e2e fixtures do). Phases:
//! 1. serial RunPodSandbox (→ the guest agent answered and the pod is set up), each pod removed
//!    after; where the time goes, from the daemon's log and the guest console's timestamps
//!    (the guest's wall clock is the host's);
//! 2. serial RunPodSandbox + CreateContainer + StartContainer of busybox `sleep`;
//! 3. N RunPodSandbox at once;
//! 4. idle pods (one sleeping container each) started in batches: at N of them the engines'
//!    PSS split into guest RAM and the rest, and the daemon's PSS;
//! 5. more batches until a pod cap or a MemAvailable floor: MemAvailable per pod, and the
//!    capacity that extrapolates to.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::task::JoinSet;
use unicri_e2e::oci::{Compression, ImageBuilder, busybox_layer};
use unicri_proto::v1;

use crate::cri::Cri;
use crate::pods::{self, Net};
use crate::procs;
use crate::report::{self, Meta};
use crate::runtimes::{Daemon, Extras, Kind};

/// The runtime handler under test.
const HANDLER: &str = "vm";
/// The image reference the busybox image is imported as.
const IMAGE: &str = "docker.io/bench/busybox:vm";
/// Issue goal: a `uml` pod ready (RunPodSandbox → agent ready) within 500 ms, p50.
const GOAL_READY_MS: f64 = 500.0;
/// Published pod start figures of other VM-isolated runtimes (not measured here).
const PUBLISHED: [(&str, &str); 2] = [("Kuasar", "300–360 ms"), ("Kata Containers", "850–950 ms")];

/// Options of `unicri-bench vm`.
#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Measured serial RunPodSandbox calls (phase 1).
    #[arg(long, default_value_t = 25)]
    pub sandboxes: usize,
    /// Measured serial pod + container starts (phase 2).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Unmeasured pod (+ container) starts before phases 1 and 2 (the first builds the
    /// initramfs and the image's EROFS file).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Pods started at once (phase 3).
    #[arg(long, default_value_t = 20)]
    pub parallel: usize,
    /// Rounds of the parallel phase.
    #[arg(long, default_value_t = 2)]
    pub parallel_rounds: usize,
    /// Idle pods at which the engines' memory is broken down (phase 4; 0: skip).
    #[arg(long, default_value_t = 10)]
    pub mem_pods: usize,
    /// Most idle pods of the capacity phase (phase 5; 0: stop at --mem-pods).
    #[arg(long, default_value_t = 60)]
    pub max_pods: usize,
    /// Pods (+ containers) started at once per batch of phases 4 and 5.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Stop adding pods when MemAvailable would drop below this (MiB).
    #[arg(long, default_value_t = 2048)]
    pub min_available_mib: u64,
    /// Guest RAM of pods without a memory limit (`[runtimes.vm] mem_mib`).
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u64,
    /// The engine (`[runtimes.vm] engine`).
    #[arg(long, default_value = "uml")]
    pub engine: String,
    /// unicri binary [default: the newer of target/release/unicri and target/debug/unicri]
    #[arg(long)]
    pub unicri_bin: Option<PathBuf>,
    /// The guest agent [default: `unicri-vm-agent` next to the unicri binary].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// `UNICRI_LOG` of the daemon (the split of phase 1 needs the CNI plugin lines at debug).
    #[arg(long, default_value = "info,unicri_network_cni=debug")]
    pub unicri_log: String,
    /// Directory of the CNI plugins (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "BENCHMARKS-vm.md")]
    pub out: PathBuf,
    /// Parent of the temporary work dir (daemon root, state, logs).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work dir (logs, roots) after the run.
    #[arg(long)]
    pub keep: bool,
}

/// The newer of the release and debug unicri builds (a stale release build may predate the
/// `vm` handler).
fn default_unicri_bin() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let target = target.canonicalize().unwrap_or(target);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let (rel, dbg) = (target.join("release/unicri"), target.join("debug/unicri"));
    match (mtime(&rel), mtime(&dbg)) {
        (Some(r), Some(d)) if r > d => rel,
        (Some(_), None) => rel,
        _ => dbg,
    }
}

// ---------------------------------------------------------------------------------------------
// statistics

/// Nearest-rank percentile of `v` (any order), `p` in 0..=1.
fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let r = (p * s.len() as f64).ceil() as usize;
    Some(s[r.clamp(1, s.len()) - 1])
}

/// `n=… min … / p50 **…** / p99 … / max … / mean … ms`.
fn dist_line(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "n={} min {min:.1} / p50 **{:.1}** / p99 {:.1} / max {max:.1} / mean {mean:.1} ms",
        v.len(),
        pct(v, 0.5).unwrap_or(0.0),
        pct(v, 0.99).unwrap_or(0.0)
    )
}

fn raw(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// log timestamps

/// Seconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn parse_ts(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Howard Hinnant's days_from_civil
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// Removes ANSI colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The timestamp leading a log line, and the line.
fn stamped(line: &str) -> Option<(f64, &str)> {
    let first = line.split_whitespace().next()?;
    parse_ts(first).map(|t| (t, line))
}

/// The value of `key=` in a tracing line (up to the next space; quotes removed).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split_whitespace()
        .next()
        .map(|v| v.trim_matches('"'))
}

/// Daemon-side marks of one RunPodSandbox (epoch seconds).
#[derive(Clone, Debug, Default)]
struct DaemonMarks {
    rpc_start: Option<f64>,
    linux_created: Option<f64>,
    cni_done: Option<f64>,
    engine_started: Option<f64>,
    ready: Option<f64>,
    elapsed_ms: Option<f64>,
}

/// The marks of every vm pod in a daemon log (`pod_id` → marks). CNI lines carry no pod id:
/// the last `portmap ADD` between a pod's creation and its engine start is taken (right for
/// serial starts only).
fn daemon_marks(log: &str) -> HashMap<String, DaemonMarks> {
    let mut out: HashMap<String, DaemonMarks> = HashMap::new();
    let mut last_cni: Option<f64> = None;
    let mut last_ready: Option<String> = None;
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let Some((t, l)) = stamped(&line) else {
            continue;
        };
        if l.contains("linux pod created")
            && let Some(dir) = field(l, "pod_dir")
            && let Some(id) = dir.rsplit('/').next()
        {
            out.entry(id.to_string()).or_default().linux_created = Some(t);
        } else if l.contains("cni plugin succeeded") && l.contains("command=\"ADD\"") {
            last_cni = Some(t);
        } else if l.contains("vm engine started")
            && let Some(id) = field(l, "pod_id")
        {
            let m = out.entry(id.to_string()).or_default();
            m.engine_started = Some(t);
            m.cni_done = last_cni.filter(|c| m.linux_created.is_some_and(|lc| *c >= lc));
        } else if l.contains("pod sandbox ready")
            && l.contains("handler=vm")
            && let Some(id) = field(l, "pod_id")
        {
            out.entry(id.to_string()).or_default().ready = Some(t);
            last_ready = Some(id.to_string());
        } else if l.contains("rpc=\"RunPodSandbox\"")
            && let Some(e) = field(l, "elapsed_ms").and_then(|v| v.parse::<f64>().ok())
            && let Some(id) = last_ready.take()
        {
            let m = out.entry(id).or_default();
            m.elapsed_ms = Some(e);
            m.rpc_start = m.ready.map(|r| r - e / 1e3);
        }
    }
    out
}

/// Guest-side marks of one pod from its console (epoch seconds; the guest's wall clock is the
/// host's).
#[derive(Clone, Debug, Default)]
struct GuestMarks {
    /// The guest's clock zero: the agent's start time minus its `uptime_s`.
    kernel_zero: Option<f64>,
    agent_start: Option<f64>,
    agent_serving: Option<f64>,
    keeper_serving: Option<f64>,
    setup: Option<f64>,
}

fn guest_marks(console: &str) -> GuestMarks {
    let mut g = GuestMarks::default();
    for raw in console.lines() {
        let line = strip_ansi(raw);
        let Some((t, l)) = stamped(&line) else {
            continue;
        };
        if l.contains("agent starting") && g.agent_start.is_none() {
            g.agent_start = Some(t);
            g.kernel_zero = field(l, "uptime_s")
                .and_then(|u| u.parse::<f64>().ok())
                .map(|u| t - u);
        } else if l.contains("agent serving") && g.agent_serving.is_none() {
            g.agent_serving = Some(t);
        } else if l.contains("keeper serving") && g.keeper_serving.is_none() {
            g.keeper_serving = Some(t);
        } else if l.contains("setup pod_id=") && g.setup.is_none() {
            g.setup = Some(t);
        }
    }
    g
}

/// The segments of phase 1's split, in order.
const SEGMENTS: [&str; 9] = [
    "client → daemon and back (gRPC, outside the daemon's own timing)",
    "RPC start → linux pod made (name reservation, pod dirs, cgroup, netns)",
    "linux pod made → CNI ADD done (loopback, bridge, portmap)",
    "CNI done → engine spawned (initramfs cache check, taps + tc, fork/exec)",
    "engine spawned → guest clock zero (UML host-side start before the kernel's clock)",
    "guest clock zero → agent (/init) running (kernel boot, initramfs unpack)",
    "agent running → agent serving (mounts, cgroups, control link)",
    "agent serving → Setup request arrived (daemon's health polling)",
    "Setup arrived → RunPodSandbox done (pod set-up in the guest, records)",
];

/// Splits one pod start into [`SEGMENTS`] (ms); `None` when a mark is missing.
fn split(client_ms: f64, d: &DaemonMarks, g: &GuestMarks) -> Option<[f64; 9]> {
    let ms = |a: Option<f64>, b: Option<f64>| Some((b? - a?) * 1e3);
    Some([
        client_ms - d.elapsed_ms?,
        ms(d.rpc_start, d.linux_created)?,
        ms(d.linux_created, d.cni_done)?,
        ms(d.cni_done, d.engine_started)?,
        ms(d.engine_started, g.kernel_zero)?,
        ms(g.kernel_zero, g.agent_start)?,
        ms(g.agent_start, g.agent_serving)?,
        ms(g.agent_serving, g.setup)?,
        ms(g.setup, d.ready)?,
    ])
}

// ---------------------------------------------------------------------------------------------
// engine processes and memory

/// `/proc/<pid>/stat`: (ppid, session).
fn stat_of(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every live process of session `sid`.
fn session(sid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| stat_of(*p).is_some_and(|(_, s)| s == sid))
        .collect()
}

/// Engine processes (their session leaders) whose command line points into `vm_state`
/// (`uml_dir=<state>/vm/<pod>`).
fn engines_under(vm_state: &Path) -> Vec<i32> {
    let needle = format!("uml_dir={}/", vm_state.display());
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| String::from_utf8_lossy(a).starts_with(&needle))
            }) && stat_of(*p).is_some_and(|(_, s)| s == *p)
        })
        .collect()
}

/// A pod's engine pid from the record the daemon keeps next to it.
fn engine_pid(vm_state: &Path, pod: &str) -> Option<i32> {
    let dir = vm_state.join(pod.get(..16).unwrap_or(pod));
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("record.json")).ok()?).ok()?;
    rec.get("engine")?.get("pid")?.as_i64().map(|p| p as i32)
}

fn status_kib(pid: i32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Host memory of one pod's engine session (KiB).
#[derive(Clone, Debug, Default)]
struct EngineMem {
    /// Processes of the session, and distinct address spaces among them.
    processes: usize,
    address_spaces: usize,
    /// PSS of the guest RAM file's mappings (summed over the distinct address spaces).
    guest_pss: u64,
    /// Pages the guest RAM file (tmpfs) holds: the guest memory touched so far.
    guest_file: u64,
    /// PSS of everything else: the kernel binary's pages, libc, heap, stacks.
    other_pss: u64,
    /// of which the UML kernel binary's mappings.
    other_binary: u64,
    /// of which anonymous (heap, stacks, unnamed).
    other_anon: u64,
    /// Page tables of the distinct address spaces (`VmPTE`; not part of PSS).
    pte: u64,
}

impl EngineMem {
    fn add(&mut self, o: &EngineMem) {
        self.processes += o.processes;
        self.address_spaces += o.address_spaces;
        self.guest_pss += o.guest_pss;
        self.guest_file += o.guest_file;
        self.other_pss += o.other_pss;
        self.other_binary += o.other_binary;
        self.other_anon += o.other_anon;
        self.pte += o.pte;
    }
}

/// The guest RAM file of an engine: a tmpfs file (UML makes it under `TMPDIR`, `/dev/shm`, and
/// unlinks it) it holds open: (its name in `/proc/<pid>/maps`, allocated KiB).
fn guest_ram_file(pid: i32) -> Option<(String, u64)> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut best: Option<(String, u64)> = None;
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy().into_owned();
        if !(t.starts_with("/dev/shm/") || t.starts_with("/tmp/")) || !t.ends_with("(deleted)") {
            continue;
        }
        let Ok(md) = std::fs::metadata(e.path()) else {
            continue;
        };
        let kib = md.blocks() / 2;
        if best.as_ref().is_none_or(|(_, k)| md.size() / 1024 > *k) {
            best = Some((t, kib));
        }
    }
    best
}

/// Splits the PSS of one engine session (leader `pid`).
fn engine_mem(pid: i32) -> Option<EngineMem> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()?
        .to_string_lossy()
        .into_owned();
    let (ram_name, ram_kib) = guest_ram_file(pid)?;
    let mut m = EngineMem {
        guest_file: ram_kib,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    for p in session(pid) {
        m.processes += 1;
        // processes made with CLONE_VM (UML's helper threads) share the leader's address
        // space: /proc shows it once per process, so count each distinct one once
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{p}/maps")) else {
            continue;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        maps.hash(&mut h);
        if !seen.insert(h.finish()) {
            continue;
        }
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{p}/smaps")) else {
            continue;
        };
        m.address_spaces += 1;
        m.pte += status_kib(p, "VmPTE:").unwrap_or(0);
        let mut name = String::new();
        for l in smaps.lines() {
            let mut it = l.split_whitespace();
            let Some(first) = it.next() else { continue };
            if !first.ends_with(':') {
                // a mapping's header: range perms offset dev inode [path]
                name = it.skip(4).collect::<Vec<_>>().join(" ");
                continue;
            }
            if first != "Pss:" {
                continue;
            }
            let kib: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if name == ram_name {
                m.guest_pss += kib;
            } else {
                m.other_pss += kib;
                if name == exe {
                    m.other_binary += kib;
                } else if name.is_empty() || name.starts_with('[') {
                    m.other_anon += kib;
                }
            }
        }
    }
    Some(m)
}

fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A memory snapshot with `pods` idle pods up.
#[derive(Clone, Debug, Default)]
struct MemSnap {
    pods: usize,
    engines: usize,
    total: EngineMem,
    per_pod: Vec<EngineMem>,
    daemon_pss: u64,
    /// PSS of the daemon's other descendants outside the engine sessions (host keepers, …).
    others_pss: u64,
    others: usize,
    mem_available: u64,
}

fn snapshot(env: &Env, pods: &[String]) -> MemSnap {
    let mut s = MemSnap {
        pods: pods.len(),
        mem_available: mem_available_kib().unwrap_or(0),
        ..Default::default()
    };
    let dpid = env.daemon.as_ref().and_then(Daemon::pid);
    s.daemon_pss = dpid.and_then(procs::pss_kib).map_or(0, |p| p.0);
    let mut sessions = HashSet::new();
    for p in pods {
        if let Some(pid) = engine_pid(&env.vm_state, p)
            && let Some(m) = engine_mem(pid)
        {
            sessions.insert(pid);
            s.engines += 1;
            s.total.add(&m);
            s.per_pod.push(m);
        }
    }
    if let Some(d) = dpid {
        let ps = procs::snapshot();
        for p in procs::with_descendants(&ps, &[d]) {
            if p == d || stat_of(p).is_some_and(|(_, sid)| sessions.contains(&sid)) {
                continue;
            }
            if let Some((pss, _, _)) = procs::pss_kib(p) {
                s.others += 1;
                s.others_pss += pss;
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// environment

/// Everything started, for cleanup on any exit path.
#[derive(Default)]
struct Env {
    daemon: Option<Daemon>,
    net: Option<Net>,
    /// `<state>/vm` of the daemon.
    vm_state: PathBuf,
    logs: PathBuf,
    /// The daemon's copy of the guest agent.
    agent: PathBuf,
    /// Every pod and container id made.
    ids: HashSet<String>,
}

impl Env {
    fn cri(&self) -> Result<Cri> {
        self.daemon
            .as_ref()
            .map(|d| d.cri.clone())
            .ok_or_else(|| anyhow!("no daemon"))
    }

    /// Removes every pod, kills engines left under the daemon's state, stops the daemon and
    /// deletes the bridge.
    async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(d) = &self.daemon {
            match remove_all(&d.cri).await {
                Ok(0) => {}
                Ok(n) => notes.push(format!("removed {n} leftover pod(s)")),
                Err(e) => notes.push(format!("removing pods failed: {e:#}")),
            }
        }
        for pid in engines_under(&self.vm_state) {
            for p in session(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            notes.push(format!("killed leftover engine session {pid}"));
        }
        if let Some(d) = self.daemon.take() {
            notes.extend(d.stop().await);
        }
        if let Some(n) = self.net.take()
            && Path::new("/sys/class/net").join(&n.bridge).exists()
        {
            let ok = std::process::Command::new("ip")
                .args(["link", "del", &n.bridge])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                notes.push(format!("could not delete bridge {}", n.bridge));
            }
        }
        notes
    }
}

/// Removes every pod (10 at a time); returns how many there were.
async fn remove_all(cri: &Cri) -> Result<usize> {
    let pods = cri.list_pods().await?;
    for chunk in pods.chunks(10) {
        let mut set = JoinSet::new();
        for p in chunk {
            let (cri, p) = (cri.clone(), p.clone());
            set.spawn(async move { remove_pod(&cri, &p).await });
        }
        while let Some(j) = set.join_next().await {
            j??;
        }
    }
    let left = cri.list_pods().await?;
    let ctrs = cri.list_containers().await?;
    ensure!(
        left.is_empty() && ctrs.is_empty(),
        "after removing every pod, ListPodSandbox still lists {left:?} and ListContainers {ctrs:?}"
    );
    Ok(pods.len())
}

async fn remove_pod(cri: &Cri, id: &str) -> Result<()> {
    cri.stop_pod(id).await?;
    cri.remove_pod(id).await
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Kubelet's part before RunPodSandbox (untimed): a unique name, the log directory.
fn prepare(logs: &Path, prefix: &str) -> Result<v1::PodSandboxConfig> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}-{n}");
    let uid = format!("{:08x}-{n:06}", std::process::id());
    let cfg = pods::pod_config(logs, &name, &uid);
    std::fs::create_dir_all(&cfg.log_directory)?;
    Ok(cfg)
}

/// One pod (+ container) start: the pod id, the container id, the times of each call.
#[derive(Clone, Debug, Default)]
struct Start {
    pod: String,
    container: Option<String>,
    run_pod: Duration,
    create: Duration,
    start: Duration,
    total: Duration,
}

async fn start_one(cri: &Cri, cfg: v1::PodSandboxConfig, container: bool) -> Result<Start> {
    let ccfg = pods::container_config(IMAGE, &cfg);
    let t0 = Instant::now();
    let pod = cri.run_pod_with(cfg.clone(), HANDLER).await?;
    let run_pod = t0.elapsed();
    let mut s = Start {
        pod,
        run_pod,
        total: run_pod,
        ..Default::default()
    };
    if container {
        let c = match cri.create_container(&s.pod, ccfg, cfg).await {
            Ok(c) => c,
            Err(e) => {
                let _ = remove_pod(cri, &s.pod).await;
                return Err(e);
            }
        };
        s.create = t0.elapsed() - run_pod;
        cri.start_container(&c).await?;
        s.total = t0.elapsed();
        s.start = s.total - run_pod - s.create;
        s.container = Some(c);
    }
    Ok(s)
}

/// Checks a pod is READY with an address of the bench's subnet, and its container RUNNING.
async fn check(cri: &Cri, net: &Net, s: &Start) -> Result<()> {
    let (ready, ip) = cri.pod_status(&s.pod).await?;
    ensure!(ready, "pod {} is not READY", s.pod);
    ensure!(
        ip.starts_with(&format!("{}.", net.subnet)),
        "pod {} has IP {ip:?}, not one of {}.0/24",
        s.pod,
        net.subnet
    );
    if let Some(c) = &s.container {
        let st = cri.container_status(c).await?;
        ensure!(
            st.state == v1::ContainerState::ContainerRunning as i32,
            "container {c} is {:?}, not RUNNING",
            v1::ContainerState::try_from(st.state)
        );
    }
    Ok(())
}

/// Starts `cfgs` at once; returns the starts (in completion order) and the wall time.
async fn start_many(
    cri: &Cri,
    cfgs: Vec<v1::PodSandboxConfig>,
    container: bool,
) -> (Vec<Start>, Vec<String>, Duration) {
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for cfg in cfgs {
        let cri = cri.clone();
        set.spawn(async move { (start_one(&cri, cfg, container).await, Instant::now()) });
    }
    let (mut ok, mut errors, mut last) = (Vec::new(), Vec::new(), t0);
    while let Some(j) = set.join_next().await {
        match j {
            Ok((Ok(s), end)) => {
                last = last.max(end);
                ok.push(s);
            }
            Ok((Err(e), end)) => {
                last = last.max(end);
                errors.push(format!("{e:#}"));
            }
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    (ok, errors, last - t0)
}

// ---------------------------------------------------------------------------------------------
// results

#[derive(Debug, Default)]
struct Results {
    warm_ready: Vec<f64>,
    ready: Vec<f64>,
    ready_server: Vec<f64>,
    splits: Vec<[f64; 9]>,
    split_missing: usize,
    teardown_pod: Vec<f64>,
    pod_ctr: Vec<f64>,
    pod_ctr_parts: Vec<(f64, f64, f64)>,
    teardown_pod_ctr: Vec<f64>,
    par_wall: Vec<f64>,
    par_each: Vec<f64>,
    par_cpu: Vec<f64>,
    par_teardown: Vec<f64>,
    /// Phases 4 + 5.
    mem0: Option<MemSnap>,
    mem_n: Option<MemSnap>,
    mem_last: Option<MemSnap>,
    /// (pods after the batch, per-pod start ms of the batch, batch wall s, MemAvailable KiB).
    batches: Vec<(usize, Vec<f64>, f64, u64)>,
    stop_reason: String,
    /// Busy CPU seconds per second of the whole machine with the most pods idle, and with none.
    idle_cpu: Option<(f64, f64)>,
    capacity_teardown: Option<f64>,
    findings: Vec<String>,
    console_sample: String,
    /// Agent serving → keeper serving in the guest (ms), serial pods.
    keeper_after_agent: Vec<f64>,
    /// `initramfs::build` on a cache hit, called directly (ms).
    initramfs_hit: Vec<f64>,
    /// The guest agent's size and its initramfs's size (bytes).
    agent_bytes: u64,
    initramfs_bytes: u64,
}

pub async fn run(args: VmArgs) -> Result<()> {
    ensure!(
        args.sandboxes > 0 && args.rounds > 0 && args.parallel > 0 && args.batch > 0,
        "--sandboxes, --rounds, --parallel and --batch must be at least 1"
    );
    ensure!(
        nix::unistd::geteuid().is_root(),
        "run as root (pods need namespaces, cgroups, taps and CNI)"
    );
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        ensure!(
            args.cni_bin_dir.join(p).exists(),
            "CNI plugin {} missing (apt-get install -y containernetworking-plugins)",
            args.cni_bin_dir.join(p).display()
        );
    }
    let parent = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("unicri-bench-vm-")
        .tempdir_in(&parent)?;
    eprintln!("work dir {}", work.path().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut env = Env::default();
    let mut res = Results::default();
    let outcome = tokio::select! {
        r = body(&args, work.path(), &mut env, &mut res) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    let ids = env.ids.clone();
    let mut notes = env.stop().await;
    let cg = pods::cgroups_named_after(&ids);
    if !cg.is_empty() {
        notes.push(format!(
            "cgroups named after its pods/containers left: {cg:?}"
        ));
    }
    let umls = engines_under(&env.vm_state);
    if !umls.is_empty() {
        notes.push(format!("engine processes still running: {umls:?}"));
    }
    for n in &notes {
        eprintln!("  cleanup: {n}");
    }
    if !notes.is_empty()
        && let Ok(md) = outcome.as_ref()
    {
        let mut md = md.clone();
        md.push_str("\nAt the final cleanup (after the report's checks):\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
        std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
        eprintln!("rewrote {} with the cleanup notes", args.out.display());
    }
    if args.keep {
        eprintln!("work dir kept: {}", work.keep().display());
    } else if outcome.is_err() {
        let _ = std::fs::remove_dir_all(work.path().join("unicri").join("root"));
        eprintln!("work dir kept (logs): {}", work.keep().display());
    }
    outcome.map(|_| ())
}

/// Imports the busybox image (default command `sh`) through `unicri image import`.
fn import_busybox(bin: &Path, socket: &Path, work: &Path) -> Result<()> {
    let img = ImageBuilder::new()
        .layer(busybox_layer()?.build(Compression::Gzip)?)
        .env(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"])
        .build()?;
    let dir = work.join("image");
    img.write_oci_layout(&dir, IMAGE)?;
    let out = std::process::Command::new(bin)
        .arg("--address")
        .arg(socket)
        .args(["image", "import"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .context("run unicri image import")?;
    ensure!(
        out.status.success(),
        "image import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn body(args: &VmArgs, work: &Path, env: &mut Env, res: &mut Results) -> Result<String> {
    let started = report::utc_now();
    let load_before = report::loadavg();
    let src = args.unicri_bin.clone().unwrap_or_else(default_unicri_bin);
    let agent_src = args
        .agent_bin
        .clone()
        .unwrap_or_else(|| src.with_file_name("unicri-vm-agent"));
    ensure!(src.exists(), "unicri binary {} not found", src.display());
    ensure!(
        agent_src.exists(),
        "guest agent {} not found (cargo build -p unicri-vm-agent)",
        agent_src.display()
    );
    // private copies: a rebuild of target/ during the run cannot swap them
    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let bin = bin_dir.join("unicri");
    std::fs::copy(&src, &bin).with_context(|| format!("copy {}", src.display()))?;
    env.agent = bin_dir.join("unicri-vm-agent");
    std::fs::copy(&agent_src, &env.agent)
        .with_context(|| format!("copy {}", agent_src.display()))?;

    let net = Net::new(Kind::Unicri, work)?;
    let hosts = work.join("hosts.d");
    std::fs::create_dir_all(&hosts)?;
    let extras = Extras {
        cni: Some((net.conf_dir.clone(), args.cni_bin_dir.clone())),
        sandbox_image: None,
        env: vec![("UNICRI_LOG".into(), args.unicri_log.clone())],
        config: format!(
            "\n[runtimes.{HANDLER}]\nbackend = \"vm\"\nengine = \"{}\"\nmem_mib = {}\n",
            args.engine, args.mem_mib
        ),
    };
    env.net = Some(net.clone());
    eprintln!("starting unicri ({})", src.display());
    let mut d = Daemon::start_with(Kind::Unicri, &bin, work, &hosts, &extras).await?;
    d.bin_version = d.bin_version.replace(
        &format!("({})", bin.display()),
        &format!("({}, run from a copy)", src.display()),
    );
    env.vm_state = d.state.join("vm");
    env.logs = work.join("logs");
    let socket = d.socket.clone();
    let config_text = std::fs::read_to_string(d.config_path()).unwrap_or_default();
    let bin_version = d.bin_version.clone();
    let cri_version = d.cri_version.clone();
    env.daemon = Some(d);
    let cri = env.cri()?;
    let mut ready = (false, false, String::new());
    for _ in 0..100 {
        ready = cri.ready().await?;
        if ready.0 && ready.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(ready.0 && ready.1, "unicri is not ready: {}", ready.2);
    import_busybox(&bin, &socket, work)?;
    eprintln!("imported {IMAGE}");

    phase1(args, env, res).await?;
    phase2(args, env, res).await?;
    phase3(args, env, res).await?;
    if args.mem_pods > 0 {
        capacity(args, env, res).await?;
    }

    // leak checks
    let cri = env.cri()?;
    let n = remove_all(&cri).await?;
    if n != 0 {
        res.findings.push(format!("{n} pod(s) listed at the end"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = engines_under(&env.vm_state);
    if !left.is_empty() {
        res.findings
            .push(format!("engine processes left after removal: {left:?}"));
    }
    if net.veths() != 0 {
        res.findings.push(format!(
            "{} interface(s) still on bridge {}",
            net.veths(),
            net.bridge
        ));
    }
    let ips = net.reserved_ips();
    if !ips.is_empty() {
        res.findings
            .push(format!("host-local still reserves {ips:?}"));
    }
    let pod_dirs: Vec<String> = std::fs::read_dir(&env.vm_state)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "log-offsets")
                .collect()
        })
        .unwrap_or_default();
    if !pod_dirs.is_empty() {
        res.findings
            .push(format!("per-pod engine dirs left: {pod_dirs:?}"));
    }
    let cg = pods::cgroups_named_after(&env.ids);
    if !cg.is_empty() {
        res.findings.push(format!("cgroups left: {cg:?}"));
    }

    let mut meta = Meta::collect((args.rounds, args.warmup, 0), &[], started, load_before);
    meta.versions = vec![("unicri".into(), bin_version, cri_version)];
    let kernel = newest_uml_kernel();
    let md = markdown(args, &meta, res, &config_text, &net, &kernel, &agent_src);
    println!("{}", summary_table(args, res));
    for f in &res.findings {
        eprintln!("  finding: {f}");
    }
    std::fs::write(&args.out, &md).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(md)
}

fn newest_uml_kernel() -> String {
    std::fs::read_dir("/var/cache/unicri/uml-kernel")
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .map(|e| e.path().join("linux"))
                .filter(|p| p.is_file())
                .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        })
        .map(|p| {
            let size = p.metadata().map(|m| m.len()).unwrap_or(0);
            format!("`{}` ({:.1} MB)", p.display(), size as f64 / 1e6)
        })
        .unwrap_or_else(|| "(none found)".into())
}

/// Phase 1: serial RunPodSandbox, each pod removed after; the split of each.
async fn phase1(args: &VmArgs, env: &mut Env, res: &mut Results) -> Result<()> {
    let cri = env.cri()?;
    let net = env.net.clone().ok_or_else(|| anyhow!("no net"))?;
    eprintln!(
        "phase 1: {} + {} serial RunPodSandbox",
        args.warmup, args.sandboxes
    );
    let mut consoles: Vec<(String, f64, String)> = Vec::new();
    for i in 0..args.warmup + args.sandboxes {
        let cfg = prepare(&env.logs, "sb")?;
        let s = start_one(&cri, cfg, false).await?;
        env.ids.insert(s.pod.clone());
        // the console goes with the pod: read it now
        let console = std::fs::read_to_string(
            env.vm_state
                .join(s.pod.get(..16).unwrap_or(&s.pod))
                .join("console.log"),
        )
        .unwrap_or_default();
        check(&cri, &net, &s).await?;
        let t = Instant::now();
        remove_pod(&cri, &s.pod).await?;
        let ms = s.run_pod.as_secs_f64() * 1e3;
        if i < args.warmup {
            res.warm_ready.push(ms);
        } else {
            res.ready.push(ms);
            res.teardown_pod.push(t.elapsed().as_secs_f64() * 1e3);
            consoles.push((s.pod.clone(), ms, console));
        }
        eprintln!("  sandbox {i}: {ms:.1} ms");
    }
    let log =
        std::fs::read_to_string(&env.daemon.as_ref().ok_or_else(|| anyhow!("no daemon"))?.log)
            .unwrap_or_default();
    let marks = daemon_marks(&log);
    for (pod, ms, console) in &consoles {
        let d = marks.get(pod).cloned().unwrap_or_default();
        if let Some(e) = d.elapsed_ms {
            res.ready_server.push(e);
        }
        let g = guest_marks(console);
        if let (Some(a), Some(k)) = (g.agent_serving, g.keeper_serving) {
            res.keeper_after_agent.push((k - a) * 1e3);
        }
        match split(*ms, &d, &g) {
            Some(s) => res.splits.push(s),
            None => res.split_missing += 1,
        }
    }
    if let Some((_, _, c)) = consoles.get(consoles.len() / 2) {
        res.console_sample = c.clone();
    }
    // the initramfs step of every start, timed here on the same agent binary (a cache hit:
    // read the agent and its libraries, hash them, find the cached archive)
    let agent = env.agent.clone();
    let cache = env.logs.with_file_name("initramfs-cache");
    let times = tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
        unicri_runtime_vm::initramfs::build(&agent, &cache)
            .map_err(|e| anyhow!("initramfs::build: {e}"))?;
        let mut v = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            unicri_runtime_vm::initramfs::build(&agent, &cache)
                .map_err(|e| anyhow!("initramfs::build: {e}"))?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let _ = std::fs::remove_dir_all(&cache);
        Ok(v)
    })
    .await??;
    res.initramfs_hit = times;
    // the daemon's own archive
    res.initramfs_bytes = env
        .daemon
        .as_ref()
        .and_then(|d| std::fs::read_dir(d.root.join("vm-images")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("initramfs-"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0);
    res.agent_bytes = env.agent.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(())
}

/// Phase 2: serial pod + container starts.
async fn phase2(args: &VmArgs, env: &mut Env, res: &mut Results) -> Result<()> {
    let cri = env.cri()?;
    let net = env.net.clone().ok_or_else(|| anyhow!("no net"))?;
    eprintln!(
        "phase 2: {} + {} serial pod + container starts",
        args.warmup, args.rounds
    );
    for i in 0..args.warmup + args.rounds {
        let cfg = prepare(&env.logs, "pc")?;
        let s = start_one(&cri, cfg, true).await?;
        env.ids.insert(s.pod.clone());
        env.ids.extend(s.container.clone());
        check(&cri, &net, &s).await?;
        let t = Instant::now();
        remove_pod(&cri, &s.pod).await?;
        let ms = s.total.as_secs_f64() * 1e3;
        if i >= args.warmup {
            res.pod_ctr.push(ms);
            res.pod_ctr_parts.push((
                s.run_pod.as_secs_f64() * 1e3,
                s.create.as_secs_f64() * 1e3,
                s.start.as_secs_f64() * 1e3,
            ));
            res.teardown_pod_ctr.push(t.elapsed().as_secs_f64() * 1e3);
        }
        eprintln!(
            "  pod + container {i}: {ms:.1} ms (run {:.1}, create {:.1}, start {:.1})",
            s.run_pod.as_secs_f64() * 1e3,
            s.create.as_secs_f64() * 1e3,
            s.start.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Phase 3: N RunPodSandbox at once.
async fn phase3(args: &VmArgs, env: &mut Env, res: &mut Results) -> Result<()> {
    let cri = env.cri()?;
    let net = env.net.clone().ok_or_else(|| anyhow!("no net"))?;
    let n = args.parallel;
    for r in 0..args.parallel_rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cfgs = Vec::with_capacity(n);
        for _ in 0..n {
            cfgs.push(prepare(&env.logs, "par")?);
        }
        let cpu0 = procs::cpu_busy_secs();
        let (ok, errors, wall) = start_many(&cri, cfgs, false).await;
        let cpu1 = procs::cpu_busy_secs();
        for s in &ok {
            env.ids.insert(s.pod.clone());
        }
        if !errors.is_empty() {
            bail!(
                "{} of {n} parallel RunPodSandbox failed, first: {}",
                errors.len(),
                errors[0]
            );
        }
        for s in &ok {
            check(&cri, &net, s).await?;
        }
        res.par_wall.push(wall.as_secs_f64());
        res.par_each
            .extend(ok.iter().map(|s| s.run_pod.as_secs_f64() * 1e3));
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            res.par_cpu.push(b - a);
        }
        let t = Instant::now();
        let k = remove_all(&cri).await?;
        res.par_teardown.push(t.elapsed().as_secs_f64());
        eprintln!(
            "  round {}: {n} pods ready in {:.3} s; removed {k} in {:.3} s",
            r + 1,
            wall.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Busy CPU seconds per wall second of the whole machine over `secs`.
async fn busy_rate(secs: u64) -> Option<f64> {
    let a = procs::cpu_busy_secs()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = procs::cpu_busy_secs()?;
    Some((b - a) / t.elapsed().as_secs_f64())
}

/// Phases 4 and 5: idle pods (one sleeping container each) in batches.
async fn capacity(args: &VmArgs, env: &mut Env, res: &mut Results) -> Result<()> {
    let cri = env.cri()?;
    let net = env.net.clone().ok_or_else(|| anyhow!("no net"))?;
    let cap = args.max_pods.max(args.mem_pods);
    eprintln!(
        "phases 4 + 5: idle pods in batches of {} up to {cap} (memory breakdown at {})",
        args.batch, args.mem_pods
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle0 = busy_rate(5).await;
    res.mem0 = Some(snapshot(env, &[]));
    let avail0 = res.mem0.as_ref().map_or(0, |m| m.mem_available);
    let floor = args.min_available_mib * 1024;
    let serial_p50 = pct(&res.pod_ctr, 0.5).unwrap_or(1000.0);
    let mut pods: Vec<String> = Vec::new();
    res.stop_reason = format!("reached the cap of {cap} pods");
    while pods.len() < cap {
        let k = args.batch.min(cap - pods.len());
        // stop before a batch that would cross the MemAvailable floor
        if let Some(avail) = mem_available_kib()
            && !pods.is_empty()
        {
            let per = (avail0.saturating_sub(avail)) / pods.len() as u64;
            if avail.saturating_sub(per * k as u64) < floor {
                res.stop_reason = format!(
                    "the next batch would take MemAvailable below {} MiB",
                    args.min_available_mib
                );
                break;
            }
        }
        let mut cfgs = Vec::with_capacity(k);
        for _ in 0..k {
            cfgs.push(prepare(&env.logs, "idle")?);
        }
        let (ok, errors, wall) = start_many(&cri, cfgs, true).await;
        for s in &ok {
            env.ids.insert(s.pod.clone());
            env.ids.extend(s.container.clone());
            pods.push(s.pod.clone());
        }
        if !errors.is_empty() {
            res.stop_reason = format!(
                "{} of a batch of {k} pod starts failed at {} pods, first: {}",
                errors.len(),
                pods.len(),
                errors[0]
            );
            res.findings.push(res.stop_reason.clone());
            break;
        }
        for s in &ok {
            check(&cri, &net, s).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let avail = mem_available_kib().unwrap_or(0);
        let each: Vec<f64> = ok.iter().map(|s| s.total.as_secs_f64() * 1e3).collect();
        let p50 = pct(&each, 0.5).unwrap_or(0.0);
        eprintln!(
            "  {} pods: batch of {k} in {:.2} s (p50 {p50:.0} ms), MemAvailable {} MiB",
            pods.len(),
            wall.as_secs_f64(),
            avail / 1024
        );
        res.batches
            .push((pods.len(), each, wall.as_secs_f64(), avail));
        if pods.len() == args.mem_pods || (res.mem_n.is_none() && pods.len() > args.mem_pods) {
            tokio::time::sleep(Duration::from_secs(3)).await;
            res.mem_n = Some(snapshot(env, &pods));
        }
        if p50 > (10.0 * serial_p50).max(15_000.0) {
            res.stop_reason = format!(
                "start latency exploded (batch p50 {p50:.0} ms, serial p50 {serial_p50:.0} ms)"
            );
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_n = busy_rate(5).await;
    res.mem_last = Some(snapshot(env, &pods));
    if let (Some(a), Some(b)) = (idle0, idle_n) {
        res.idle_cpu = Some((a, b));
    }
    let t = Instant::now();
    remove_all(&cri).await?;
    res.capacity_teardown = Some(t.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// report

fn goal_ready(p50: Option<f64>) -> String {
    match p50 {
        Some(x) if x <= GOAL_READY_MS => format!("≤ {GOAL_READY_MS:.0} ms: **met**"),
        Some(x) => format!(
            "≤ {GOAL_READY_MS:.0} ms: **missed** ({:.2}× the goal)",
            x / GOAL_READY_MS
        ),
        None => "-".into(),
    }
}

/// Per-pod figures of a memory snapshot over the 0-pod one (KiB).
struct PerPod {
    guest_file: f64,
    guest_pss: f64,
    other_pss: f64,
    binary: f64,
    anon: f64,
    pte: f64,
    daemon: f64,
    avail: f64,
}

fn per_pod(s0: &MemSnap, s: &MemSnap) -> Option<PerPod> {
    if s.pods == 0 || s.engines == 0 {
        return None;
    }
    let e = s.engines as f64;
    let n = s.pods as f64;
    Some(PerPod {
        guest_file: s.total.guest_file as f64 / e,
        guest_pss: s.total.guest_pss as f64 / e,
        other_pss: s.total.other_pss as f64 / e,
        binary: s.total.other_binary as f64 / e,
        anon: s.total.other_anon as f64 / e,
        pte: s.total.pte as f64 / e,
        daemon: (s.daemon_pss as f64 - s0.daemon_pss as f64) / n,
        avail: (s0.mem_available as f64 - s.mem_available as f64) / n,
    })
}

fn summary_table(args: &VmArgs, r: &Results) -> String {
    let mut s = String::from("| measure | unicri `vm` (uml) | goal (issue) |\n|---|---:|---|\n");
    let p50 = pct(&r.ready, 0.5);
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1} ms"));
    let _ = writeln!(
        s,
        "| RunPodSandbox → agent ready p50 ({} serial) | {} | {} |",
        r.ready.len(),
        f(p50),
        goal_ready(p50)
    );
    let _ = writeln!(
        s,
        "| RunPodSandbox → agent ready p99 | {} | – |",
        f(pct(&r.ready, 0.99))
    );
    let _ = writeln!(
        s,
        "| pod + container running p50 ({} serial) | {} | – |",
        r.pod_ctr.len(),
        f(pct(&r.pod_ctr, 0.5))
    );
    let _ = writeln!(
        s,
        "| pod + container running p99 | {} | – |",
        f(pct(&r.pod_ctr, 0.99))
    );
    let wall = pct(&r.par_wall, 0.5);
    let _ = writeln!(
        s,
        "| {} RunPodSandbox at once, wall until all ready (median of {}) | {} | – |",
        args.parallel,
        r.par_wall.len(),
        wall.map_or("-".into(), |x| format!("{x:.2} s"))
    );
    let _ = writeln!(
        s,
        "| … each pod's own RunPodSandbox p50 / p99 | {} / {} | – |",
        f(pct(&r.par_each, 0.5)),
        f(pct(&r.par_each, 0.99))
    );
    if let (Some(s0), Some(sn)) = (&r.mem0, &r.mem_n)
        && let Some(p) = per_pod(s0, sn)
    {
        let _ = writeln!(
            s,
            "| host overhead per pod beyond guest RAM, {} idle pods (engine PSS outside the guest RAM file + page tables + daemon growth) | {} MiB | none given for uml (kvm: ≤ 3 MiB) |",
            sn.pods,
            mib(p.other_pss + p.pte + p.daemon)
        );
        let _ = writeln!(
            s,
            "| guest RAM touched per pod (tmpfs pages of the guest RAM file), of {} MiB | {} MiB | – |",
            args.mem_mib,
            mib(p.guest_file)
        );
    }
    if let (Some(s0), Some(sl)) = (&r.mem0, &r.mem_last)
        && let Some(p) = per_pod(s0, sl)
    {
        let _ = writeln!(s, "| idle pods reached (measured) | {} | – |", sl.pods);
        let _ = writeln!(
            s,
            "| MemAvailable consumed per pod at {} pods (measured) | {} MiB | – |",
            sl.pods,
            mib(p.avail)
        );
        if p.avail > 0.0 {
            let _ = writeln!(
                s,
                "| capacity: MemAvailable at start / per pod (**extrapolated**) | {:.0} pods | – |",
                s0.mem_available as f64 / p.avail
            );
        }
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &VmArgs,
    m: &Meta,
    r: &Results,
    config: &str,
    net: &Net,
    kernel: &str,
    agent: &Path,
) -> String {
    let mut s = String::new();
    s.push_str("## vm pods (issue 6)\n\n");
    s.push_str(
        "Generated by `unicri-bench vm` (crate `tests/bench`). One unicri daemon on a private \
         root with a `vm` runtime handler on the `uml` engine (a user-mode-Linux kernel process \
         per pod, the guest agent as its PID 1), driven over CRI with the kubelet-like configs \
         of `unicri-bench pods` (no memory limit, so every guest gets `mem_mib`), the CNI \
         conflist of `unicri-bench pods` (bridge + host-local + portmap), and a busybox image \
         imported with `unicri image import` (as the e2e fixtures do). The container runs \
         `sleep 3600`.\n\n",
    );
    s.push_str("### Results\n\n");
    s.push_str(&summary_table(args, r));
    s.push_str(
        "\nPercentiles are nearest-rank. RunPodSandbox of a `vm` pod returns once the guest \
         agent answered and set the pod up, so its latency is \"RunPodSandbox → agent \
         ready\". Serial phases remove each pod (untimed) before the next.\n",
    );

    s.push_str("\n### Side by side (not measured here)\n\n");
    s.push_str("| runtime | pod start | source |\n|---|---:|---|\n");
    let _ = writeln!(
        s,
        "| unicri `vm` (uml), this run | {} p50 | measured above (RunPodSandbox → agent ready) |",
        pct(&r.ready, 0.5).map_or("-".into(), |x| format!("{x:.0} ms"))
    );
    for (name, fig) in PUBLISHED {
        let _ = writeln!(
            s,
            "| {name} | {fig} | **published** figure, not run on this machine (no {name} here) |"
        );
    }
    s.push_str(
        "| containerd + runc (no VM) | 102.0 ms RunPodSandbox p50, 157.5 ms pod + container p50 | \
         the `pods` section above (another run of `unicri-bench pods` on this machine), for \
         reference only |\n",
    );

    s.push_str("\n### Where the time of RunPodSandbox goes\n\n");
    let _ = writeln!(
        s,
        "From the daemon's log (`UNICRI_LOG={}`) and each pod's guest console (the agent logs \
         with the guest's wall clock, which a UML guest takes from the host; \"guest clock \
         zero\" is the agent's first line minus the `uptime_s` it reports, 10 ms resolution). \
         {} of {} serial pods split ({} with a mark missing):\n",
        args.unicri_log,
        r.splits.len(),
        r.ready.len(),
        r.split_missing
    );
    s.push_str("| segment | p50 ms | min | max | mean |\n|---|---:|---:|---:|---:|\n");
    for (i, name) in SEGMENTS.iter().enumerate() {
        let v: Vec<f64> = r.splits.iter().map(|x| x[i]).collect();
        if v.is_empty() {
            continue;
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {min:.1} | {max:.1} | {:.1} |",
            pct(&v, 0.5).unwrap_or(0.0),
            v.iter().sum::<f64>() / v.len() as f64
        );
    }
    let _ = writeln!(
        s,
        "\nThe daemon's own RunPodSandbox time (`elapsed_ms`): {}.",
        dist_line(&r.ready_server)
    );
    let _ = writeln!(
        s,
        "\nTimed directly: `unicri_runtime_vm::initramfs::build` on a cache hit (what every \
         start does before the taps and the spawn: read the {:.1} MB agent and its libraries, \
         SHA-256 them, run `ldd`, find the cached {:.1} MB archive), called in the bench \
         process (same dev profile as the daemon): {}.",
        r.agent_bytes as f64 / 1e6,
        r.initramfs_bytes as f64 / 1e6,
        dist_line(&r.initramfs_hit)
    );
    if !r.keeper_after_agent.is_empty() {
        let _ = writeln!(
            s,
            "\nIn the guest, agent serving → keeper serving: {}.",
            dist_line(&r.keeper_after_agent)
        );
    }
    if !r.console_sample.is_empty() {
        let _ = writeln!(
            s,
            "\nThe console of the median pod:\n\n```\n{}```",
            strip_ansi(&r.console_sample)
        );
    }

    s.push_str("\n### Latency details\n\n");
    let _ = writeln!(
        s,
        "- RunPodSandbox, warmup (first builds the initramfs): {}",
        raw(&r.warm_ready)
    );
    let _ = writeln!(s, "- RunPodSandbox, serial: {}", dist_line(&r.ready));
    let _ = writeln!(
        s,
        "- StopPodSandbox + RemovePodSandbox of those pods (untimed above): {}",
        dist_line(&r.teardown_pod)
    );
    let _ = writeln!(s, "- pod + container, serial: {}", dist_line(&r.pod_ctr));
    let parts =
        |f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> { r.pod_ctr_parts.iter().map(f).collect() };
    let _ = writeln!(
        s,
        "  - of which RunPodSandbox: {}",
        dist_line(&parts(|p| p.0))
    );
    let _ = writeln!(
        s,
        "  - of which CreateContainer (attach the image's EROFS file, prepare the bundle in the guest): {}",
        dist_line(&parts(|p| p.1))
    );
    let _ = writeln!(
        s,
        "  - of which StartContainer: {}",
        dist_line(&parts(|p| p.2))
    );
    let _ = writeln!(
        s,
        "- Stop + Remove of a pod with its container (untimed above): {}",
        dist_line(&r.teardown_pod_ctr)
    );
    let _ = writeln!(
        s,
        "- {} RunPodSandbox at once, wall per round (s): {}",
        args.parallel,
        r.par_wall
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- {} at once, each pod's own RunPodSandbox: {}",
        args.parallel,
        dist_line(&r.par_each)
    );
    let _ = writeln!(
        s,
        "- {} at once, busy CPU seconds of the whole machine ({} cores) while they started: {}",
        args.parallel,
        m.nproc,
        r.par_cpu
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- {} at once, Stop + Remove of all (10 at a time) (s): {}",
        args.parallel,
        r.par_teardown
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    s.push_str("\n### Host memory per pod\n\n");
    s.push_str(
        "Idle pods, one sleeping container each. Per engine session (the UML kernel process \
         and every process of its session: UML's helper processes sharing its address space, \
         and one host process per guest address space), `Pss:` of `/proc/<pid>/smaps` per \
         mapping, each distinct address space once: the guest RAM mapping (UML's physical \
         memory, an unlinked tmpfs file under `TMPDIR=/dev/shm`, found among the engine's open \
         files and shown as `/dev/shm/#<n> (deleted)` in `smaps`) and the rest; page tables \
         (`VmPTE`, not part of PSS); the tmpfs pages the guest RAM file holds (its allocated \
         blocks: the guest memory touched); the daemon's PSS against 0 pods; MemAvailable \
         against 0 pods.\n\n",
    );
    s.push_str("| per pod (KiB → MiB) | at N₁ pods | at N₂ pods |\n|---|---:|---:|\n");
    let cols: Vec<Option<(usize, PerPod, &MemSnap)>> = [&r.mem_n, &r.mem_last]
        .iter()
        .map(|x| {
            let (s0, sn) = (r.mem0.as_ref()?, x.as_ref()?);
            per_pod(s0, sn).map(|p| (sn.pods, p, sn))
        })
        .collect();
    let row = |name: &str, f: &dyn Fn(&PerPod, &MemSnap) -> String| {
        let c: Vec<String> = cols
            .iter()
            .map(|c| c.as_ref().map_or("-".into(), |(_, p, sn)| f(p, sn)))
            .collect();
        format!("| {name} | {} |\n", c.join(" | "))
    };
    s.push_str(&row("pods (N)", &|_, sn| sn.pods.to_string()));
    s.push_str(&row(
        "engine processes / distinct address spaces per pod",
        &|_, sn| {
            format!(
                "{:.1} / {:.1}",
                sn.total.processes as f64 / sn.engines.max(1) as f64,
                sn.total.address_spaces as f64 / sn.engines.max(1) as f64
            )
        },
    ));
    s.push_str(&row(
        &format!(
            "guest RAM touched (tmpfs pages of the file), of {} MiB",
            args.mem_mib
        ),
        &|p, _| mib(p.guest_file),
    ));
    s.push_str(&row(
        "guest RAM mapped (PSS of the file's mappings)",
        &|p, _| mib(p.guest_pss),
    ));
    s.push_str(&row("engine PSS outside guest RAM", &|p, _| {
        mib(p.other_pss)
    }));
    s.push_str(&row(
        "… of which the UML kernel binary (shared by all pods)",
        &|p, _| mib(p.binary),
    ));
    s.push_str(&row("… of which anonymous (heap, stacks)", &|p, _| {
        mib(p.anon)
    }));
    s.push_str(&row("engine page tables (VmPTE)", &|p, _| mib(p.pte)));
    s.push_str(&row("daemon PSS growth", &|p, _| mib(p.daemon)));
    s.push_str(&row(
        "**host overhead** (engine PSS outside guest RAM + page tables + daemon growth)",
        &|p, _| format!("**{}**", mib(p.other_pss + p.pte + p.daemon)),
    ));
    s.push_str(&row("MemAvailable consumed", &|p, _| mib(p.avail)));
    s.push_str(&row(
        "other processes below the daemon (count, PSS MiB total)",
        &|_, sn| format!("{}, {}", sn.others, mib(sn.others_pss as f64)),
    ));
    if let Some(s0) = &r.mem0 {
        let _ = writeln!(
            s,
            "\nAt 0 pods: daemon PSS {} MiB, MemAvailable {} MiB.",
            mib(s0.daemon_pss as f64),
            mib(s0.mem_available as f64)
        );
    }
    if let Some((a, b)) = r.idle_cpu {
        let n = r.mem_last.as_ref().map_or(0, |x| x.pods);
        let _ = writeln!(
            s,
            "\nBusy CPU of the whole machine over 5 s (CPU-seconds per second): {a:.3} at 0 \
             pods, {b:.3} with {n} idle pods ({:.4} per idle pod).",
            if n > 0 { (b - a) / n as f64 } else { 0.0 }
        );
    }

    s.push_str("\n### Capacity\n\n");
    if let (Some(s0), Some(sl)) = (&r.mem0, &r.mem_last) {
        let per = per_pod(s0, sl).map_or(0.0, |p| p.avail);
        let _ = writeln!(
            s,
            "- **measured**: {} idle {} MiB pods up at once (one sleeping container each), \
             started in batches of {}; stopped because: {}.",
            sl.pods, args.mem_mib, args.batch, r.stop_reason
        );
        let _ = writeln!(
            s,
            "- **measured**: MemAvailable {} MiB at 0 pods → {} MiB at {} pods: {} MiB per pod.",
            mib(s0.mem_available as f64),
            mib(sl.mem_available as f64),
            sl.pods,
            mib(per)
        );
        if per > 0.0 {
            let _ = writeln!(
                s,
                "- **extrapolated** (linear, assuming every pod keeps costing what these did and \
                 the guests touch no more memory): MemAvailable at start / per pod = {:.0} pods; \
                 down to a {} MiB floor: {:.0} pods. A guest that touches all its RAM costs up \
                 to {} MiB + the host overhead: {:.0} pods at worst.",
                s0.mem_available as f64 / per,
                args.min_available_mib,
                (s0.mem_available as f64 - (args.min_available_mib * 1024) as f64) / per,
                args.mem_mib,
                s0.mem_available as f64
                    / (args.mem_mib as f64 * 1024.0
                        + per_pod(s0, sl).map_or(0.0, |p| p.other_pss + p.pte + p.daemon))
            );
        }
        if let (Some(a), Some(b)) = (r.batches.first(), r.batches.last())
            && b.0 > a.0
        {
            let slope = (a.3 as f64 - b.3 as f64) / (b.0 - a.0) as f64;
            let _ = writeln!(
                s,
                "- **measured**, less exposed to page-cache drift against the 0-pod baseline: \
                 MemAvailable {} MiB after the first batch ({} pods) → {} MiB after the last \
                 ({} pods): {} MiB per pod; **extrapolated** from that slope: MemAvailable at \
                 start / per pod = {:.0} pods.",
                mib(a.3 as f64),
                a.0,
                mib(b.3 as f64),
                b.0,
                mib(slope),
                if slope > 0.0 {
                    s0.mem_available as f64 / slope
                } else {
                    0.0
                }
            );
        }
        if let Some(t) = r.capacity_teardown {
            let _ = writeln!(
                s,
                "- removing all {} (10 at a time) took {t:.1} s.",
                sl.pods
            );
        }
    }
    s.push_str("\nBatches (pods after the batch: batch wall s, per-pod pod + container ms, MemAvailable MiB):\n\n");
    for (n, each, wall, avail) in &r.batches {
        let _ = writeln!(
            s,
            "- {n}: {wall:.2} s; {}; {}",
            raw(each),
            mib(*avail as f64)
        );
    }

    s.push_str("\n### Leak checks\n\n");
    s.push_str(
        "After the last phase: no pod or container listed, no engine process whose command line \
         points into the daemon's state dir, no interface on the bridge, no address reserved in \
         host-local's data dir, no per-pod engine dir, no cgroup named after a pod or container \
         id.\n\n",
    );
    if r.findings.is_empty() {
        s.push_str("All clean.\n");
    } else {
        for f in &r.findings {
            let _ = writeln!(s, "- **{f}**");
        }
    }

    s.push('\n');
    s.push_str(&report::machine_and_versions(m));
    let _ = writeln!(s, "- UML kernel: {kernel}");
    let agent_size = agent.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(
        s,
        "- guest agent: `{}` ({:.1} MB; the initramfs gets a copy stripped of debug info)",
        agent.display(),
        agent_size as f64 / 1e6
    );
    s.push_str("\n### Configuration\n\n");
    let work = net
        .conf_dir
        .parent()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "- unicri's config (`$WORK` is the temporary work dir), bridge `{}`, subnet {}.0/24:\n\n```toml\n{}```\n",
        net.bridge,
        net.subnet,
        config.replace(&work, "$WORK")
    );
    let _ = writeln!(
        s,
        "- run: {} warmup + {} serial sandboxes; {} warmup + {} serial pod + container; {} \
         round(s) of {} at once; idle pods in batches of {} up to {} (memory breakdown at {}), \
         MemAvailable floor {} MiB.",
        args.warmup,
        args.sandboxes,
        args.warmup,
        args.rounds,
        args.parallel_rounds,
        args.parallel,
        args.batch,
        args.max_pods,
        args.mem_pods,
        args.min_available_mib
    );

    s.push_str("\n### Raw samples (ms)\n\n");
    let _ = writeln!(s, "- RunPodSandbox, serial: {}", raw(&r.ready));
    let _ = writeln!(s, "- pod + container, serial: {}", raw(&r.pod_ctr));
    let _ = writeln!(
        s,
        "- RunPodSandbox, {} at once: {}",
        args.parallel,
        raw(&r.par_each)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse() {
        let a = parse_ts("2026-11-22T16:55:11.874801Z").unwrap_or(0.0);
        let b = parse_ts("2026-11-22T16:55:12.739628Z").unwrap_or(0.0);
        assert!((b - a - 0.864827).abs() < 1e-5, "{}", b - a);
        // 1970-01-02
        assert_eq!(parse_ts("1970-01-02T00:00:00Z"), Some(86400.0));
    }

    #[test]
    fn marks_from_logs() {
        let log = "\u{1b}[2m2026-11-22T16:55:11.481140Z\u{1b}[0m  INFO linux_pod_create{pod_id=abc}: unicri_runtime_linux::pod: linux pod created pod_dir=/x/state/pods/abc cgroup=/u\n\
2026-11-22T16:55:11.505572Z DEBUG rpc{rpc=\"RunPodSandbox\"}: unicri_network_cni::exec: cni plugin succeeded network=\"n\" plugin=\"portmap\" command=\"ADD\"\n\
2026-11-22T16:55:11.874801Z  INFO unicri_runtime_vm::engine: vm engine started pod_id=abc engine=\"uml\" pid=22426\n\
2026-11-22T16:55:12.739628Z  INFO rpc{rpc=\"RunPodSandbox\"}: unicri::rpc::run_pod_sandbox: pod sandbox ready pod_id=abc handler=vm\n\
2026-11-22T16:55:12.739646Z  INFO rpc{rpc=\"RunPodSandbox\"}: unicri::instrument: ok elapsed_ms=1262.4661210000002\n";
        let m = daemon_marks(log);
        let d = m.get("abc").cloned().unwrap_or_default();
        assert!(d.linux_created.is_some() && d.cni_done.is_some());
        assert!(d.engine_started.is_some() && d.ready.is_some());
        assert_eq!(d.elapsed_ms, Some(1262.4661210000002));
        let console = "[    0.110000] Failed to initialize ubd device 0\n\
2026-11-22T16:55:12.199382Z  INFO unicri_vm_agent::guest: agent starting version=\"0.1.0\" protocol=1 uptime_s=0.41\n\
2026-11-22T16:55:12.236759Z  INFO unicri_vm_agent::guest::server: agent serving addr=169.254.100.2:1024\n\
2026-11-22T16:55:12.527315Z  INFO unicri_vm_agent::guest::server: setup pod_id=abc interfaces=1\n";
        let g = guest_marks(console);
        let sp = split(1270.0, &d, &g);
        assert!(sp.is_some());
        let sp = sp.unwrap_or([0.0; 9]);
        assert!((sp[0] - 7.534).abs() < 0.01, "{sp:?}");
        assert!((sp[5] - 410.0).abs() < 0.5, "{sp:?}");
        let total: f64 = sp.iter().sum();
        assert!((total - 1270.0).abs() < 0.5, "{total}");
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), Some(50.0));
        assert_eq!(pct(&v, 0.99), Some(99.0));
        assert_eq!(pct(&[], 0.5), None);
    }
}
