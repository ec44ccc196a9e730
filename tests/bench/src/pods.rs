//! `unicri-bench pods`: pod sandboxes and containers, unicri vs containerd + runc, over CRI.
//!
//! Both runtimes get the same CNI conflist (bridge + host-local + portmap, each its own bridge
//! and /24), the same busybox image from a local registry, and kubelet-like configs. Phases:
//! warmup, pod + container starts on a runtime with no other pod ("cold"), then with one idle
//! pod kept running ("anchor", the steady state of a node): serial RunPodSandbox calls, serial
//! pod + container starts; then rounds of N pods started in parallel, with the management
//! processes' PSS at 0 and N pods. Runtimes alternate which goes first in every round.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::task::JoinSet;
use unicri_e2e::oci::{Compression, Entry, ImageBuilder, Layer, busybox_layer};
use unicri_e2e::registry::{REGISTRY_BIN, Registry};
use unicri_proto::v1;

use crate::PodsArgs;
use crate::cri::Cri;
use crate::procs::{self, ProcInfo};
use crate::report::{self, Meta};
use crate::runtimes::{self, Daemon, Extras, Kind};

/// containerd's pause process: busybox `sleep`, alone in the sandbox container. containerd 1.6
/// stops a sandbox container with SIGKILL, so the pause needs no signal handling.
const PAUSE_CMD: [&str; 2] = ["/bin/sleep", "2147483647"];
/// The workload of every container.
const WORKLOAD_CMD: [&str; 2] = ["sleep", "3600"];
/// Kubernetes namespace of the benchmark's pods.
pub(crate) const NAMESPACE: &str = "bench";
/// How long a runtime may take to drop its per-pod processes (unicri's keeper exits ~2 s after
/// its last container; containerd's shims exit once their pod is removed).
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Kubelet's default masked and read-only paths of an unprivileged container.
const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Issue goals, unicri / containerd.
const GOAL_POD_CONTAINER: f64 = 0.33;
const GOAL_PARALLEL: f64 = 0.4;
const GOAL_MEMORY: f64 = 0.05;

static NEXT_UID: AtomicU64 = AtomicU64::new(0);

/// A pod name/uid pair unique to this run.
fn unique(prefix: &str, kind: Kind) -> (String, String) {
    let n = NEXT_UID.fetch_add(1, Ordering::Relaxed);
    (
        format!("{prefix}-{kind}-{n}"),
        format!("{:08x}-{n:06}", std::process::id()),
    )
}

/// One runtime's pod network: its own bridge, /24 and IPAM data dir.
#[derive(Clone, Debug)]
pub(crate) struct Net {
    /// Network name in the conflist.
    pub(crate) name: String,
    /// Bridge device.
    pub(crate) bridge: String,
    /// First three octets of the /24.
    pub(crate) subnet: String,
    /// `net.d/` (the conflist).
    pub(crate) conf_dir: PathBuf,
    /// host-local's data dir.
    pub(crate) ipam_dir: PathBuf,
}

impl Net {
    pub(crate) fn new(kind: Kind, work: &Path) -> Result<Net> {
        let (bridge, subnet) = match kind {
            Kind::Unicri => ("ubench-unicri", "10.253.0"),
            Kind::Containerd => ("ubench-ctrd", "10.254.0"),
        };
        let dir = work.join(format!("cni-{kind}"));
        let net = Net {
            name: format!("bench-{kind}"),
            bridge: bridge.into(),
            subnet: subnet.into(),
            conf_dir: dir.join("net.d"),
            ipam_dir: dir.join("ipam"),
        };
        if Path::new("/sys/class/net").join(&net.bridge).exists() {
            bail!(
                "network device {} already exists (a previous run's leftover? `ip link del {}`)",
                net.bridge,
                net.bridge
            );
        }
        std::fs::create_dir_all(&net.conf_dir)?;
        std::fs::write(net.conf_dir.join("10-bench.conflist"), net.conflist())?;
        Ok(net)
    }

    /// The conflist: the same for both runtimes except the name, bridge, subnet and data dir.
    pub(crate) fn conflist(&self) -> String {
        format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "{name}",
  "plugins": [
    {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
     "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}.0/24"}}]], "dataDir": "{ipam}"}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
            name = self.name,
            bridge = self.bridge,
            subnet = self.subnet,
            ipam = self.ipam_dir.display(),
        )
    }

    pub(crate) fn veths(&self) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Addresses host-local still holds (files named after an IP in its data dir).
    pub(crate) fn reserved_ips(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.ipam_dir.join(&self.name)) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }
}

/// A runtime under test.
struct Rt {
    kind: Kind,
    d: Daemon,
    net: Net,
    /// The busybox image as PullImage answered (kubelet passes that to CreateContainer).
    image: String,
    /// Parent of the pods' log directories.
    logs: PathBuf,
    /// unicri: (dev, ino) of the daemon's executable.
    exe: Option<(u64, u64)>,
    /// unicri: the keeper's dir (`<state>/keeper`), an argument of `unicri keeper`.
    keeper_dir: String,
    /// Every pod and container id created (for the cgroup leak scan).
    ids: HashSet<String>,
}

/// A pod with one container, started.
struct Started {
    took: Duration,
    pod: String,
    container: String,
}

fn namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: v1::NamespaceMode::Container as i32,
        ipc: v1::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A kubelet-like pod config (BestEffort pod, cgroupfs, no cgroup parent).
pub(crate) fn pod_config(logs: &Path, name: &str, uid: &str) -> v1::PodSandboxConfig {
    let labels = [
        ("io.kubernetes.pod.name", name),
        ("io.kubernetes.pod.namespace", NAMESPACE),
        ("io.kubernetes.pod.uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs
            .join(format!("{NAMESPACE}_{name}_{uid}"))
            .display()
            .to_string(),
        dns_config: Some(v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                format!("{NAMESPACE}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        labels,
        annotations: [("kubernetes.io/config.source".to_string(), "api".to_string())]
            .into_iter()
            .collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A kubelet-like container config: `sleep 3600`, BestEffort resources.
pub(crate) fn container_config(image: &str, pod: &v1::PodSandboxConfig) -> v1::ContainerConfig {
    let mut labels = pod.labels.clone();
    labels.insert("io.kubernetes.container.name".into(), "main".into());
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: WORKLOAD_CMD.iter().map(|s| s.to_string()).collect(),
        log_path: "main/0.log".into(),
        labels,
        annotations: [(
            "io.kubernetes.container.restartCount".to_string(),
            "0".to_string(),
        )]
        .into_iter()
        .collect(),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                masked_paths: MASKED.iter().map(|s| s.to_string()).collect(),
                readonly_paths: READONLY.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Kubelet's part before RunPodSandbox (untimed): the pod's log directory.
fn prepare(logs: &Path, prefix: &str, kind: Kind) -> Result<v1::PodSandboxConfig> {
    let (name, uid) = unique(prefix, kind);
    let cfg = pod_config(logs, &name, &uid);
    std::fs::create_dir_all(&cfg.log_directory)?;
    Ok(cfg)
}

/// RunPodSandbox + CreateContainer + StartContainer (timed together).
async fn start_pod(cri: &Cri, image: &str, cfg: v1::PodSandboxConfig) -> Result<Started> {
    let ccfg = container_config(image, &cfg);
    let t0 = Instant::now();
    let pod = cri.run_pod(cfg.clone()).await?;
    let container = cri.create_container(&pod, ccfg, cfg).await?;
    cri.start_container(&container).await?;
    Ok(Started {
        took: t0.elapsed(),
        pod,
        container,
    })
}

/// StopPodSandbox + RemovePodSandbox.
async fn remove_pod(cri: &Cri, id: &str) -> Result<()> {
    cri.stop_pod(id).await?;
    cri.remove_pod(id).await
}

/// Removes every pod of the runtime; fails if any pod or container is listed afterwards.
async fn remove_all(rt: &Rt) -> Result<usize> {
    let pods = rt.d.cri.list_pods().await?;
    for p in &pods {
        remove_pod(&rt.d.cri, p).await?;
    }
    let left = rt.d.cri.list_pods().await?;
    let ctrs = rt.d.cri.list_containers().await?;
    ensure!(
        left.is_empty() && ctrs.is_empty(),
        "{}: after removing every pod, ListPodSandbox still lists {left:?} and ListContainers {ctrs:?}",
        rt.kind
    );
    Ok(pods.len())
}

/// Checks a pod is READY with an address of its runtime's subnet.
async fn check_pod(rt: &Rt, pod: &str) -> Result<()> {
    let (ready, ip) = rt.d.cri.pod_status(pod).await?;
    ensure!(ready, "{}: pod {pod} is not READY", rt.kind);
    ensure!(
        ip.starts_with(&format!("{}.", rt.net.subnet)),
        "{}: pod {pod} has IP {ip:?}, not one of {}.0/24",
        rt.kind,
        rt.net.subnet
    );
    Ok(())
}

/// Checks the listed containers hold `ids`, all RUNNING.
async fn check_running(rt: &Rt, ids: &[&str]) -> Result<()> {
    let listed = rt.d.cri.list_containers().await?;
    for id in ids {
        match listed.iter().find(|(c, _, _)| c == id) {
            Some((_, _, v1::ContainerState::ContainerRunning)) => {}
            Some((_, _, st)) => bail!("{}: container {id} is {st:?}, not RUNNING", rt.kind),
            None => bail!("{}: container {id} is not listed", rt.kind),
        }
    }
    Ok(())
}

/// PSS of one role's processes.
#[derive(Clone, Copy, Debug, Default)]
struct RoleMem {
    processes: usize,
    /// KiB: all, anonymous (heap, stacks), file-backed (binary text and data, libraries).
    pss: u64,
    anon: u64,
    file: u64,
}

/// PSS of the management processes, by role.
#[derive(Clone, Debug, Default)]
struct Mem {
    roles: BTreeMap<&'static str, RoleMem>,
    /// Workload processes seen below the management processes (not counted).
    workloads: usize,
}

impl Mem {
    fn total_kib(&self) -> u64 {
        self.roles.values().map(|r| r.pss).sum()
    }

    fn add(&mut self, role: &'static str, pids: &[i32]) {
        let e = self.roles.entry(role).or_default();
        for &p in pids {
            if let Some((pss, anon, file)) = procs::pss_kib(p) {
                e.processes += 1;
                e.pss += pss;
                e.anon += anon;
                e.file += file;
            }
        }
    }

    fn describe(&self) -> String {
        self.roles
            .iter()
            .map(|(r, m)| format!("{r}: {} × = {:.1} MiB", m.processes, m.pss as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The processes that manage `rt`'s pods, by role, and the workloads below them.
fn management(rt: &Rt, ps: &[ProcInfo]) -> (Vec<(&'static str, Vec<i32>)>, usize) {
    let daemon: Vec<i32> = rt.d.pid().into_iter().collect();
    match rt.kind {
        Kind::Unicri => {
            let keepers: Vec<i32> = ps
                .iter()
                .filter(|p| {
                    p.exe.is_some()
                        && p.exe == rt.exe
                        && p.argv.get(1).is_some_and(|a| a == "keeper")
                        && p.argv.iter().any(|a| a == &rt.keeper_dir)
                })
                .map(|p| p.pid)
                .collect();
            let mut forks = Vec::new();
            let mut workloads = 0;
            for pid in procs::with_descendants(ps, &keepers) {
                if keepers.contains(&pid) {
                    continue;
                }
                match ps.iter().find(|p| p.pid == pid) {
                    Some(p) if p.exe.is_some() && p.exe == rt.exe => forks.push(pid),
                    _ => workloads += 1,
                }
            }
            let keeper_tree = procs::with_descendants(ps, &keepers);
            let daemon_children: Vec<i32> = procs::with_descendants(ps, &daemon)
                .into_iter()
                .filter(|pid| !daemon.contains(pid) && !keeper_tree.contains(pid))
                .filter(|pid| {
                    ps.iter()
                        .any(|p| p.pid == *pid && p.exe.is_some() && p.exe == rt.exe)
                })
                .collect();
            let mut roles = vec![("daemon", daemon), ("keeper", keepers)];
            if !forks.is_empty() {
                roles.push(("keeper forks (pod init)", forks));
            }
            if !daemon_children.is_empty() {
                roles.push(("daemon children", daemon_children));
            }
            (roles, workloads)
        }
        Kind::Containerd => {
            let sock = rt.d.socket.to_string_lossy().to_string();
            let shims: Vec<i32> = ps
                .iter()
                .filter(|p| {
                    p.argv.first().is_some_and(|a0| {
                        a0.rsplit('/')
                            .next()
                            .is_some_and(|n| n.starts_with("containerd-shim"))
                    }) && p.argv.iter().any(|a| a == &sock)
                })
                .map(|p| p.pid)
                .collect();
            let pause_roots: Vec<i32> = ps
                .iter()
                .filter(|p| shims.contains(&p.ppid) && p.argv == PAUSE_CMD)
                .map(|p| p.pid)
                .collect();
            let pause = procs::with_descendants(ps, &pause_roots);
            let workloads = procs::with_descendants(ps, &shims)
                .into_iter()
                .filter(|p| !shims.contains(p) && !pause.contains(p))
                .count();
            (
                vec![("containerd", daemon), ("shim", shims), ("pause", pause)],
                workloads,
            )
        }
    }
}

fn measure_mem(rt: &Rt) -> Mem {
    let ps = procs::snapshot();
    let (roles, workloads) = management(rt, &ps);
    let mut m = Mem {
        workloads,
        ..Default::default()
    };
    for (role, pids) in roles {
        m.add(role, &pids);
    }
    m
}

/// Three samples 500 ms apart; the one with the median total.
async fn sample_mem(rt: &Rt) -> Mem {
    let mut v = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        v.push(measure_mem(rt));
    }
    v.sort_by_key(Mem::total_kib);
    v.swap_remove(1)
}

/// Per-pod processes of the runtime (everything but the daemon) still alive.
fn per_pod_processes(rt: &Rt) -> Vec<i32> {
    let ps = procs::snapshot();
    let (roles, _) = management(rt, &ps);
    roles
        .into_iter()
        .filter(|(r, _)| *r != "daemon" && *r != "containerd")
        .flat_map(|(_, p)| p)
        .collect()
}

/// Waits until the runtime has no per-pod process left (unicri: the keeper has exited;
/// containerd: no shim, no pause). Returns how long that took.
async fn wait_idle(rt: &Rt) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let left = per_pod_processes(rt);
        if left.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > IDLE_TIMEOUT {
            bail!(
                "{}: {} s after its last pod was removed, its per-pod processes {left:?} are still running",
                rt.kind,
                IDLE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which runtime goes first in round `i`.
pub(crate) fn order(n: usize, i: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..n).collect();
    if i % 2 == 1 {
        o.reverse();
    }
    o
}

/// Latency distribution (nearest-rank percentiles).
#[derive(Clone, Copy, Debug)]
struct Dist {
    n: usize,
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Dist {
    fn of(v: &[Duration]) -> Option<Dist> {
        let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let r = (p * s.len() as f64).ceil() as usize;
            s[r.clamp(1, s.len()) - 1]
        };
        Some(Dist {
            n: s.len(),
            min: s[0],
            p50: rank(0.5),
            p99: rank(0.99),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// Everything measured.
#[derive(Default)]
struct Results {
    sandbox: BTreeMap<Kind, Vec<Duration>>,
    sandbox_teardown: BTreeMap<Kind, Vec<Duration>>,
    pod_ctr: BTreeMap<Kind, Vec<Duration>>,
    cold: BTreeMap<Kind, Vec<Duration>>,
    par_wall: BTreeMap<Kind, Vec<Duration>>,
    par_each: BTreeMap<Kind, Vec<Duration>>,
    par_teardown: BTreeMap<Kind, Vec<Duration>>,
    /// Machine-wide busy CPU seconds while the parallel pods started.
    par_cpu: BTreeMap<Kind, Vec<f64>>,
    idle_after: BTreeMap<Kind, Vec<Duration>>,
    mem_fresh: BTreeMap<Kind, Mem>,
    mem0: BTreeMap<Kind, Vec<Mem>>,
    mem_n: BTreeMap<Kind, Vec<Mem>>,
    findings: Vec<String>,
}

fn push<T>(m: &mut BTreeMap<Kind, Vec<T>>, k: Kind, v: T) {
    m.entry(k).or_default().push(v);
}

/// Everything started, for cleanup on any exit path.
#[derive(Default)]
struct Env {
    registry: Option<Registry>,
    rts: Vec<Rt>,
    bridges: Vec<String>,
}

impl Env {
    /// Removes every pod, waits for the per-pod processes to go, stops the daemons, deletes the
    /// bridges, stops the registry. Returns notes on anything that had to be forced.
    async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for rt in self.rts.drain(..) {
            match remove_all(&rt).await {
                Ok(0) => {}
                Ok(n) => notes.push(format!("{}: removed {n} leftover pod(s)", rt.kind)),
                Err(e) => notes.push(format!("{}: removing pods failed: {e:#}", rt.kind)),
            }
            if let Err(e) = wait_idle(&rt).await {
                notes.push(format!("{e:#}"));
                for pid in per_pod_processes(&rt) {
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

pub async fn run(args: PodsArgs) -> Result<()> {
    ensure!(
        args.sandboxes > 0 && args.rounds > 0 && args.parallel > 0 && args.parallel_rounds > 0,
        "--sandboxes, --rounds, --parallel and --parallel-rounds must be at least 1"
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
    let kinds = match args.only {
        Some(k) => vec![k],
        None => vec![Kind::Containerd, Kind::Unicri],
    };
    let parent = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("unicri-bench-pods-")
        .tempdir_in(&parent)?;
    eprintln!("work dir {}", work.path().display());

    // containerd puts containers of pods without a cgroup parent under `/k8s.io/<id>` and
    // leaves the (empty) `/k8s.io` behind.
    let k8s_io_before = k8s_io_cgroups();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut env = Env::default();
    let mut results = Results::default();
    let outcome = tokio::select! {
        r = body(&args, &kinds, work.path(), &mut env, &mut results) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    let mut notes = env.stop().await;
    for d in k8s_io_cgroups() {
        if !k8s_io_before.contains(&d) && std::fs::remove_dir(&d).is_err() {
            notes.push(format!("could not remove {} (not empty?)", d.display()));
        }
    }
    for n in &notes {
        eprintln!("  cleanup: {n}");
    }
    if !notes.is_empty()
        && let Ok(md) = outcome.as_ref()
    {
        let mut md = md.clone();
        md.push_str("\nForced at the final cleanup (after the report's checks):\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
        std::fs::write(&args.out, md)?;
    }
    if args.keep {
        eprintln!("work dir kept: {}", work.keep().display());
    } else if outcome.is_err() {
        for k in &kinds {
            let _ = std::fs::remove_dir_all(work.path().join(k.to_string()).join("root"));
        }
        eprintln!("work dir kept (logs): {}", work.keep().display());
    }
    outcome.map(|_| ())
}

/// The tar of the e2e crate's busybox rootfs, written here so that every hard link's header
/// carries its target's mode, as tar writers do. (`LayerBuilder::tar` gives hard links mode
/// 0644; containerd applies a hard link header's mode to the shared inode, which leaves
/// `/bin/busybox` and every applet non-executable, while unicri, like GNU tar, ignores it.)
fn busybox_tar() -> Result<Vec<u8>> {
    let entries = busybox_layer()?.entries().to_vec();
    let mut modes = BTreeMap::new();
    for e in &entries {
        if let Entry::File { path, mode, .. } = e {
            modes.insert(path.trim_start_matches('/').to_string(), *mode);
        }
    }
    let header = |kind, mode, uid, gid| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    for e in &entries {
        match e {
            Entry::File {
                path,
                data,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(tar::EntryType::Regular, *mode, *uid, *gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path.trim_start_matches('/'), data.as_slice())?;
            }
            Entry::Dir {
                path,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(tar::EntryType::Directory, *mode, *uid, *gid);
                h.set_size(0);
                let p = format!("{}/", path.trim_start_matches('/').trim_end_matches('/'));
                b.append_data(&mut h, p, std::io::empty())?;
            }
            Entry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                h.set_size(0);
                b.append_link(&mut h, path.trim_start_matches('/'), target)?;
            }
            Entry::HardLink { path, target } => {
                let target = target.trim_start_matches('/');
                let mode = modes.get(target).copied().unwrap_or(0o644);
                let mut h = header(tar::EntryType::Link, mode, 0, 0);
                h.set_size(0);
                b.append_link(&mut h, path.trim_start_matches('/'), target)?;
            }
            other => bail!("unexpected entry in the busybox rootfs: {other:?}"),
        }
    }
    Ok(b.into_inner()?)
}

/// Builds and pushes the busybox image (`sh`) and the pause image (same layer).
pub(crate) async fn push_images(reg: &Registry) -> Result<(String, String)> {
    let (busybox, pause) = tokio::task::spawn_blocking(|| -> Result<_> {
        let layer = Layer::from_tar(busybox_tar()?, Compression::Gzip)?;
        let base = || {
            ImageBuilder::new()
                .platform("linux", crate::images::goarch(), None)
                .env(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
                .layer(layer.clone())
        };
        Ok((
            base().cmd(&["sh"]).build()?,
            base().entrypoint(&PAUSE_CMD).build()?,
        ))
    })
    .await??;
    let pusher = reg.pusher();
    pusher.push_image("bench/busybox", "v1", &busybox).await?;
    pusher.push_image("bench/pause", "v1", &pause).await?;
    let host = reg.host();
    Ok((
        format!("{host}/bench/busybox:v1"),
        format!("{host}/bench/pause:v1"),
    ))
}

async fn body(
    args: &PodsArgs,
    kinds: &[Kind],
    work: &Path,
    env: &mut Env,
    res: &mut Results,
) -> Result<String> {
    let started = report::utc_now();
    let load_before = report::loadavg();
    eprintln!("starting docker-registry");
    let reg = Registry::start_plain().await?;
    eprintln!("building and pushing busybox and pause images");
    let (busybox, pause) = push_images(&reg).await?;
    let hosts_dir = runtimes::write_hosts_dir(&work.join("hosts.d"), &reg.host())?;
    env.registry = Some(reg);
    start_runtimes(args, kinds, work, &hosts_dir, &pause, env).await?;

    // Untimed pulls: the busybox image on both, the pause image on containerd.
    for rt in env.rts.iter_mut() {
        rt.image = rt.d.cri.pull(&busybox).await?;
        if rt.kind == Kind::Containerd {
            rt.d.cri.pull(&pause).await?;
        }
        eprintln!("  {}: pulled {busybox} as {}", rt.kind, rt.image);
    }
    let rts = &mut env.rts;
    for rt in rts.iter() {
        wait_idle(rt).await?;
        res.mem_fresh.insert(rt.kind, measure_mem(rt));
    }

    cold_starts(args, rts, res).await?;

    // The steady state of a node: one idle pod stays while phases 1 and 2 run.
    for rt in rts.iter_mut() {
        wait_idle(rt).await?;
        let cfg = prepare(&rt.logs, "anchor", rt.kind)?;
        let s = start_pod(&rt.d.cri, &rt.image, cfg).await?;
        rt.ids.extend([s.pod, s.container]);
    }

    serial_sandboxes(args, rts, res).await?;
    serial_pods(args, rts, res).await?;
    for rt in rts.iter() {
        remove_all(rt).await?;
    }
    let n = args.parallel;
    eprintln!(
        "phase 3: {n} pods in parallel, {} round(s)",
        args.parallel_rounds
    );
    for r in 0..args.parallel_rounds {
        for ri in order(rts.len(), r) {
            parallel_round(&mut rts[ri], n, r, res).await?;
        }
    }
    leak_checks(rts, res).await;

    let mut meta = Meta::collect((args.rounds, args.warmup, 0), &[], started, load_before);
    meta.versions = rts
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
    let md = markdown(args, &meta, kinds, res, rts, &busybox, &pause);
    println!("{}", summary_table(args, kinds, res));
    for f in &res.findings {
        eprintln!("  finding: {f}");
    }
    std::fs::write(&args.out, &md).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(md)
}

/// Starts each runtime (unicri from a private copy) on its own CNI network and waits until it
/// says the runtime and the network are ready.
async fn start_runtimes(
    args: &PodsArgs,
    kinds: &[Kind],
    work: &Path,
    hosts_dir: &Path,
    pause: &str,
    env: &mut Env,
) -> Result<()> {
    // unicri runs from a private copy, so a rebuild of target/ during the run cannot swap the
    // binary the keeper is spawned from.
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
                let dir = work.join("bin");
                std::fs::create_dir_all(&dir)?;
                let copy = dir.join("unicri");
                std::fs::copy(&unicri_src, &copy)
                    .with_context(|| format!("copy {}", unicri_src.display()))?;
                copy
            }
            Kind::Containerd => args.containerd_bin.clone(),
        };
        let extras = Extras {
            cni: Some((net.conf_dir.clone(), args.cni_bin_dir.clone())),
            sandbox_image: Some(pause.to_string()),
            env: Vec::new(),
            config: String::new(),
        };
        eprintln!("starting {kind} ({})", bin.display());
        let mut d = Daemon::start_with(kind, &bin, work, hosts_dir, &extras).await?;
        if kind == Kind::Unicri {
            // report the source binary, not the private copy
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
        let rt = Rt {
            kind,
            keeper_dir: d.state.join("keeper").display().to_string(),
            logs: work.join(format!("logs-{kind}")),
            image: String::new(),
            exe: if kind == Kind::Unicri { exe } else { None },
            net,
            d,
            ids: HashSet::new(),
        };
        env.rts.push(rt);
        ensure!(
            ready.0 && ready.1,
            "{kind} is not ready after 10 s: {}; see {}",
            ready.2,
            env.rts
                .last()
                .map(|r| r.d.log.display().to_string())
                .unwrap_or_default()
        );
        eprintln!(
            "  {kind}: {}",
            env.rts
                .last()
                .map(|r| r.d.cri_version.as_str())
                .unwrap_or("")
        );
    }

    Ok(())
}

/// Warmup and cold starts: pod + container on a runtime with no other pod.
async fn cold_starts(args: &PodsArgs, rts: &mut [Rt], res: &mut Results) -> Result<()> {
    let cold_total = args.warmup + args.cold_rounds;
    for i in 0..cold_total {
        let measured = i >= args.warmup;
        for ri in order(rts.len(), i) {
            let rt = &mut rts[ri];
            let idle = wait_idle(rt).await?;
            if rt.kind == Kind::Unicri && measured {
                push(&mut res.idle_after, rt.kind, idle);
            }
            let cfg = prepare(&rt.logs, "cold", rt.kind)?;
            let s = start_pod(&rt.d.cri, &rt.image, cfg)
                .await
                .with_context(|| format!("{} cold start; log {}", rt.kind, rt.d.log.display()))?;
            rt.ids.extend([s.pod.clone(), s.container.clone()]);
            check_pod(rt, &s.pod).await?;
            check_running(rt, &[&s.container]).await?;
            remove_pod(&rt.d.cri, &s.pod).await?;
            eprintln!(
                "  {:<14} {:<10} pod + container {:>8.1} ms",
                if measured { "cold" } else { "warmup" },
                rt.kind.to_string(),
                s.took.as_secs_f64() * 1e3
            );
            if measured {
                push(&mut res.cold, rt.kind, s.took);
            }
        }
    }

    Ok(())
}

/// Phase 1: serial RunPodSandbox, each pod removed (untimed) before the next.
async fn serial_sandboxes(args: &PodsArgs, rts: &mut [Rt], res: &mut Results) -> Result<()> {
    eprintln!(
        "phase 1: {} serial RunPodSandbox per runtime",
        args.sandboxes
    );
    for i in 0..args.sandboxes {
        for ri in order(rts.len(), i) {
            let rt = &mut rts[ri];
            let cfg = prepare(&rt.logs, "sb", rt.kind)?;
            let t0 = Instant::now();
            let pod =
                rt.d.cri
                    .run_pod(cfg)
                    .await
                    .with_context(|| format!("{}; log {}", rt.kind, rt.d.log.display()))?;
            let took = t0.elapsed();
            rt.ids.insert(pod.clone());
            check_pod(rt, &pod).await?;
            let t1 = Instant::now();
            remove_pod(&rt.d.cri, &pod).await?;
            push(&mut res.sandbox_teardown, rt.kind, t1.elapsed());
            push(&mut res.sandbox, rt.kind, took);
        }
        if (i + 1) % 25 == 0 {
            eprintln!("  {}/{}", i + 1, args.sandboxes);
        }
    }

    Ok(())
}

/// Phase 2: serial pod + container starts, each pod removed (untimed) before the next.
async fn serial_pods(args: &PodsArgs, rts: &mut [Rt], res: &mut Results) -> Result<()> {
    eprintln!(
        "phase 2: {} pod + container starts per runtime",
        args.rounds
    );
    for i in 0..args.rounds {
        for ri in order(rts.len(), i) {
            let rt = &mut rts[ri];
            let cfg = prepare(&rt.logs, "pc", rt.kind)?;
            let s = start_pod(&rt.d.cri, &rt.image, cfg)
                .await
                .with_context(|| format!("{}; log {}", rt.kind, rt.d.log.display()))?;
            rt.ids.extend([s.pod.clone(), s.container.clone()]);
            check_pod(rt, &s.pod).await?;
            check_running(rt, &[&s.container]).await?;
            remove_pod(&rt.d.cri, &s.pod).await?;
            push(&mut res.pod_ctr, rt.kind, s.took);
        }
        if (i + 1) % 10 == 0 {
            eprintln!("  {}/{}", i + 1, args.rounds);
        }
    }
    Ok(())
}

/// Phase 3, one runtime's round: memory at 0 pods, `n` pods + containers started in parallel,
/// memory at `n` pods, all removed in parallel.
async fn parallel_round(rt: &mut Rt, n: usize, r: usize, res: &mut Results) -> Result<()> {
    let idle = wait_idle(rt).await?;
    if rt.kind == Kind::Unicri {
        push(&mut res.idle_after, rt.kind, idle);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    push(&mut res.mem0, rt.kind, sample_mem(rt).await);

    let mut cfgs = Vec::with_capacity(n);
    for _ in 0..n {
        cfgs.push(prepare(&rt.logs, "par", rt.kind)?);
    }
    let mut set = JoinSet::new();
    let cpu0 = procs::cpu_busy_secs();
    let t0 = Instant::now();
    for cfg in cfgs {
        let cri = rt.d.cri.clone();
        let image = rt.image.clone();
        set.spawn(async move {
            let s = start_pod(&cri, &image, cfg).await;
            (s, Instant::now())
        });
    }
    let mut started = Vec::new();
    let mut last = t0;
    let mut errors = Vec::new();
    while let Some(j) = set.join_next().await {
        let (s, end) = j?;
        last = last.max(end);
        match s {
            Ok(s) => started.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let wall = last - t0;
    if let (Some(a), Some(b)) = (cpu0, procs::cpu_busy_secs()) {
        push(&mut res.par_cpu, rt.kind, b - a);
    }
    for s in &started {
        rt.ids.extend([s.pod.clone(), s.container.clone()]);
    }
    if !errors.is_empty() {
        bail!(
            "{}: {} of {n} parallel pod starts failed, first: {}; log {}",
            rt.kind,
            errors.len(),
            errors[0],
            rt.d.log.display()
        );
    }
    let ids: Vec<&str> = started.iter().map(|s| s.container.as_str()).collect();
    check_running(rt, &ids).await?;
    for s in &started {
        check_pod(rt, &s.pod).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem = sample_mem(rt).await;
    if mem.workloads != n {
        res.findings.push(format!(
            "{} round {}: {} workload processes below the management processes at {n} pods (expected {n})",
            rt.kind,
            r + 1,
            mem.workloads
        ));
    }
    eprintln!(
        "  round {}: {:<10} {n} pods in {:>7.3} s; PSS {:.1} MiB ({})",
        r + 1,
        rt.kind.to_string(),
        wall.as_secs_f64(),
        mem.total_kib() as f64 / 1024.0,
        mem.describe()
    );
    push(&mut res.mem_n, rt.kind, mem);
    push(&mut res.par_wall, rt.kind, wall);
    for s in &started {
        push(&mut res.par_each, rt.kind, s.took);
    }

    let t1 = Instant::now();
    let mut set = JoinSet::new();
    for s in started {
        let cri = rt.d.cri.clone();
        set.spawn(async move { remove_pod(&cri, &s.pod).await });
    }
    while let Some(j) = set.join_next().await {
        j??;
    }
    push(&mut res.par_teardown, rt.kind, t1.elapsed());
    remove_all(rt).await?;
    Ok(())
}

/// After the last phase: per-pod processes, veths, IPAM reservations and cgroups left.
async fn leak_checks(rts: &[Rt], res: &mut Results) {
    for rt in rts.iter() {
        match wait_idle(rt).await {
            Ok(t) if rt.kind == Kind::Unicri => push(&mut res.idle_after, rt.kind, t),
            Ok(_) => {}
            Err(e) => res.findings.push(format!("{e:#}")),
        }
        let v = rt.net.veths();
        if v != 0 {
            res.findings.push(format!(
                "{}: {v} interface(s) still on bridge {} after every pod was removed",
                rt.kind, rt.net.bridge
            ));
        }
        let ips = rt.net.reserved_ips();
        if !ips.is_empty() {
            res.findings.push(format!(
                "{}: host-local still reserves {ips:?} after every pod was removed",
                rt.kind
            ));
        }
        let cg = cgroups_named_after(&rt.ids);
        if !cg.is_empty() {
            res.findings.push(format!(
                "{}: cgroups named after its pods/containers left: {cg:?}",
                rt.kind
            ));
        }
    }
}

/// `/sys/fs/cgroup/<hierarchy>/k8s.io` directories that exist.
pub(crate) fn k8s_io_cgroups() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().map(|e| e.path().join("k8s.io")).collect())
        .unwrap_or_default();
    v.push(PathBuf::from("/sys/fs/cgroup/k8s.io"));
    v.retain(|p| p.is_dir());
    v
}

/// Cgroup directories (any hierarchy, up to 4 levels deep) whose name contains one of `ids`.
pub(crate) fn cgroups_named_after(ids: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().to_string();
            if ids
                .iter()
                .any(|id| id.len() >= 8 && name.contains(id.as_str()))
            {
                out.push(e.path().display().to_string());
            } else if depth < 4 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
}

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The median of `v` by `key` (the upper one of an even count).
fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).cloned()
}

fn goal_cell(ratio: Option<f64>, goal: f64) -> String {
    match ratio {
        None => format!("≤ {goal}"),
        Some(r) if r <= goal => format!("≤ {goal}: **met**"),
        Some(r) => format!("≤ {goal}: **missed** ({:.2}× the goal)", r / goal),
    }
}

/// (containerd, unicri) values of one measure.
type Pair = (Option<f64>, Option<f64>);

struct Row {
    name: String,
    unit: &'static str,
    vals: Pair,
    goal: Option<f64>,
}

fn rows(args: &PodsArgs, r: &Results) -> Vec<Row> {
    let d = |m: &BTreeMap<Kind, Vec<Duration>>, k: Kind| m.get(&k).and_then(|v| Dist::of(v));
    let pair = |f: &dyn Fn(Kind) -> Option<f64>| (f(Kind::Containerd), f(Kind::Unicri));
    let mem = |m: &BTreeMap<Kind, Vec<Mem>>, k: Kind| {
        m.get(&k)
            .and_then(|v| median_by(v, |x| x.total_kib() as f64))
            .map(|x| x.total_kib() as f64 / 1024.0)
    };
    vec![
        Row {
            name: format!("RunPodSandbox p50 ({} serial)", args.sandboxes),
            unit: "ms",
            vals: pair(&|k| d(&r.sandbox, k).map(|x| x.p50 * 1e3)),
            goal: None,
        },
        Row {
            name: format!("RunPodSandbox p99 ({} serial)", args.sandboxes),
            unit: "ms",
            vals: pair(&|k| d(&r.sandbox, k).map(|x| x.p99 * 1e3)),
            goal: None,
        },
        Row {
            name: format!("pod + container running p50 ({} rounds)", args.rounds),
            unit: "ms",
            vals: pair(&|k| d(&r.pod_ctr, k).map(|x| x.p50 * 1e3)),
            goal: Some(GOAL_POD_CONTAINER),
        },
        Row {
            name: format!(
                "{} pods + containers in parallel, wall (median of {})",
                args.parallel, args.parallel_rounds
            ),
            unit: "s",
            vals: pair(&|k| {
                r.par_wall
                    .get(&k)
                    .and_then(|v| median_by(v, Duration::as_secs_f64))
                    .map(|x| x.as_secs_f64())
            }),
            goal: Some(GOAL_PARALLEL),
        },
        Row {
            name: "management PSS at 0 pods".into(),
            unit: "MiB",
            vals: pair(&|k| mem(&r.mem0, k)),
            goal: None,
        },
        Row {
            name: format!("management PSS at {} pods", args.parallel),
            unit: "MiB",
            vals: pair(&|k| mem(&r.mem_n, k)),
            goal: Some(GOAL_MEMORY),
        },
    ]
}

fn summary_table(args: &PodsArgs, _kinds: &[Kind], r: &Results) -> String {
    let mut s = String::from(
        "| measure | containerd + runc | unicri | unicri / containerd | goal (issue) |\n|---|---:|---:|---:|---|\n",
    );
    for row in rows(args, r) {
        let fmt = |v: Option<f64>| match (v, row.unit) {
            (Some(x), "s") => format!("{x:.2} s"),
            (Some(x), u) => format!("{x:.1} {u}"),
            (None, _) => "-".into(),
        };
        let ratio = match row.vals {
            (Some(c), Some(u)) if c > 0.0 => Some(u / c),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            row.name,
            fmt(row.vals.0),
            fmt(row.vals.1),
            ratio
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into()),
            row.goal
                .map(|g| goal_cell(ratio, g))
                .unwrap_or_else(|| "–".into())
        );
    }
    s
}

fn dist_line(v: Option<&Vec<Duration>>) -> String {
    match v.and_then(|v| Dist::of(v)) {
        Some(d) => format!(
            "n={} min {} / p50 **{}** / p99 {} / max {} / mean {} ms",
            d.n,
            ms(d.min),
            ms(d.p50),
            ms(d.p99),
            ms(d.max),
            ms(d.mean)
        ),
        None => "-".into(),
    }
}

fn raw(v: Option<&Vec<Duration>>) -> String {
    v.map(|v| {
        v.iter()
            .map(|d| ms(d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

fn mem_table(kinds: &[Kind], r: &Results, n: usize) -> String {
    let mut s = String::from(
        "| runtime | when | process role | processes | PSS MiB | of which anon | of which file |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    for &k in kinds {
        let cases: [(String, Option<Mem>); 3] = [
            (
                "fresh, after the pulls".into(),
                r.mem_fresh.get(&k).cloned(),
            ),
            (
                "0 pods (median round)".into(),
                r.mem0
                    .get(&k)
                    .and_then(|v| median_by(v, |x| x.total_kib() as f64)),
            ),
            (
                format!("{n} pods (median round)"),
                r.mem_n
                    .get(&k)
                    .and_then(|v| median_by(v, |x| x.total_kib() as f64)),
            ),
        ];
        for (when, m) in cases {
            let Some(m) = m else { continue };
            for (role, r) in m.roles.iter().filter(|(_, r)| r.processes > 0) {
                let _ = writeln!(
                    s,
                    "| {k} | {when} | {role} | {} | {} | {} | {} |",
                    r.processes,
                    mib(r.pss),
                    mib(r.anon),
                    mib(r.file)
                );
            }
            let _ = writeln!(
                s,
                "| {k} | {when} | **total** | {} | **{}** | {} | {} |",
                m.roles.values().map(|r| r.processes).sum::<usize>(),
                mib(m.total_kib()),
                mib(m.roles.values().map(|r| r.anon).sum()),
                mib(m.roles.values().map(|r| r.file).sum())
            );
        }
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &PodsArgs,
    m: &Meta,
    kinds: &[Kind],
    r: &Results,
    rts: &[Rt],
    busybox: &str,
    pause: &str,
) -> String {
    let n = args.parallel;
    let mut s = String::new();
    s.push_str("## Pods: unicri vs containerd + runc\n\n");
    s.push_str(
        "Generated by `unicri-bench pods` (crate `tests/bench`). Both runtimes on private roots, \
         driven over CRI with kubelet-like configs (pod metadata, labels, DNS config, log \
         directory, namespace options; BestEffort container resources, kubelet's masked and \
         read-only paths, no cgroup parent), the same busybox image pulled (untimed) from a local \
         plain-HTTP `docker-registry`, and the same CNI conflist (bridge + host-local + portmap \
         from Debian's containernetworking-plugins; each runtime its own bridge and /24). The \
         container runs `sleep 3600`. Runtimes alternate which goes first in every round.\n\n",
    );
    s.push_str("### Results\n\n");
    s.push_str(&summary_table(args, kinds, r));
    s.push_str(
        "\nPercentiles are nearest-rank. \"Pod + container running\" is RunPodSandbox + \
         CreateContainer + StartContainer, serial, each pod removed (untimed) before the next; \
         the parallel wall time runs from the first request to the last StartContainer \
         returning. Management PSS is the sum of `Pss:` in `/proc/<pid>/smaps_rollup`: for \
         unicri every process whose executable is the unicri binary (daemon, `unicri keeper`, \
         keeper forks such as pod inits) but not the workloads; for containerd the daemon, every \
         `containerd-shim-runc-v2` and every pause process.\n\n",
    );

    s.push_str("### Latency details\n\n");
    for &k in kinds {
        let _ = writeln!(s, "- {k}, RunPodSandbox: {}", dist_line(r.sandbox.get(&k)));
        let _ = writeln!(
            s,
            "- {k}, StopPodSandbox + RemovePodSandbox of a pod without containers (untimed in the table): {}",
            dist_line(r.sandbox_teardown.get(&k))
        );
        let _ = writeln!(
            s,
            "- {k}, pod + container, one idle pod kept on the runtime: {}",
            dist_line(r.pod_ctr.get(&k))
        );
        let _ = writeln!(
            s,
            "- {k}, pod + container, no other pod on the runtime (\"cold\"): {}",
            dist_line(r.cold.get(&k))
        );
        let _ = writeln!(
            s,
            "- {k}, {n} in parallel, wall per round (s): {}",
            r.par_wall
                .get(&k)
                .map(|v| v
                    .iter()
                    .map(|d| format!("{:.3}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        if let Some(v) = r.par_cpu.get(&k) {
            let _ = writeln!(
                s,
                "- {k}, {n} in parallel, busy CPU seconds of the whole machine ({} cores) while they started: {}",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(0),
                v.iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            s,
            "- {k}, {n} in parallel, each pod's own start: {}",
            dist_line(r.par_each.get(&k))
        );
        let _ = writeln!(
            s,
            "- {k}, {n} in parallel, Stop + Remove of all {n} in parallel (s): {}",
            r.par_teardown
                .get(&k)
                .map(|v| v
                    .iter()
                    .map(|d| format!("{:.3}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    if let Some(v) = r.idle_after.get(&Kind::Unicri) {
        let _ = writeln!(
            s,
            "- unicri, from its last pod's removal until its keeper had exited, each time the bench waited for an empty runtime (ms): {}",
            raw(Some(v))
        );
    }

    s.push_str("\n### Management memory (PSS)\n\n");
    s.push_str(&mem_table(kinds, r, n));
    for &k in kinds {
        if let (Some(a), Some(b)) = (
            r.mem0
                .get(&k)
                .and_then(|v| median_by(v, |x| x.total_kib() as f64)),
            r.mem_n
                .get(&k)
                .and_then(|v| median_by(v, |x| x.total_kib() as f64)),
        ) {
            let _ = writeln!(
                s,
                "\n{k}: {:.0} KiB per running pod over its 0-pod level ({n} pods).",
                (b.total_kib() as f64 - a.total_kib() as f64) / n as f64
            );
        }
    }
    s.push_str("\nAll rounds (total PSS MiB, 0 pods → N pods):\n\n");
    for &k in kinds {
        let z: Vec<String> = r
            .mem0
            .get(&k)
            .map(|v| v.iter().map(|m| mib(m.total_kib())).collect())
            .unwrap_or_default();
        let f: Vec<String> = r
            .mem_n
            .get(&k)
            .map(|v| v.iter().map(|m| mib(m.total_kib())).collect())
            .unwrap_or_default();
        let _ = writeln!(s, "- {k}: {} → {}", z.join(", "), f.join(", "));
    }

    s.push_str("\n### Leak checks\n\n");
    s.push_str(
        "After the last phase: no pod or container listed, no per-pod process left (unicri: \
         keeper exited; containerd: no shim, no pause), no interface on either bridge, no \
         address reserved in host-local's data dir, no cgroup named after a pod or container \
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
    s.push_str("\n### Configuration\n\n");
    let _ = writeln!(
        s,
        "- images: `{busybox}` (Debian's dynamic busybox, its libraries and applet links; `sh`) \
         and, for containerd's `sandbox_image`, `{pause}` (the same layer, entrypoint `{}`; \
         containerd stops a sandbox with SIGKILL, so a pause needs no signal handling).",
        PAUSE_CMD.join(" ")
    );
    for rt in rts {
        // `$WORK` is the benchmark's temporary work dir
        let work =
            rt.d.root
                .parent()
                .and_then(Path::parent)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
        let config = std::fs::read_to_string(rt.d.config_path()).unwrap_or_default();
        let _ = writeln!(
            s,
            "- {}: bridge `{}`, subnet {}.0/24; its config (`$WORK` is the temporary work dir):\n\n```toml\n{}```\n",
            rt.kind,
            rt.net.bridge,
            rt.net.subnet,
            config.replace(&work, "$WORK")
        );
    }
    if let Some(rt) = rts.first() {
        let _ = writeln!(
            s,
            "- the conflist (here {}'s):\n\n```json\n{}```\n",
            rt.kind,
            rt.net.conflist().replace(
                &rt.d
                    .root
                    .parent()
                    .and_then(Path::parent)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "$WORK"
            )
        );
    }
    let _ = writeln!(
        s,
        "- run: {} serial sandboxes, {} warmup + {} cold + {} measured pod + container rounds, \
         {} round(s) of {n} parallel pods.",
        args.sandboxes, args.warmup, args.cold_rounds, args.rounds, args.parallel_rounds
    );

    s.push_str("\n### Raw samples (ms)\n\n");
    for &k in kinds {
        let _ = writeln!(s, "- RunPodSandbox / {k}: {}", raw(r.sandbox.get(&k)));
        let _ = writeln!(s, "- pod + container / {k}: {}", raw(r.pod_ctr.get(&k)));
        let _ = writeln!(s, "- pod + container, cold / {k}: {}", raw(r.cold.get(&k)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let d = Dist::of(&v).unwrap();
        assert_eq!((d.p50, d.p99, d.max), (0.05, 0.099, 0.1));
        let d = Dist::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((d.p50, d.p99), (0.007, 0.007));
        assert!(Dist::of(&[]).is_none());
    }

    #[test]
    fn goals() {
        assert!(goal_cell(Some(0.3), 0.33).contains("met"));
        assert!(goal_cell(Some(0.66), 0.33).contains("2.00×"));
    }

    #[test]
    fn conflist_is_json_with_own_bridge() {
        let n = Net {
            name: "bench-unicri".into(),
            bridge: "ubench-unicri".into(),
            subnet: "10.253.0".into(),
            conf_dir: "/x/net.d".into(),
            ipam_dir: "/x/ipam".into(),
        };
        let c = n.conflist();
        assert!(c.contains("\"bridge\": \"ubench-unicri\""), "{c}");
        assert!(c.contains("10.253.0.0/24"), "{c}");
    }
}
