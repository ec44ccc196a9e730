//! `unicri-bench wasm`: WebAssembly containers on unicri's `wasm` handler, side by side with
//! unicri's `linux` handler and containerd + runc running busybox `true`, over CRI.
//!
//! One unicri daemon (serving both handlers) and one containerd, each on its own CNI bridge,
//! with images from a local registry. Exits are observed from the runtime's event stream (see
//! [`crate::exits`]), never by polling. Phases:
//!
//! 1. cold: create + start → exited of hello modules the wasm keeper has never seen (each
//!    module differs in one data-segment string, so each is compiled);
//! 2. warm: the same with one module (or busybox `true`) every time, the targets taking turns;
//!    then CreateContainer and StartContainer alone with no event subscriber; then, on the
//!    wasm handler, starts right after the keeper exited (module from the on-disk cache);
//! 3. throughput: W workers in one pod each looping create → start → wait exit → remove, then
//!    the same with the removals outside the timed batches;
//! 4. memory: N long-sleeping modules in one pod; the wasm keeper's and the daemon's PSS and
//!    RSS before and after.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::task::JoinSet;
use unicri_e2e::registry::{REGISTRY_BIN, Registry};
use unicri_e2e::wasm as modules;
use unicri_proto::v1;

use crate::WasmArgs;
use crate::cri::Cri;
use crate::exits::{self, Exits};
use crate::pods::{self, Net};
use crate::procs;
use crate::report::{self, Meta};
use crate::runtimes::{self, Daemon, Extras, Kind};

/// The runtime handler of WebAssembly pods.
const WASM_HANDLER: &str = "wasm";
/// How long an exit event may take.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a runtime may take to drop its per-pod processes (unicri's keepers exit ~2 s after
/// their last container).
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// What the long-running module does: one line, an hour's sleep in `poll_oneoff`, one line.
/// (`ticker(1, _)` would not sleep at all: it sleeps only between lines.)
const SLEEPER: (u32, u32) = (2, 3_600_000);
/// Goals of the issue.
const GOAL_DAEMON_MS: f64 = 1.0;
const GOAL_RATE: f64 = 1000.0;
const GOAL_INSTANCE_KIB: f64 = 1024.0;
/// runwasi's published figure (containerd-shim-wasmtime, tasks per second).
const RUNWASI_RATE: f64 = 330.0;

/// What runs the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Target {
    /// unicri, `wasm` handler, the hello module.
    Wasm,
    /// unicri, `linux` handler, busybox `true`.
    Linux,
    /// containerd + runc, busybox `true`.
    Containerd,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Wasm => "unicri wasm",
            Target::Linux => "unicri linux",
            Target::Containerd => "containerd + runc",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Target::Wasm | Target::Linux => Kind::Unicri,
            Target::Containerd => Kind::Containerd,
        }
    }
}

/// A daemon under test.
struct Rt {
    kind: Kind,
    d: Daemon,
    net: Net,
    logs: PathBuf,
    exits: Exits,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Whether the runtime answers CRI `GetContainerEvents` (else: containerd's events).
    cri_events: bool,
    /// Where exits come from (for the report).
    exit_source: String,
    /// unicri: (dev, ino) of the daemon's executable.
    exe: Option<(u64, u64)>,
    /// Every pod and container id created (for the cgroup leak scan).
    ids: HashSet<String>,
}

impl Rt {
    async fn listen(&mut self) -> Result<()> {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        let (exits, task) = if self.cri_events {
            exits::listen_cri(&self.d.cri).await?
        } else {
            exits::listen_containerd(&self.d.cri).await?
        };
        self.exits = exits;
        self.listener = Some(task);
        Ok(())
    }

    fn unlisten(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }

    /// unicri's keepers: (role, pid) of each `unicri keeper` / `unicri wasm-keeper` of this
    /// daemon's state dir.
    fn keepers(&self) -> Vec<(&'static str, i32)> {
        if self.kind != Kind::Unicri {
            return Vec::new();
        }
        let linux_dir = self.d.state.join("keeper").display().to_string();
        let wasm_dir = self.d.state.join("wasm-keeper").display().to_string();
        procs::snapshot()
            .into_iter()
            .filter(|p| p.exe.is_some() && p.exe == self.exe)
            .filter_map(|p| {
                let role = match p.argv.get(1).map(String::as_str) {
                    Some("keeper") if p.argv.contains(&linux_dir) => "keeper",
                    Some("wasm-keeper") if p.argv.contains(&wasm_dir) => "wasm-keeper",
                    _ => return None,
                };
                Some((role, p.pid))
            })
            .collect()
    }

    fn wasm_keeper(&self) -> Option<i32> {
        self.keepers()
            .into_iter()
            .find(|(r, _)| *r == "wasm-keeper")
            .map(|(_, p)| p)
    }

    /// Per-pod processes still alive: unicri's keepers, containerd's shims.
    fn per_pod_processes(&self) -> Vec<i32> {
        match self.kind {
            Kind::Unicri => self.keepers().into_iter().map(|(_, p)| p).collect(),
            Kind::Containerd => {
                procs::find_processes("containerd-shim", self.d.socket.to_string_lossy().as_ref())
            }
        }
    }

    async fn wait_idle(&self) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let left = self.per_pod_processes();
            if left.is_empty() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > IDLE_TIMEOUT {
                bail!(
                    "{}: {} s after its last pod was removed, {left:?} still run",
                    self.kind,
                    IDLE_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes every pod; fails if any pod or container is listed afterwards.
    async fn remove_all(&self) -> Result<usize> {
        let pods = self.d.cri.list_pods().await?;
        for p in &pods {
            self.d.cri.stop_pod(p).await?;
            self.d.cri.remove_pod(p).await?;
        }
        let left = self.d.cri.list_pods().await?;
        let ctrs = self.d.cri.list_containers().await?;
        ensure!(
            left.is_empty() && ctrs.is_empty(),
            "{}: after removing every pod, ListPodSandbox still lists {left:?} and ListContainers {ctrs:?}",
            self.kind
        );
        Ok(pods.len())
    }
}

/// One target's pod and workload.
#[derive(Clone)]
struct Tgt {
    target: Target,
    /// Index of its runtime in `Env::rts`.
    rt: usize,
    pod: String,
    pod_cfg: v1::PodSandboxConfig,
    /// The warm image as PullImage answered.
    image: String,
    /// `command` of its containers (empty: the image's entrypoint).
    command: Vec<String>,
}

impl Tgt {
    /// A kubelet-like container config named `name` running `image`.
    fn config(&self, image: &str, name: &str) -> v1::ContainerConfig {
        let mut c = pods::container_config(image, &self.pod_cfg);
        c.metadata = Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        });
        c.labels
            .insert("io.kubernetes.container.name".into(), name.into());
        c.log_path = format!("{name}/0.log");
        c.command = self.command.clone();
        c
    }
}

/// One create + start → exited.
#[derive(Clone, Copy, Debug)]
struct Run {
    create: Duration,
    start: Duration,
    /// From the CreateContainer call until the exit event (or StartContainer's answer, if the
    /// event came first); for containerd, until ContainerStatus says EXITED after the event.
    total: Duration,
    /// containerd: from its `/tasks/exit` event until its CRI plugin reports EXITED.
    lag: Option<Duration>,
}

/// CreateContainer + StartContainer of `image` as `name`, then the exit event; the container
/// is removed (untimed) when `remove`.
async fn run_once(
    cri: &Cri,
    exits: &Exits,
    t: &Tgt,
    image: &str,
    name: &str,
    remove: bool,
) -> Result<(Run, String)> {
    let cfg = t.config(image, name);
    let t0 = Instant::now();
    let id = cri.create_container(&t.pod, cfg, t.pod_cfg.clone()).await?;
    let t1 = Instant::now();
    cri.start_container(&id).await?;
    let t2 = Instant::now();
    let exit = exits
        .wait(&id, EXIT_TIMEOUT)
        .await
        .with_context(|| format!("{}: {name}", t.target.label()))?;
    let mut end = exit.at.max(t2);
    ensure!(
        exit.code == Some(0),
        "{}: container {name} ({id}) exited with {:?}, not 0",
        t.target.label(),
        exit.code
    );
    let mut lag = None;
    if t.target == Target::Containerd {
        // containerd publishes /tasks/exit before its CRI plugin has recorded the exit (a
        // RemoveContainer then fails with "still running"): for a CRI client the container
        // exited when ContainerStatus says so; polled from the event on, every millisecond
        let seen = cri_exited_since(cri, &id).await?;
        lag = Some(seen.saturating_duration_since(exit.at));
        end = end.max(seen);
    }
    if remove {
        cri.remove_container(&id).await?;
        exits.forget(&id);
    }
    Ok((
        Run {
            create: t1 - t0,
            start: t2 - t1,
            total: end - t0,
            lag,
        },
        id,
    ))
}

/// Polls ContainerStatus every millisecond until the container is EXITED (with code 0);
/// returns when it first was.
async fn cri_exited_since(cri: &Cri, id: &str) -> Result<Instant> {
    let t0 = Instant::now();
    loop {
        let st = cri.container_status(id).await?;
        let at = Instant::now();
        if st.state == v1::ContainerState::ContainerExited as i32 {
            ensure!(
                st.exit_code == 0,
                "container {id} exited with {}",
                st.exit_code
            );
            return Ok(at);
        }
        if t0.elapsed() > EXIT_TIMEOUT {
            bail!("container {id} not EXITED for CRI {EXIT_TIMEOUT:?} after its exit event");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Nearest-rank percentile of `v` (seconds), `p` in (0, 1].
fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let r = (p * s.len() as f64).ceil() as usize;
    Some(s[r.clamp(1, s.len()) - 1])
}

fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter().map(Duration::as_secs_f64).collect()
}

/// Samples of one measure.
#[derive(Clone, Debug, Default)]
struct Runs {
    create: Vec<Duration>,
    start: Vec<Duration>,
    total: Vec<Duration>,
    lag: Vec<Duration>,
}

impl Runs {
    fn push(&mut self, r: Run) {
        self.create.push(r.create);
        self.start.push(r.start);
        self.total.push(r.total);
        self.lag.extend(r.lag);
    }
}

/// One throughput round.
#[derive(Clone, Debug, Default)]
struct Round {
    containers: usize,
    /// Timed wall time (for the no-remove variant: the sum of the batches).
    wall: Duration,
    /// Busy CPU seconds of the whole machine during the timed part.
    cpu: Option<f64>,
    /// CPU seconds of the runtime's own processes (unicri: daemon, keepers; containerd: the
    /// daemon), by role.
    proc_cpu: BTreeMap<&'static str, f64>,
    /// Each container's create + start → exited.
    each: Vec<Duration>,
}

impl Round {
    fn rate(&self) -> f64 {
        self.containers as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Memory of one process from `smaps_rollup`, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct MemKib {
    rss: u64,
    pss: u64,
    pss_anon: u64,
    pss_file: u64,
}

fn mem_of(pid: i32) -> Option<MemKib> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(MemKib {
        rss: field("Rss:"),
        pss: field("Pss:"),
        pss_anon: field("Pss_Anon:"),
        pss_file: field("Pss_File:"),
    })
}

/// Threads of a process (`Threads:` of its status).
fn threads_of(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds (user + system, own and reaped children's) of a process.
fn proc_cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // fields after "comm": state(3) ppid ... utime(14) stime(15) cutime(16) cstime(17)
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f
        .get(11..15)?
        .iter()
        .filter_map(|x| x.parse::<i64>().ok())
        .map(|x| x.max(0) as u64)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// The memory phase's samples.
#[derive(Clone, Debug, Default)]
struct MemPhase {
    instances: usize,
    keeper_pid: i32,
    keeper_before: MemKib,
    keeper_after: MemKib,
    threads_before: u64,
    threads_after: u64,
    daemon_before: MemKib,
    daemon_after: MemKib,
    /// ContainerStats working set of one instance, bytes.
    working_set: Option<u64>,
    /// Time to start the N instances (serial CreateContainer + StartContainer).
    start_all: Duration,
}

/// Everything measured.
#[derive(Default)]
struct Results {
    cold: Runs,
    warm: BTreeMap<Target, Runs>,
    quiet: BTreeMap<Target, Runs>,
    /// Server-side elapsed of CreateContainer / StartContainer from the daemon's log, quiet
    /// phase (ms).
    server: BTreeMap<Target, (Vec<f64>, Vec<f64>)>,
    disk_warm: Runs,
    /// Keeper ping round trips (one connection each), wasm keeper.
    keeper_ping: Vec<Duration>,
    /// CRI Version round trips (the gRPC floor).
    version_rtt: BTreeMap<Kind, Vec<Duration>>,
    /// ContainerStatus round trips of each target's exited anchor.
    status_rtt: BTreeMap<Target, Vec<Duration>>,
    /// Overlay (mkdirs + mount, umount + remove) done by the bench on unicri's root.
    overlay: Option<(Vec<Duration>, Vec<Duration>)>,
    tput: BTreeMap<Target, Vec<Round>>,
    tput_no_remove: BTreeMap<Target, Vec<Round>>,
    mem: Option<MemPhase>,
    /// wasm keeper pids seen at each phase boundary.
    keeper_pids: Vec<(String, Option<i32>)>,
    exit_sources: BTreeMap<Kind, String>,
    findings: Vec<String>,
}

/// Everything started, for cleanup on any exit path.
#[derive(Default)]
struct Env {
    registry: Option<Registry>,
    rts: Vec<Rt>,
    bridges: Vec<String>,
}

impl Env {
    async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for mut rt in self.rts.drain(..) {
            rt.unlisten();
            match rt.remove_all().await {
                Ok(0) => {}
                Ok(n) => notes.push(format!("{}: removed {n} leftover pod(s)", rt.kind)),
                Err(e) => notes.push(format!("{}: removing pods failed: {e:#}", rt.kind)),
            }
            if let Err(e) = rt.wait_idle().await {
                notes.push(format!("{e:#}"));
                for pid in rt.per_pod_processes() {
                    notes.push(format!("{}: killed leftover process {pid}", rt.kind));
                    procs::kill_tree(pid);
                }
            }
            let kind = rt.kind;
            notes.extend(
                rt.d.stop()
                    .await
                    .into_iter()
                    .map(|n| format!("{kind}: {n}")),
            );
        }
        for b in self.bridges.drain(..) {
            if Path::new("/sys/class/net").join(&b).exists() {
                let ok = std::process::Command::new("ip")
                    .args(["link", "del", &b])
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    notes.push(format!("could not delete bridge {b}"));
                }
            }
        }
        self.registry.take();
        notes
    }
}

/// `/sys/fs/cgroup/<hierarchy>/unicri*` and everything below (to tell this run's leftovers
/// from older ones).
fn unicri_cgroups() -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    let mut stack: Vec<PathBuf> = Vec::new();
    for h in rd.flatten() {
        let p = h.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("unicri"))
            && p.is_dir()
        {
            stack.push(p.clone());
        }
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("unicri") && e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        out.insert(d);
    }
    out
}

pub async fn run(args: WasmArgs) -> Result<()> {
    ensure!(
        args.cold > 0 && args.warm > 0 && args.total > 0 && args.workers > 0,
        "--cold, --warm, --total and --workers must be at least 1"
    );
    ensure!(
        nix::unistd::geteuid().is_root(),
        "run as root (pods need namespaces, cgroups, mounts and CNI)"
    );
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        ensure!(
            args.cni_bin_dir.join(p).exists(),
            "CNI plugin {} missing (apt-get install -y containernetworking-plugins)",
            args.cni_bin_dir.join(p).display()
        );
    }
    let mut targets = if args.targets.is_empty() {
        vec![Target::Wasm, Target::Linux, Target::Containerd]
    } else {
        args.targets.clone()
    };
    targets.sort();
    targets.dedup();
    let parent = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("unicri-bench-wasm-")
        .tempdir_in(&parent)?;
    eprintln!("work dir {}", work.path().display());

    let k8s_io_before = pods::k8s_io_cgroups();
    let unicri_cg_before = unicri_cgroups();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut env = Env::default();
    let mut results = Results::default();
    let outcome = tokio::select! {
        r = body(&args, &targets, work.path(), &mut env, &mut results) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    let mut notes = env.stop().await;
    for d in pods::k8s_io_cgroups() {
        if !k8s_io_before.contains(&d) && std::fs::remove_dir(&d).is_err() {
            notes.push(format!("could not remove {} (not empty?)", d.display()));
        }
    }
    // cgroups this run made and left: unicri leaves its (empty) parents behind
    let mut left: Vec<PathBuf> = unicri_cgroups()
        .difference(&unicri_cg_before)
        .cloned()
        .collect();
    left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in left {
        if std::fs::remove_dir(&d).is_ok() {
            notes.push(format!("removed empty cgroup {} it made", d.display()));
        } else {
            notes.push(format!(
                "could not remove cgroup {} (not empty?)",
                d.display()
            ));
        }
    }
    for n in &notes {
        eprintln!("  cleanup: {n}");
    }
    if let Ok(md) = outcome.as_ref() {
        let mut md = md.clone();
        if !notes.is_empty() {
            md.push_str("\nAt the final cleanup (after the report's checks):\n\n");
            for n in &notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
        eprintln!("wrote {}", args.out.display());
    }
    if args.keep {
        eprintln!("work dir kept: {}", work.keep().display());
    } else if outcome.is_err() {
        for k in ["unicri", "containerd"] {
            let _ = std::fs::remove_dir_all(work.path().join(k).join("root"));
        }
        eprintln!("work dir kept (logs): {}", work.keep().display());
    }
    outcome.map(|_| ())
}

/// The images of the run (references as pushed).
struct Images {
    hello: String,
    cold: Vec<String>,
    sleeper: String,
    busybox: String,
    pause: String,
    hello_digest: String,
    module_bytes: usize,
}

/// `hello` with its first line replaced by `cold-<n>` (same length), so its data segment,
/// and its digest, differ from every other.
fn unique_hello(hello: &[u8], n: usize) -> Result<Vec<u8>> {
    let line = modules::HELLO_LINE.as_bytes();
    let repl = format!("cold-{n:0w$}", w = line.len() - 5);
    ensure!(repl.len() == line.len(), "cold module number {n} too large");
    let at: Vec<usize> = hello
        .windows(line.len())
        .enumerate()
        .filter(|(_, w)| *w == line)
        .map(|(i, _)| i)
        .collect();
    ensure!(
        at.len() == 1,
        "the hello module holds {:?} {} times, not once",
        modules::HELLO_LINE,
        at.len()
    );
    let mut m = hello.to_vec();
    m[at[0]..at[0] + line.len()].copy_from_slice(repl.as_bytes());
    Ok(m)
}

async fn push_wasm(
    reg: &Registry,
    cold: usize,
) -> Result<(String, Vec<String>, String, String, usize)> {
    let pusher = reg.pusher();
    let host = reg.host();
    let hello = modules::hello()?;
    let img = modules::compat_image(&hello)?;
    let digest = img.manifest_digest().to_string();
    pusher.push_image("bench/wasm-hello", "v1", &img).await?;
    let mut cold_refs = Vec::with_capacity(cold);
    for i in 0..cold {
        let m = unique_hello(&hello, i)?;
        let img = modules::compat_image(&m)?;
        let tag = format!("c{i}");
        pusher.push_image("bench/wasm-cold", &tag, &img).await?;
        cold_refs.push(format!("{host}/bench/wasm-cold:{tag}"));
    }
    let sleeper = modules::compat_image(&modules::ticker(SLEEPER.0, SLEEPER.1)?)?;
    pusher
        .push_image("bench/wasm-sleeper", "v1", &sleeper)
        .await?;
    Ok((
        format!("{host}/bench/wasm-hello:v1"),
        cold_refs,
        format!("{host}/bench/wasm-sleeper:v1"),
        digest,
        hello.len(),
    ))
}

fn prepare_pod(logs: &Path, prefix: &str) -> Result<v1::PodSandboxConfig> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}-{n}");
    let uid = format!("{:08x}-{n:06}", std::process::id());
    let cfg = pods::pod_config(logs, &name, &uid);
    std::fs::create_dir_all(&cfg.log_directory)?;
    Ok(cfg)
}

async fn start_runtimes(
    args: &WasmArgs,
    kinds: &[Kind],
    work: &Path,
    hosts_dir: &Path,
    pause: &str,
    env: &mut Env,
) -> Result<()> {
    let unicri_src = args
        .unicri_bin
        .clone()
        .unwrap_or_else(crate::pull::default_unicri_bin);
    for &kind in kinds {
        let net = Net::new(kind, work)?;
        env.bridges.push(net.bridge.clone());
        let bin = match kind {
            Kind::Unicri => {
                ensure!(
                    unicri_src.exists(),
                    "unicri binary {} not found",
                    unicri_src.display()
                );
                // a private copy: a rebuild of target/ during the run cannot swap the binary
                // the keepers are spawned from
                let dir = work.join("bin");
                std::fs::create_dir_all(&dir)?;
                let copy = dir.join("unicri");
                std::fs::copy(&unicri_src, &copy)
                    .with_context(|| format!("copy {}", unicri_src.display()))?;
                copy
            }
            Kind::Containerd => args.containerd_bin.clone(),
        };
        let mut extras = Extras {
            cni: Some((net.conf_dir.clone(), args.cni_bin_dir.clone())),
            sandbox_image: Some(pause.to_string()),
            env: Vec::new(),
            config: String::new(),
        };
        if kind == Kind::Unicri
            && let Some(l) = &args.unicri_log
        {
            extras.env.push(("UNICRI_LOG".into(), l.clone()));
        }
        eprintln!("starting {kind} ({})", bin.display());
        let mut d = Daemon::start_with(kind, &bin, work, hosts_dir, &extras).await?;
        if kind == Kind::Unicri {
            d.bin_version = d.bin_version.replace(
                &format!("({})", bin.display()),
                &format!("({}, run from a copy)", unicri_src.display()),
            );
        }
        let mut ready = (false, false, String::new());
        for _ in 0..100 {
            ready = d.cri.ready().await?;
            if ready.0 && ready.1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exe = d
            .pid()
            .and_then(|p| procs::file_id(Path::new(&format!("/proc/{p}/exe"))));
        let log = d.log.display().to_string();
        env.rts.push(Rt {
            kind,
            logs: work.join(format!("logs-{kind}")),
            exits: Exits::default(),
            listener: None,
            cri_events: false,
            exit_source: String::new(),
            exe: if kind == Kind::Unicri { exe } else { None },
            net,
            d,
            ids: HashSet::new(),
        });
        ensure!(
            ready.0 && ready.1,
            "{kind} is not ready after 10 s: {}; see {log}",
            ready.2
        );
    }
    Ok(())
}

/// Which targets go when in round `i` (rotating).
fn rotation(n: usize, i: usize) -> Vec<usize> {
    (0..n).map(|k| (k + i) % n).collect()
}

async fn body(
    args: &WasmArgs,
    targets: &[Target],
    work: &Path,
    env: &mut Env,
    res: &mut Results,
) -> Result<String> {
    let started = report::utc_now();
    let load_before = report::loadavg();
    let with_wasm = targets.contains(&Target::Wasm);
    eprintln!("starting docker-registry");
    let reg = Registry::start_plain().await?;
    eprintln!(
        "building and pushing images (busybox, pause, hello, {} cold hello variants, sleeper)",
        args.cold
    );
    let (busybox, pause) = pods::push_images(&reg).await?;
    let (hello, cold, sleeper, hello_digest, module_bytes) =
        push_wasm(&reg, if with_wasm { args.cold } else { 0 }).await?;
    let imgs = Images {
        hello,
        cold,
        sleeper,
        busybox,
        pause,
        hello_digest,
        module_bytes,
    };
    let hosts_dir = runtimes::write_hosts_dir(&work.join("hosts.d"), &reg.host())?;
    env.registry = Some(reg);
    let mut kinds: Vec<Kind> = targets.iter().map(|t| t.kind()).collect();
    kinds.sort();
    kinds.dedup();
    start_runtimes(args, &kinds, work, &hosts_dir, &imgs.pause, env).await?;

    // events: GetContainerEvents where answered, else containerd's event service
    for rt in env.rts.iter_mut() {
        let (ok, why) = exits::cri_events_supported(&rt.d.cri).await;
        rt.exit_source = match (rt.kind, ok) {
            (_, true) => "CRI GetContainerEvents, CONTAINER_STOPPED_EVENT".into(),
            (Kind::Containerd, false) => format!(
                "containerd's event service, topic /tasks/exit of the container's init \
                 (its CRI GetContainerEvents: {why})"
            ),
            (Kind::Unicri, false) => bail!("unicri does not answer GetContainerEvents: {why}"),
        };
        rt.cri_events = ok || (rt.kind == Kind::Containerd && args.containerd_cri_events);
        if rt.cri_events && !ok {
            rt.exit_source = format!(
                "CRI GetContainerEvents, CONTAINER_STOPPED_EVENT (the probe: {why}; used anyway, \
                 --containerd-cri-events)"
            );
        }
        rt.listen().await?;
        res.exit_sources.insert(rt.kind, rt.exit_source.clone());
        eprintln!("  {}: exits from {}", rt.kind, rt.exit_source);
    }

    // untimed pulls
    let idx = |k: Kind, rts: &[Rt]| rts.iter().position(|r| r.kind == k);
    let mut tgts: Vec<Tgt> = Vec::new();
    for &t in targets {
        let ri = idx(t.kind(), &env.rts).context("runtime of a target")?;
        let rt = &mut env.rts[ri];
        let (image, command, handler) = match t {
            Target::Wasm => (imgs.hello.clone(), Vec::new(), WASM_HANDLER),
            Target::Linux | Target::Containerd => {
                (imgs.busybox.clone(), vec!["true".to_string()], "")
            }
        };
        let image = rt.d.cri.pull(&image).await?;
        if t == Target::Containerd {
            rt.d.cri.pull(&imgs.pause).await?;
        }
        let pod_cfg = prepare_pod(&rt.logs, &format!("{t:?}").to_lowercase())?;
        let pod = rt.d.cri.run_pod_with(pod_cfg.clone(), handler).await?;
        rt.ids.insert(pod.clone());
        tgts.push(Tgt {
            target: t,
            rt: ri,
            pod,
            pod_cfg,
            image,
            command,
        });
    }
    if with_wasm {
        let ri = idx(Kind::Unicri, &env.rts).context("unicri runtime")?;
        let rt = &env.rts[ri];
        for c in &imgs.cold {
            rt.d.cri.pull(c).await?;
        }
        rt.d.cri.pull(&imgs.sleeper).await?;
        eprintln!("  pulled {} cold variants and the sleeper", imgs.cold.len());
    }

    // anchors: one exited container per target stays, so unicri's keepers (which exit 2 s
    // after their last container) and containerd's pod shim stay up, as on a busy node
    for t in &tgts {
        let rt = &mut env.rts[t.rt];
        let (r, id) = run_once(&rt.d.cri, &rt.exits, t, &t.image, "anchor", false).await?;
        rt.ids.insert(id);
        eprintln!(
            "  {:<18} anchor (first run) {:>8.1} ms",
            t.target.label(),
            r.total.as_secs_f64() * 1e3
        );
    }
    let keeper_pid = |env: &Env| idx(Kind::Unicri, &env.rts).and_then(|i| env.rts[i].wasm_keeper());
    res.keeper_pids
        .push(("after the anchors".into(), keeper_pid(env)));

    // 1. cold
    if let Some(w) = tgts.iter().find(|t| t.target == Target::Wasm).cloned() {
        eprintln!("phase 1: {} cold wasm starts", imgs.cold.len());
        let rt = &mut env.rts[w.rt];
        for (i, img) in imgs.cold.iter().enumerate() {
            let (r, id) =
                run_once(&rt.d.cri, &rt.exits, &w, img, &format!("cold-{i}"), true).await?;
            rt.ids.insert(id);
            res.cold.push(r);
        }
        res.keeper_pids
            .push(("after the cold phase".into(), keeper_pid(env)));
    }

    // 2. warm, targets taking turns
    eprintln!(
        "phase 2: {} warmup + {} warm starts per target",
        args.warmup, args.warm
    );
    for i in 0..args.warmup + args.warm {
        for k in rotation(tgts.len(), i) {
            let t = &tgts[k];
            let rt = &mut env.rts[t.rt];
            let (r, id) = run_once(
                &rt.d.cri,
                &rt.exits,
                t,
                &t.image,
                &format!("warm-{i}"),
                true,
            )
            .await?;
            rt.ids.insert(id);
            if i >= args.warmup {
                res.warm.entry(t.target).or_default().push(r);
            }
        }
        if (i + 1) % 20 == 0 {
            eprintln!("  {}/{}", i + 1, args.warmup + args.warm);
        }
    }
    res.keeper_pids
        .push(("after the warm phase".into(), keeper_pid(env)));

    // 2b. no event subscriber: CreateContainer and StartContainer alone; exits by polling
    // (untimed); each unicri target in a block of its own, so the daemon log's per-RPC times
    // can be told apart
    floors(env, &tgts, res).await?;
    for t in tgts.iter().filter(|t| t.target.kind() == Kind::Unicri) {
        let rt = &mut env.rts[t.rt];
        rt.unlisten();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log_from = std::fs::metadata(&rt.d.log).map(|m| m.len()).unwrap_or(0);
        for i in 0..args.warm {
            let cfg = t.config(&t.image, &format!("quiet-{i}"));
            let t0 = Instant::now();
            let id =
                rt.d.cri
                    .create_container(&t.pod, cfg, t.pod_cfg.clone())
                    .await?;
            let t1 = Instant::now();
            rt.d.cri.start_container(&id).await?;
            let t2 = Instant::now();
            rt.ids.insert(id.clone());
            poll_exited(&rt.d.cri, &id).await?;
            rt.d.cri.remove_container(&id).await?;
            res.quiet.entry(t.target).or_default().push(Run {
                create: t1 - t0,
                start: t2 - t1,
                total: t2 - t0,
                lag: None,
            });
        }
        let text = std::fs::read(&rt.d.log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(log_from as usize..).unwrap_or_default());
        res.server.insert(
            t.target,
            (
                rpc_elapsed(&text, "CreateContainer"),
                rpc_elapsed(&text, "StartContainer"),
            ),
        );
        rt.listen().await?;
    }

    // 2c. keeper idle-exited: the module comes from the on-disk cache, the keeper is spawned
    if let Some(w) = tgts.iter().find(|t| t.target == Target::Wasm).cloned()
        && args.disk_warm > 0
    {
        eprintln!(
            "phase 2c: {} wasm starts right after the keeper exited",
            args.disk_warm
        );
        let ri = w.rt;
        // the anchor goes: nothing holds the keeper
        let anchors: Vec<String> = env.rts[ri]
            .d
            .cri
            .list_containers()
            .await?
            .into_iter()
            .filter(|(_, pod, _)| pod == &w.pod)
            .map(|(id, _, _)| id)
            .collect();
        for id in anchors {
            env.rts[ri].d.cri.remove_container(&id).await?;
        }
        for i in 0..args.disk_warm {
            wait_wasm_keeper_gone(&env.rts[ri]).await?;
            let rt = &mut env.rts[ri];
            let (r, id) = run_once(
                &rt.d.cri,
                &rt.exits,
                &w,
                &w.image,
                &format!("disk-{i}"),
                true,
            )
            .await?;
            rt.ids.insert(id);
            res.disk_warm.push(r);
        }
        // a new anchor
        let rt = &mut env.rts[ri];
        let (_, id) = run_once(&rt.d.cri, &rt.exits, &w, &w.image, "anchor2", false).await?;
        rt.ids.insert(id);
        res.keeper_pids
            .push(("after the disk-cache phase".into(), keeper_pid(env)));
    }

    // 3. throughput
    eprintln!(
        "phase 3: throughput, {} workers, {} containers per round, {} round(s)",
        args.workers, args.total, args.throughput_rounds
    );
    for r in 0..args.throughput_rounds {
        for k in rotation(tgts.len(), r) {
            let t = tgts[k].clone();
            let round = throughput(args, env, &t, &format!("tp{r}"), true).await?;
            eprintln!(
                "  round {}: {:<18} {:>7.1} containers/s (with remove)",
                r + 1,
                t.target.label(),
                round.rate()
            );
            res.tput.entry(t.target).or_default().push(round);
            let round = throughput(args, env, &t, &format!("tq{r}"), false).await?;
            eprintln!(
                "  round {}: {:<18} {:>7.1} containers/s (remove outside the timed batches)",
                r + 1,
                t.target.label(),
                round.rate()
            );
            res.tput_no_remove.entry(t.target).or_default().push(round);
        }
    }
    res.keeper_pids
        .push(("after the throughput phase".into(), keeper_pid(env)));

    // 4. memory
    if with_wasm && args.instances > 0 {
        res.mem = Some(memory(args, env, &imgs).await?);
    }

    // leak checks
    for t in &tgts {
        let rt = &env.rts[t.rt];
        rt.d.cri.stop_pod(&t.pod).await?;
        rt.d.cri.remove_pod(&t.pod).await?;
    }
    leak_checks(env, res).await;

    let mut meta = Meta::collect((args.warm, args.warmup, 0), &[], started, load_before);
    meta.versions = env
        .rts
        .iter()
        .map(|rt| {
            (
                rt.kind.to_string(),
                rt.d.bin_version.clone(),
                rt.d.cri_version.clone(),
            )
        })
        .collect();
    meta.registry_version = procs::command_line_output(REGISTRY_BIN, &["--version"]);
    let md = markdown(args, &meta, targets, res, &imgs);
    println!("{}", summary_table(args, targets, res));
    for f in &res.findings {
        eprintln!("  finding: {f}");
    }
    Ok(md)
}

/// The floors under the RPCs: round trips of CRI `Version` (each runtime) and of
/// `ContainerStatus` of each target's exited anchor (gRPC + the runtime's store + for unicri a
/// keeper `state` call), of a wasm keeper `ping` (a connection per call, as the daemon's
/// client makes them), and an overlay mount + unmount of the hello image's layer done by the
/// bench itself the way unicri mounts a container rootfs.
async fn floors(env: &Env, tgts: &[Tgt], res: &mut Results) -> Result<()> {
    const N: usize = 200;
    for rt in &env.rts {
        let mut v = Vec::new();
        for _ in 0..N {
            let t0 = Instant::now();
            rt.d.cri.version().await?;
            v.push(t0.elapsed());
        }
        res.version_rtt.insert(rt.kind, v);
        if rt.kind == Kind::Unicri && rt.wasm_keeper().is_some() {
            let sock = rt.d.state.join("wasm-keeper").join("keeper.sock");
            for _ in 0..N {
                let t0 = Instant::now();
                keeper_ping(&sock).await?;
                res.keeper_ping.push(t0.elapsed());
            }
        }
    }
    for t in tgts {
        let rt = &env.rts[t.rt];
        let Some(anchor) =
            rt.d.cri
                .list_containers()
                .await?
                .into_iter()
                .find(|(_, pod, _)| pod == &t.pod)
                .map(|(id, _, _)| id)
        else {
            continue;
        };
        let mut v = Vec::new();
        for _ in 0..N {
            let t0 = Instant::now();
            rt.d.cri.container_status(&anchor).await?;
            v.push(t0.elapsed());
        }
        res.status_rtt.insert(t.target, v);
    }
    if let Some(rt) = env.rts.iter().find(|r| r.kind == Kind::Unicri) {
        let root = rt.d.root.clone();
        res.overlay = tokio::task::spawn_blocking(move || overlay_times(&root, 100)).await??;
    }
    Ok(())
}

/// mkdir rootfs/upper/work + mount, and umount + remove, of an overlay over the snapshot that
/// holds `app.wasm` under `root`, `n` times (in a scratch dir on the same file system).
fn overlay_times(root: &Path, n: usize) -> Result<Option<(Vec<Duration>, Vec<Duration>)>> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let snaps = root.join("images").join("snapshots");
    let Some(lower) = std::fs::read_dir(&snaps)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|p| p.join("app.wasm").is_file())
    else {
        return Ok(None);
    };
    let scratch = root.join("bench-overlay");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..n {
        let dir = scratch.join(i.to_string());
        let (target, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
        let t0 = Instant::now();
        for d in [&target, &upper, &work] {
            std::fs::create_dir_all(d)?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .with_context(|| format!("mount an overlay on {}", target.display()))?;
        let t1 = Instant::now();
        umount2(&target, MntFlags::empty())
            .with_context(|| format!("unmount {}", target.display()))?;
        std::fs::remove_dir_all(&dir)?;
        let t2 = Instant::now();
        up.push(t1 - t0);
        down.push(t2 - t1);
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(Some((up, down)))
}

async fn keeper_ping(sock: &Path) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connect {}", sock.display()))?;
    s.write_all(b"{\"op\":\"ping\"}\n").await?;
    let mut line = String::new();
    tokio::io::BufReader::new(s).read_line(&mut line).await?;
    ensure!(line.contains("pong"), "keeper answered {line:?} to a ping");
    Ok(())
}

/// Polls ContainerStatus until the container exited (untimed phases only).
async fn poll_exited(cri: &Cri, id: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let st = cri.container_status(id).await?;
        if st.state == v1::ContainerState::ContainerExited as i32 {
            ensure!(
                st.exit_code == 0,
                "container {id} exited with {}",
                st.exit_code
            );
            return Ok(());
        }
        if t0.elapsed() > EXIT_TIMEOUT {
            bail!("container {id} did not exit within {EXIT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_wasm_keeper_gone(rt: &Rt) -> Result<()> {
    let t0 = Instant::now();
    while rt.wasm_keeper().is_some() {
        if t0.elapsed() > IDLE_TIMEOUT {
            bail!("the wasm keeper did not exit within {IDLE_TIMEOUT:?} of its last container");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `elapsed_ms` of every `rpc` log line of `rpc` that ended `ok` in the daemon log `text`.
fn rpc_elapsed(text: &str, rpc: &str) -> Vec<f64> {
    let needle = format!("rpc=\"{rpc}\"");
    let needle2 = format!("rpc={rpc}");
    text.lines()
        .map(strip_ansi)
        .filter(|l| {
            (l.contains(&needle)
                || l.contains(&format!("{needle2}}}"))
                || l.contains(&format!("{needle2} ")))
                && l.contains(" ok")
        })
        .filter_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One throughput round of target `t`: `args.workers` workers in its pod, `args.total`
/// containers. With `remove`, each worker removes its container before the next; without,
/// the containers are removed between batches of `args.batch`, outside the timed part.
async fn throughput(
    args: &WasmArgs,
    env: &mut Env,
    t: &Tgt,
    tag: &str,
    remove: bool,
) -> Result<Round> {
    let rt = &mut env.rts[t.rt];
    let batch = if remove {
        args.total
    } else {
        args.batch.max(1)
    };
    let mut round = Round {
        containers: args.total,
        ..Default::default()
    };
    let mut cpu_acc = Some(0.0);
    let mut done = 0;
    while done < args.total {
        let n = batch.min(args.total - done);
        let pids = runtime_pids(rt);
        let pc0: Vec<(&'static str, i32, Option<f64>)> = pids
            .iter()
            .map(|(r, p)| (*r, *p, proc_cpu_secs(*p)))
            .collect();
        let next = Arc::new(AtomicUsize::new(0));
        let cpu0 = procs::cpu_busy_secs();
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..args.workers {
            let (cri, exits, t, next, tag) = (
                rt.d.cri.clone(),
                rt.exits.clone(),
                t.clone(),
                next.clone(),
                tag.to_string(),
            );
            set.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(mine);
                    }
                    let name = format!("{tag}-{}", done + i);
                    let (r, id) = run_once(&cri, &exits, &t, &t.image, &name, remove).await?;
                    mine.push((r, id));
                }
            });
        }
        let mut ids = Vec::new();
        let mut err = None;
        while let Some(j) = set.join_next().await {
            match j? {
                Ok(v) => {
                    for (r, id) in v {
                        round.each.push(r.total);
                        ids.push(id);
                    }
                }
                Err(e) => err = err.or(Some(e)),
            }
        }
        round.wall += t0.elapsed();
        match (cpu0, procs::cpu_busy_secs(), cpu_acc) {
            (Some(a), Some(b), Some(acc)) => cpu_acc = Some(acc + b - a),
            _ => cpu_acc = None,
        }
        for (role, pid, c0) in pc0 {
            if let (Some(c0), Some(c1)) = (c0, proc_cpu_secs(pid)) {
                *round.proc_cpu.entry(role).or_default() += c1 - c0;
            }
        }
        rt.ids.extend(ids.iter().cloned());
        if let Some(e) = err {
            return Err(e.context(format!(
                "{} throughput; log {}",
                t.target.label(),
                rt.d.log.display()
            )));
        }
        if !remove {
            // untimed: the batch goes, 8 at a time
            for chunk in ids.chunks(8) {
                let mut set = JoinSet::new();
                for id in chunk {
                    let (cri, id) = (rt.d.cri.clone(), id.clone());
                    set.spawn(async move { cri.remove_container(&id).await });
                }
                while let Some(j) = set.join_next().await {
                    j??;
                }
            }
            for id in &ids {
                rt.exits.forget(id);
            }
        }
        done += n;
    }
    round.cpu = cpu_acc;
    Ok(round)
}

/// The runtime's own long-lived processes, by role.
fn runtime_pids(rt: &Rt) -> Vec<(&'static str, i32)> {
    let mut v: Vec<(&'static str, i32)> =
        rt.d.pid()
            .map(|p| {
                (
                    if rt.kind == Kind::Unicri {
                        "daemon"
                    } else {
                        "containerd"
                    },
                    p,
                )
            })
            .into_iter()
            .collect();
    v.extend(rt.keepers());
    if rt.kind == Kind::Containerd {
        let sock = rt.d.socket.to_string_lossy();
        v.extend(
            procs::find_processes("containerd-shim", sock.as_ref())
                .into_iter()
                .map(|p| ("shim", p)),
        );
    }
    v
}

/// Phase 4: `args.instances` sleeping modules in one wasm pod.
async fn memory(args: &WasmArgs, env: &mut Env, imgs: &Images) -> Result<MemPhase> {
    let n = args.instances;
    eprintln!("phase 4: memory of {n} sleeping wasm instances");
    let ri = env
        .rts
        .iter()
        .position(|r| r.kind == Kind::Unicri)
        .context("unicri runtime")?;
    let rt = &mut env.rts[ri];
    let image = rt.d.cri.pull(&imgs.sleeper).await?;
    let pod_cfg = prepare_pod(&rt.logs, "mem")?;
    let pod = rt.d.cri.run_pod_with(pod_cfg.clone(), WASM_HANDLER).await?;
    rt.ids.insert(pod.clone());
    let t = Tgt {
        target: Target::Wasm,
        rt: ri,
        pod: pod.clone(),
        pod_cfg,
        image: image.clone(),
        command: Vec::new(),
    };
    // the first instance: keeper up, sleeper module loaded
    let first =
        rt.d.cri
            .create_container(&pod, t.config(&image, "sleep-first"), t.pod_cfg.clone())
            .await?;
    rt.d.cri.start_container(&first).await?;
    rt.ids.insert(first.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keeper = rt
        .wasm_keeper()
        .context("no wasm keeper with a sleeping instance")?;
    let daemon = rt.d.pid().context("daemon pid")?;
    let sample = |pid: i32| async move {
        let mut v = Vec::new();
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            v.extend(mem_of(pid));
        }
        v.sort_by_key(|m| m.pss);
        v.get(v.len() / 2).copied()
    };
    let keeper_before = sample(keeper).await.context("keeper smaps_rollup")?;
    let daemon_before = sample(daemon).await.context("daemon smaps_rollup")?;
    let threads_before = threads_of(keeper).unwrap_or(0);
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id =
            rt.d.cri
                .create_container(
                    &pod,
                    t.config(&image, &format!("sleep-{i}")),
                    t.pod_cfg.clone(),
                )
                .await?;
        rt.d.cri.start_container(&id).await?;
        rt.ids.insert(id.clone());
        ids.push(id);
    }
    let start_all = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // all still running
    let listed = rt.d.cri.list_containers().await?;
    let running = listed
        .iter()
        .filter(|(id, _, st)| ids.contains(id) && *st == v1::ContainerState::ContainerRunning)
        .count();
    ensure!(
        running == n,
        "{running} of {n} sleeping instances are RUNNING; log {}",
        rt.d.log.display()
    );
    ensure!(
        rt.wasm_keeper() == Some(keeper),
        "the wasm keeper changed during the memory phase"
    );
    let keeper_after = sample(keeper).await.context("keeper smaps_rollup")?;
    let daemon_after = sample(daemon).await.context("daemon smaps_rollup")?;
    let threads_after = threads_of(keeper).unwrap_or(0);
    let working_set = rt.d.cri.container_working_set(&ids[0]).await.ok().flatten();
    eprintln!(
        "  keeper PSS {:.1} → {:.1} MiB, RSS {:.1} → {:.1} MiB ({} → {} threads); {:.0} KiB PSS per instance",
        keeper_before.pss as f64 / 1024.0,
        keeper_after.pss as f64 / 1024.0,
        keeper_before.rss as f64 / 1024.0,
        keeper_after.rss as f64 / 1024.0,
        threads_before,
        threads_after,
        (keeper_after.pss as f64 - keeper_before.pss as f64) / n as f64
    );
    rt.d.cri.stop_pod(&pod).await?;
    rt.d.cri.remove_pod(&pod).await?;
    Ok(MemPhase {
        instances: n,
        keeper_pid: keeper,
        keeper_before,
        keeper_after,
        threads_before,
        threads_after,
        daemon_before,
        daemon_after,
        working_set,
        start_all,
    })
}

async fn leak_checks(env: &Env, res: &mut Results) {
    for rt in &env.rts {
        match rt.remove_all().await {
            Ok(0) => {}
            Ok(n) => res
                .findings
                .push(format!("{}: {n} pod(s) left at the end", rt.kind)),
            Err(e) => res.findings.push(format!("{e:#}")),
        }
        if let Err(e) = rt.wait_idle().await {
            res.findings.push(format!("{e:#}"));
        }
        let v = rt.net.veths();
        if v != 0 {
            res.findings.push(format!(
                "{}: {v} interface(s) still on bridge {}",
                rt.kind, rt.net.bridge
            ));
        }
        let ips = rt.net.reserved_ips();
        if !ips.is_empty() {
            res.findings
                .push(format!("{}: host-local still reserves {ips:?}", rt.kind));
        }
        let cg = pods::cgroups_named_after(&rt.ids);
        if !cg.is_empty() {
            res.findings.push(format!(
                "{}: cgroups named after its pods/containers left: {cg:?}",
                rt.kind
            ));
        }
        // the daemon's pin directories (bound onto themselves while it runs) are no leak;
        // whatever is left once it stopped is reported by the final cleanup
        let pins = [rt.d.state.join("netns"), rt.d.state.join("pods")];
        for d in [&rt.d.root, &rt.d.state] {
            let m: Vec<String> = procs::mounts_under(d)
                .into_iter()
                .filter(|m| !pins.iter().any(|p| Path::new(m) == p))
                .collect();
            if !m.is_empty() {
                res.findings.push(format!(
                    "{}: mounts left under {}: {m:?}",
                    rt.kind,
                    d.display()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn ms(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2}", s * 1e3)
    } else {
        format!("{:.1}", s * 1e3)
    }
}

fn median_f(v: &[f64]) -> Option<f64> {
    pct(v, 0.5)
}

fn rates(v: Option<&Vec<Round>>) -> Option<f64> {
    v.and_then(|v| median_f(&v.iter().map(Round::rate).collect::<Vec<_>>()))
}

/// CPU ms of the whole machine per container (median round).
fn cpu_per(v: Option<&Vec<Round>>) -> Option<f64> {
    v.and_then(|v| {
        median_f(
            &v.iter()
                .filter_map(|r| r.cpu.map(|c| c / r.containers as f64))
                .collect::<Vec<_>>(),
        )
    })
}

struct Row {
    name: String,
    cells: BTreeMap<Target, Option<f64>>,
    /// How the cells print: "ms" (values in s), "rate", "kib".
    unit: &'static str,
    /// Divide by containerd's value of the same row (else `ratio_to`).
    ratio: bool,
    /// Ratio of the wasm cell against this value instead (cold vs containerd's warm).
    ratio_to: Option<f64>,
    goal: String,
}

fn rows(args: &WasmArgs, res: &Results) -> Vec<Row> {
    let p = |v: Option<&Vec<Duration>>, q: f64| v.and_then(|v| pct(&secs(v), q));
    let by = |f: &dyn Fn(Target) -> Option<f64>| {
        [Target::Wasm, Target::Linux, Target::Containerd]
            .into_iter()
            .map(|t| (t, f(t)))
            .collect::<BTreeMap<_, _>>()
    };
    let only_wasm = |v: Option<f64>| by(&|t| if t == Target::Wasm { v } else { None });
    let ctrd_warm = p(res.warm.get(&Target::Containerd).map(|r| &r.total), 0.5);
    let n_warm = args.warm;
    let daemon_goal = |v: Option<f64>| match v {
        Some(x) if x * 1e3 <= GOAL_DAEMON_MS => format!("≤ {GOAL_DAEMON_MS} ms: **met**"),
        Some(x) => format!(
            "≤ {GOAL_DAEMON_MS} ms: **missed** ({:.1}× the goal)",
            x * 1e3 / GOAL_DAEMON_MS
        ),
        None => "–".into(),
    };
    let wasm_create = p(res.warm.get(&Target::Wasm).map(|r| &r.create), 0.5);
    let wasm_start = p(res.warm.get(&Target::Wasm).map(|r| &r.start), 0.5);
    let quiet_create = p(res.quiet.get(&Target::Wasm).map(|r| &r.create), 0.5);
    let quiet_start = p(res.quiet.get(&Target::Wasm).map(|r| &r.start), 0.5);
    let rate_goal = |v: Option<f64>| match v {
        Some(r) if r >= GOAL_RATE => format!("≥ {GOAL_RATE:.0}/s: **met**"),
        Some(r) => format!(
            "≥ {GOAL_RATE:.0}/s: **missed** ({:.0} % of it; runwasi: {RUNWASI_RATE:.0}/s)",
            r / GOAL_RATE * 100.0
        ),
        None => "–".into(),
    };
    let tput_wasm = rates(res.tput.get(&Target::Wasm));
    let mem_per = res.mem.as_ref().map(|m| {
        (m.keeper_after.pss as f64 - m.keeper_before.pss as f64) / m.instances.max(1) as f64
    });
    let rss_per = res.mem.as_ref().map(|m| {
        (m.keeper_after.rss as f64 - m.keeper_before.rss as f64) / m.instances.max(1) as f64
    });
    vec![
        Row {
            name: format!(
                "cold: create + start → exited, p50 ({} runs)",
                res.cold.total.len()
            ),
            cells: only_wasm(p(Some(&res.cold.total), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: ctrd_warm,
            goal: "–".into(),
        },
        Row {
            name: "cold: create + start → exited, p90".into(),
            cells: only_wasm(p(Some(&res.cold.total), 0.9)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: "cold: CreateContainer p50 (compiles)".into(),
            cells: only_wasm(p(Some(&res.cold.create), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: "cold: StartContainer p50".into(),
            cells: only_wasm(p(Some(&res.cold.start), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: format!("warm: create + start → exited, p50 ({n_warm} runs)"),
            cells: by(&|t| p(res.warm.get(&t).map(|r| &r.total), 0.5)),
            unit: "ms",
            ratio: true,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: "warm: create + start → exited, p90".into(),
            cells: by(&|t| p(res.warm.get(&t).map(|r| &r.total), 0.9)),
            unit: "ms",
            ratio: true,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: "warm: CreateContainer p50".into(),
            cells: by(&|t| p(res.warm.get(&t).map(|r| &r.create), 0.5)),
            unit: "ms",
            ratio: true,
            ratio_to: None,
            goal: daemon_goal(wasm_create),
        },
        Row {
            name: "warm: StartContainer p50".into(),
            cells: by(&|t| p(res.warm.get(&t).map(|r| &r.start), 0.5)),
            unit: "ms",
            ratio: true,
            ratio_to: None,
            goal: daemon_goal(wasm_start),
        },
        Row {
            name: "warm, no event subscriber: CreateContainer p50".into(),
            cells: by(&|t| p(res.quiet.get(&t).map(|r| &r.create), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: daemon_goal(quiet_create),
        },
        Row {
            name: "warm, no event subscriber: StartContainer p50".into(),
            cells: by(&|t| p(res.quiet.get(&t).map(|r| &r.start), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: daemon_goal(quiet_start),
        },
        Row {
            name: format!(
                "keeper had exited (module from the disk cache): create + start → exited, p50 ({} runs)",
                res.disk_warm.total.len()
            ),
            cells: only_wasm(p(Some(&res.disk_warm.total), 0.5)),
            unit: "ms",
            ratio: false,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: format!(
                "throughput, {} workers, create → start → exited → remove (containers/s, median of {})",
                args.workers, args.throughput_rounds
            ),
            cells: by(&|t| rates(res.tput.get(&t))),
            unit: "rate",
            ratio: true,
            ratio_to: None,
            goal: rate_goal(tput_wasm),
        },
        Row {
            name: format!(
                "throughput, remove outside the timed batches of {} (containers/s)",
                args.batch
            ),
            cells: by(&|t| rates(res.tput_no_remove.get(&t))),
            unit: "rate",
            ratio: true,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name:
                "busy CPU of the whole machine (bench client included) per container, with remove"
                    .into(),
            cells: by(&|t| cpu_per(res.tput.get(&t))),
            unit: "ms",
            ratio: true,
            ratio_to: None,
            goal: "–".into(),
        },
        Row {
            name: format!(
                "wasm keeper PSS per sleeping instance ({} instances)",
                res.mem.as_ref().map(|m| m.instances).unwrap_or(0)
            ),
            cells: only_wasm(mem_per),
            unit: "kib",
            ratio: false,
            ratio_to: None,
            goal: match mem_per {
                Some(k) if k <= GOAL_INSTANCE_KIB => "≤ 1 MiB: **met**".into(),
                Some(k) => format!("≤ 1 MiB: **missed** ({:.1}×)", k / GOAL_INSTANCE_KIB),
                None => "–".into(),
            },
        },
        Row {
            name: "wasm keeper RSS per sleeping instance".into(),
            cells: only_wasm(rss_per),
            unit: "kib",
            ratio: false,
            ratio_to: None,
            goal: "–".into(),
        },
    ]
}

fn summary_table(args: &WasmArgs, targets: &[Target], res: &Results) -> String {
    let mut s = String::from("| measure |");
    for t in targets {
        let _ = write!(s, " {} |", t.label());
    }
    let with_ctrd = targets.contains(&Target::Containerd);
    if with_ctrd {
        for t in targets.iter().filter(|t| **t != Target::Containerd) {
            let _ = write!(
                s,
                " {} / containerd |",
                t.label().trim_start_matches("unicri ")
            );
        }
    }
    s.push_str(" goal (wasm) |\n|---|");
    for _ in targets {
        s.push_str("---:|");
    }
    if with_ctrd {
        for _ in targets.iter().filter(|t| **t != Target::Containerd) {
            s.push_str("---:|");
        }
    }
    s.push_str("---|\n");
    for row in rows(args, res) {
        let fmt = |v: Option<f64>| match (v, row.unit) {
            (None, _) => "–".to_string(),
            (Some(x), "ms") => format!("{} ms", ms(x)),
            (Some(x), "rate") => format!("{x:.0} /s"),
            (Some(x), _) => format!("{x:.0} KiB"),
        };
        let _ = write!(s, "| {} |", row.name);
        for t in targets {
            let _ = write!(s, " {} |", fmt(row.cells.get(t).copied().flatten()));
        }
        if with_ctrd {
            let c = row.cells.get(&Target::Containerd).copied().flatten();
            for t in targets.iter().filter(|t| **t != Target::Containerd) {
                let v = row.cells.get(t).copied().flatten();
                let r = match (v, c, row.ratio, row.ratio_to) {
                    (Some(v), Some(c), true, _) if c > 0.0 => format!("{:.3}", v / c),
                    (Some(v), _, false, Some(c)) if c > 0.0 && *t == Target::Wasm => {
                        format!("{:.3}¹", v / c)
                    }
                    _ => "–".into(),
                };
                let _ = write!(s, " {r} |");
            }
        }
        let _ = writeln!(s, " {} |", row.goal);
    }
    s
}

fn dist_line(v: &[Duration]) -> String {
    let s = secs(v);
    match (
        pct(&s, 0.0001),
        pct(&s, 0.5),
        pct(&s, 0.9),
        pct(&s, 0.99),
        pct(&s, 1.0),
    ) {
        (Some(min), Some(p50), Some(p90), Some(p99), Some(max)) => format!(
            "n={} min {} / p50 **{}** / p90 {} / p99 {} / max {} / mean {} ms",
            s.len(),
            ms(min),
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            ms(s.iter().sum::<f64>() / s.len() as f64)
        ),
        _ => "–".into(),
    }
}

fn dist_ms(v: &[f64]) -> String {
    let s: Vec<f64> = v.iter().map(|x| x / 1e3).collect();
    dist_line(
        &s.iter()
            .map(|x| Duration::from_secs_f64(*x))
            .collect::<Vec<_>>(),
    )
}

fn raw(v: &[Duration]) -> String {
    v.iter()
        .map(|d| ms(d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kib_mib(k: u64) -> String {
    format!("{:.1}", k as f64 / 1024.0)
}

/// wasmtime's version from the workspace's Cargo.lock.
fn wasmtime_version() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wasmtime\""
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = "))
        {
            return v.trim_matches('"').to_string();
        }
    }
    "unknown".into()
}

fn markdown(args: &WasmArgs, m: &Meta, targets: &[Target], res: &Results, imgs: &Images) -> String {
    let mut s = String::new();
    s.push_str("## WebAssembly containers (`wasm` handler)\n\n");
    s.push_str(
        "Reproduce (as root; the tool starts unicri, containerd, a registry and CNI bridges of \
         its own and removes them at the end; about 5 minutes on 2 cores):\n\n    \
         cargo build --release -p unicri-cri-server -p unicri-bench\n    \
         apt-get install -y containerd runc docker-registry busybox containernetworking-plugins\n    \
         sudo ./target/release/unicri-bench wasm --out /tmp/wasm.md\n\n",
    );
    let _ = writeln!(
        s,
        "Generated by `unicri-bench wasm` (crate `tests/bench`). Everything over CRI on the \
         daemons' sockets, kubelet-like pod and container configs. **unicri wasm**: a pod with \
         `runtime_handler: \"wasm\"` running the e2e crate's `hello` module (WASI preview 1, \
         {} bytes, prints a line to stdout and one to stderr, returns 0) from a compat image \
         (`/app.wasm`, manifest `{}`). **unicri linux** and **containerd + runc**: a default-handler \
         pod running busybox `true` (Debian's busybox). containerd has no WebAssembly runtime \
         here: runwasi (`containerd-shim-wasmtime`) is not packaged for Debian 12 and was not \
         built, so there is no containerd wasm column; runwasi's own published figure is \
         {RUNWASI_RATE:.0} tasks/s.\n",
        imgs.module_bytes, imgs.hello_digest
    );
    s.push_str(
        "A run is: CreateContainer, StartContainer, then the exit as the runtime pushes it; \
         \"create + start → exited\" runs from the CreateContainer call until the exit event \
         arrived (or StartContainer answered, if the event came first). Exits come from the \
         runtime's push, never from polling: ",
    );
    let srcs: Vec<String> = res
        .exit_sources
        .iter()
        .map(|(k, src)| format!("{k}: {src}"))
        .collect();
    s.push_str(&srcs.join("; "));
    s.push_str(
        ". containerd publishes `/tasks/exit` before its CRI plugin has recorded the exit (a \
         RemoveContainer right after the event fails with \"container is still running\"), so \
         for containerd the run ends when `ContainerStatus`, polled every millisecond from the \
         event on, first says EXITED; that lag is listed below. Each container is removed (untimed) after its run. One exited \"anchor\" container per \
         pod stays for the whole run so that unicri's keepers (which exit 2 s after their last \
         container) and containerd's pod shim are up, as on a busy node. Cold: each run's module \
         differs from all others in one data-segment string, so the keeper compiles it \
         (Cranelift) during CreateContainer. Warm: the same module every time, compiled and \
         pre-linked in the keeper's memory. Targets take turns run by run. Percentiles are \
         nearest-rank.\n\n",
    );
    s.push_str("### Results\n\n");
    s.push_str(&summary_table(args, targets, res));
    s.push_str(
        "\n¹ cold wasm against containerd's (only) create + start → exited p50: runc has no \
         compile step, so that is its \"cold\" too.\n",
    );

    s.push_str("\n### Latency details\n\n");
    let _ = writeln!(
        s,
        "- unicri wasm, cold, create + start → exited: {}",
        dist_line(&res.cold.total)
    );
    let _ = writeln!(
        s,
        "- unicri wasm, cold, CreateContainer: {}",
        dist_line(&res.cold.create)
    );
    let _ = writeln!(
        s,
        "- unicri wasm, cold, StartContainer: {}",
        dist_line(&res.cold.start)
    );
    for t in targets {
        if let Some(r) = res.warm.get(t) {
            let _ = writeln!(
                s,
                "- {}, warm, create + start → exited: {}",
                t.label(),
                dist_line(&r.total)
            );
            let _ = writeln!(
                s,
                "- {}, warm, CreateContainer: {}",
                t.label(),
                dist_line(&r.create)
            );
            let _ = writeln!(
                s,
                "- {}, warm, StartContainer: {}",
                t.label(),
                dist_line(&r.start)
            );
            if !r.lag.is_empty() {
                let _ = writeln!(
                    s,
                    "- {}, warm, from the `/tasks/exit` event until ContainerStatus said EXITED (part of the total above): {}",
                    t.label(),
                    dist_line(&r.lag)
                );
            }
        }
        if let Some(r) = res.quiet.get(t) {
            let _ = writeln!(
                s,
                "- {}, warm, no event subscriber, CreateContainer: {}",
                t.label(),
                dist_line(&r.create)
            );
            let _ = writeln!(
                s,
                "- {}, warm, no event subscriber, StartContainer: {}",
                t.label(),
                dist_line(&r.start)
            );
        }
        if let Some((c, st)) = res.server.get(t) {
            let _ = writeln!(
                s,
                "- {}, same runs, time inside the daemon (its `elapsed_ms` log field), CreateContainer: {}",
                t.label(),
                dist_ms(c)
            );
            let _ = writeln!(
                s,
                "- {}, same runs, time inside the daemon, StartContainer: {}",
                t.label(),
                dist_ms(st)
            );
        }
    }
    if !res.disk_warm.total.is_empty() {
        let _ = writeln!(
            s,
            "- unicri wasm, right after the wasm keeper exited (keeper spawned again, module read from `cache/*.cwasm`), create + start → exited: {}",
            dist_line(&res.disk_warm.total)
        );
        let _ = writeln!(
            s,
            "- unicri wasm, same, CreateContainer: {}",
            dist_line(&res.disk_warm.create)
        );
    }
    for (k, v) in &res.version_rtt {
        let _ = writeln!(
            s,
            "- {k}, CRI `Version` round trip (the floor of any RPC): {}",
            dist_line(v)
        );
    }
    for (t, v) in &res.status_rtt {
        let _ = writeln!(
            s,
            "- {}, `ContainerStatus` of the exited anchor (gRPC + the runtime's store{}): {}",
            t.label(),
            if t.kind() == Kind::Unicri {
                " (SQLite) + a keeper `state` call"
            } else {
                ""
            },
            dist_line(v)
        );
    }
    if let Some((up, down)) = &res.overlay {
        let _ = writeln!(
            s,
            "- the bench itself, on unicri's root: mkdir rootfs/upper/work + overlay mount of the hello image's layer (what CreateContainer does for a wasm container too): {}",
            dist_line(up)
        );
        let _ = writeln!(
            s,
            "- the bench itself: umount + remove of that container dir (RemoveContainer's part): {}",
            dist_line(down)
        );
    }
    if !res.keeper_ping.is_empty() {
        let _ = writeln!(
            s,
            "- unicri wasm keeper, `ping` on `keeper.sock` (one connection per call, as the daemon makes them): {}",
            dist_line(&res.keeper_ping)
        );
    }

    s.push_str("\n### Throughput rounds\n\n");
    let _ = writeln!(
        s,
        "{} workers in one pod per target, {} containers per round; each worker loops create → \
         start → wait for the exit event → remove. \"Remove outside\": the same loop without the \
         remove, the round split in batches of {} whose containers are removed (untimed) \
         between batches, so that a pod never holds more than a batch of exited containers. CPU: \
         busy time of the whole machine ({} cores) during the timed part, and of the runtime's \
         own long-lived processes (utime + stime, with their reaped children's: unicri's \
         keepers reap the containers and libcontainer's workers, containerd's pod shim reaps \
         runc and the containers).\n",
        args.workers, args.total, args.batch, m.nproc
    );
    s.push_str("| target | variant | round | containers/s | wall s | machine CPU ms / container | own processes CPU ms / container | create + start → exited p50 / p90 ms |\n|---|---|---:|---:|---:|---:|---|---:|\n");
    for t in targets {
        for (variant, map) in [
            ("with remove", &res.tput),
            ("remove outside", &res.tput_no_remove),
        ] {
            for (i, r) in map.get(t).into_iter().flatten().enumerate() {
                let each = secs(&r.each);
                let own = r
                    .proc_cpu
                    .iter()
                    .map(|(k, v)| format!("{k} {:.2}", v * 1e3 / r.containers as f64))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    s,
                    "| {} | {variant} | {} | {:.0} | {:.2} | {} | {own} | {} / {} |",
                    t.label(),
                    i + 1,
                    r.rate(),
                    r.wall.as_secs_f64(),
                    r.cpu
                        .map(|c| format!("{:.2}", c * 1e3 / r.containers as f64))
                        .unwrap_or_else(|| "–".into()),
                    pct(&each, 0.5).map(ms).unwrap_or_default(),
                    pct(&each, 0.9).map(ms).unwrap_or_default(),
                );
            }
        }
    }

    if let Some(mm) = &res.mem {
        s.push_str("\n### Memory of sleeping instances\n\n");
        let _ = writeln!(
            s,
            "One wasm pod; the module is the e2e crate's `ticker({}, {})` (prints `tick 0`, then \
             sleeps an hour in `poll_oneoff`), compat image. \"Before\": one instance running (the \
             keeper up, the module loaded); \"after\": {} more started (serially, {:.2} s in all) \
             and 2 s later. Each value is the median of three samples 300 ms apart, from \
             `/proc/<pid>/smaps_rollup`. The wasm keeper is pid {} (`unicri wasm-keeper --dir \
             <state>/wasm-keeper`).\n",
            SLEEPER.0,
            SLEEPER.1,
            mm.instances,
            mm.start_all.as_secs_f64(),
            mm.keeper_pid
        );
        s.push_str("| process | when | RSS MiB | PSS MiB | PSS anon MiB | PSS file MiB | threads |\n|---|---|---:|---:|---:|---:|---:|\n");
        for (p, when, x, th) in [
            (
                "wasm keeper",
                "before",
                mm.keeper_before,
                Some(mm.threads_before),
            ),
            (
                "wasm keeper",
                "after",
                mm.keeper_after,
                Some(mm.threads_after),
            ),
            ("daemon", "before", mm.daemon_before, None),
            ("daemon", "after", mm.daemon_after, None),
        ] {
            let _ = writeln!(
                s,
                "| {p} | {when} | {} | {} | {} | {} | {} |",
                kib_mib(x.rss),
                kib_mib(x.pss),
                kib_mib(x.pss_anon),
                kib_mib(x.pss_file),
                th.map(|t| t.to_string()).unwrap_or_else(|| "–".into())
            );
        }
        let n = mm.instances.max(1) as f64;
        let per = |a: u64, b: u64| (b as f64 - a as f64) / n;
        let _ = writeln!(
            s,
            "\nPer instance ((after − before) / {}): wasm keeper PSS {:.0} KiB (anon {:.0}), RSS {:.0} KiB; daemon PSS {:.1} KiB, RSS {:.1} KiB.",
            mm.instances,
            per(mm.keeper_before.pss, mm.keeper_after.pss),
            per(mm.keeper_before.pss_anon, mm.keeper_after.pss_anon),
            per(mm.keeper_before.rss, mm.keeper_after.rss),
            per(mm.daemon_before.pss, mm.daemon_after.pss),
            per(mm.daemon_before.rss, mm.daemon_after.rss),
        );
        if let Some(ws) = mm.working_set {
            let _ = writeln!(
                s,
                "ContainerStats of one instance reports a working set of {:.0} KiB.",
                ws as f64 / 1024.0
            );
        }
    }

    s.push_str("\n### Keeper and leak checks\n\n");
    let pids: Vec<String> = res
        .keeper_pids
        .iter()
        .map(|(w, p)| {
            format!(
                "{w}: {}",
                p.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
            )
        })
        .collect();
    let _ = writeln!(s, "- wasm keeper pid {}.", pids.join("; "));
    s.push_str(
        "- after the last phase: no pod or container listed, no keeper or shim left, no \
         interface on either bridge, no address reserved by host-local, no cgroup named after a \
         pod or container id, no mount under either daemon's root or state dir: ",
    );
    if res.findings.is_empty() {
        s.push_str("all clean.\n");
    } else {
        s.push_str("**not clean**:\n");
        for f in &res.findings {
            let _ = writeln!(s, "  - **{f}**");
        }
    }

    s.push('\n');
    s.push_str(&report::machine_and_versions(m));
    let _ = writeln!(s, "- wasmtime: {} (Cargo.lock)", wasmtime_version());

    s.push_str("\n### Configuration\n\n");
    let _ = writeln!(
        s,
        "- images: `{}` (hello, compat), `{}` … (the cold variants, {} of them), `{}` (sleeper), \
         `{}` (busybox, command `true`), `{}` (containerd's `sandbox_image`).",
        imgs.hello,
        imgs.cold.first().map(String::as_str).unwrap_or("-"),
        imgs.cold.len(),
        imgs.sleeper,
        imgs.busybox,
        imgs.pause
    );
    let _ = writeln!(
        s,
        "- daemons as in the pods benchmark (own roots, own CNI bridge and /24 each: bridge + \
         host-local + portmap); unicri with `UNICRI_LOG={}`.",
        args.unicri_log.as_deref().unwrap_or("info (default)")
    );
    let _ = writeln!(
        s,
        "- run: {} cold, {} warmup + {} warm per target, {} keeper-exited runs, {} throughput \
         round(s) of {} containers with {} workers (batches of {} without remove), {} sleeping \
         instances.",
        args.cold,
        args.warmup,
        args.warm,
        args.disk_warm,
        args.throughput_rounds,
        args.total,
        args.workers,
        args.batch,
        args.instances
    );

    s.push_str("\n### Raw samples (create + start → exited, ms)\n\n");
    let _ = writeln!(s, "- cold / unicri wasm: {}", raw(&res.cold.total));
    for t in targets {
        if let Some(r) = res.warm.get(t) {
            let _ = writeln!(s, "- warm / {}: {}", t.label(), raw(&r.total));
        }
    }
    if !res.disk_warm.total.is_empty() {
        let _ = writeln!(
            s,
            "- keeper exited / unicri wasm: {}",
            raw(&res.disk_warm.total)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_hello_changes_only_the_line() {
        let h = modules::hello().unwrap();
        let a = unique_hello(&h, 1).unwrap();
        let b = unique_hello(&h, 2).unwrap();
        assert_eq!(a.len(), h.len());
        assert_ne!(a, b);
        assert_ne!(a, h);
        modules::check_core_module(&a).unwrap();
        assert!(a.windows(15).any(|w| w == b"cold-0000000001"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), Some(50.0));
        assert_eq!(pct(&v, 0.9), Some(90.0));
        assert_eq!(pct(&v, 1.0), Some(100.0));
        assert_eq!(pct(&[], 0.5), None);
    }

    #[test]
    fn rpc_elapsed_from_log_lines() {
        let log = "2026-11-22T10:00:00.000001Z  INFO \u{1b}[1mrpc\u{1b}[0m{rpc=\"CreateContainer\"}: unicri::instrument: ok elapsed_ms=1.25\n\
                   2026-11-22T10:00:00.000002Z  INFO rpc{rpc=\"StartContainer\"}: unicri::instrument: ok elapsed_ms=0.5\n\
                   2026-11-22T10:00:00.000003Z  INFO rpc{rpc=\"CreateContainer\"}: x: failed elapsed_ms=9\n";
        assert_eq!(rpc_elapsed(log, "CreateContainer"), vec![1.25]);
        assert_eq!(rpc_elapsed(log, "StartContainer"), vec![0.5]);
    }

    #[test]
    fn rotation_rotates() {
        assert_eq!(rotation(3, 0), vec![0, 1, 2]);
        assert_eq!(rotation(3, 1), vec![1, 2, 0]);
    }
}
