//! A pod VM on the real user-mode-Linux engine: boot in a fresh pod netns (taps from
//! `net::setup`), cgroups, image hot-plug over the mconsole, stop, and a leak check. Skips
//! loudly without root, the UML kernel (`$UNICRI_UML_KERNEL` or
//! `/var/cache/unicri/uml-kernel/*/linux`, built by `scripts/build-guest-kernel uml`) or gcc.
//!
//! `test_init_guest` boots a tiny static init built here (tests/guest/test-init.c) that
//! prints a marker, its NICs, and the content of the image once `/dev/ubdb` appears.
//! `agent_guest` boots the real agent (`$UNICRI_VM_AGENT` or target/debug/unicri-vm-agent)
//! and talks to it over the control link.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use unicri_runtime_vm::engine::{self, Engine, VmConfig, VmState};
use unicri_runtime_vm::net::{self, NetNames, PodNet};
use unicri_runtime_vm::{AgentClient, image, initramfs};
use unicri_vm_agent::proto;

fn prerequisites(name: &str) -> Option<PathBuf> {
    if !common::is_root() {
        eprintln!("SKIP {name}: needs root");
        return None;
    }
    let Some(k) = common::uml_kernel() else {
        eprintln!(
            "SKIP {name}: no UML kernel (run scripts/build-guest-kernel uml or set UNICRI_UML_KERNEL)"
        );
        return None;
    };
    Some(k)
}

/// Pod cgroups (v1: memory and pids; v2: one), removed on drop.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn new(tag: &str) -> Cgroups {
        let name = format!("uvt-{tag}-{}", std::process::id());
        let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            ["memory", "pids"]
                .iter()
                .map(|c| Path::new("/sys/fs/cgroup").join(c))
                .collect()
        };
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join(&name)).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).expect("create cgroup");
        }
        Cgroups(dirs)
    }
    fn procs(&self) -> Vec<PathBuf> {
        self.0.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn wait_for_console(log: &Path, marker: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(marker)
        {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn console_tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{} {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Stops the engine however the test ends (stop is idempotent).
struct StopOnDrop(VmState);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = engine::stop(&self.0, Duration::from_millis(100));
    }
}

/// `VmRSS RssAnon RssFile RssShmem` of a process, for the report.
fn rss_breakdown(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .filter(|l| {
            ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Pod {
    ns: common::PodNetns,
    names: NetNames,
    net: PodNet,
    cgroups: Cgroups,
    cfg: VmConfig,
}

fn pod(tag: &str, octet: u8, kernel: PathBuf, initrd: PathBuf, dir: PathBuf) -> Pod {
    let ns = common::PodNetns::new(tag, octet);
    let names = NetNames::default();
    let pod_id = format!("{tag}0123456789abcdef");
    let net = net::setup(&ns.pin, &names, &net::ctl_mac(&pod_id)).expect("net setup");
    let cgroups = Cgroups::new(tag);
    let cfg = VmConfig {
        engine: Engine::Uml,
        ctl: (net.ctl_tap.clone(), net.ctl_mac.clone()),
        pod_id,
        dir,
        netns: ns.pin.clone(),
        cgroup_procs: cgroups.procs(),
        mem_mib: 256,
        vcpus: 1,
        kernel,
        initramfs: initrd,
        nic: net.nic.clone(),
        ..VmConfig::default()
    };
    Pod {
        ns,
        names,
        net,
        cgroups,
        cfg,
    }
}

fn hello_image(root: &Path, text: &str) -> PathBuf {
    let layer = root.join("layer");
    std::fs::create_dir_all(&layer).expect("mkdir");
    std::fs::write(layer.join("hello.txt"), format!("{text}\n")).expect("write");
    std::fs::create_dir_all(layer.join("bin")).expect("mkdir");
    image::build(&root.join("images"), "hello", &[layer]).expect("erofs image")
}

/// Checks the engine runs where it should: own session, pod netns, pod cgroups.
fn check_placement(st: &VmState, p: &Pod) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", st.pid)).expect("stat");
    let f: Vec<&str> = stat[stat.rfind(')').expect(")") + 2..].split(' ').collect();
    assert_eq!(f[2], st.pid.to_string(), "process group");
    assert_eq!(f[3], st.pid.to_string(), "session");
    let netns_ino = std::fs::metadata(format!("/proc/{}/ns/net", st.pid))
        .expect("ns")
        .ino();
    assert_eq!(
        netns_ino,
        std::fs::metadata(&p.ns.pin).expect("pin").ino(),
        "netns"
    );
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", st.pid)).expect("cgroup");
    let name = p.cgroups.0[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(cg.contains(&name), "{cg}");
    // every UML process is in the cgroup too
    let procs = std::fs::read_to_string(&p.cgroups.procs()[0]).expect("procs");
    assert!(procs.lines().count() >= 1, "{procs}");
}

/// Stops the VM, removes the taps, and checks nothing is left: no engine process, no taps,
/// no mounts, no UML instance directory, no memory file in /dev/shm.
fn stop_and_check_leaks(st: &VmState, p: &Pod, shm_before: usize) {
    let umid = st.umid.clone();
    let t = Instant::now();
    engine::stop(st, Duration::from_secs(3)).expect("stop");
    eprintln!("stopped in {:?}", t.elapsed());
    assert!(!engine::alive(st));
    engine::stop(st, Duration::from_secs(1)).expect("stop again");
    net::teardown(&p.ns.pin, &p.names).expect("teardown");
    let links = p.ns.links();
    assert!(
        !links.iter().any(|l| l == "tap0_vm" || l == "ctl0"),
        "taps left: {links:?}"
    );
    let procs = processes_with(&format!("umid={umid}"));
    assert!(procs.is_empty(), "engine processes left: {procs:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*p.cfg.dir.to_string_lossy()),
        "mounts left"
    );
    assert!(
        !p.cfg.dir.join(&umid).exists(),
        "UML instance directory left"
    );
    let shm_after = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(shm_after <= shm_before, "files left in /dev/shm");
}

/// Builds `tests/guest/<src>` with `gcc -static` into `out`; `false` (after a SKIP line naming
/// `test`) when that fails.
fn build_static(out: &Path, src: &str, test: &str) -> bool {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guest")
        .join(src);
    let ok = common::sh_ok(&[
        "gcc",
        "-static",
        "-O2",
        "-o",
        &out.to_string_lossy(),
        &src.to_string_lossy(),
    ]);
    if !ok {
        eprintln!("SKIP {test}: gcc -static failed");
    }
    ok
}

#[test]
fn test_init_guest() {
    let Some(kernel) = prerequisites("test_init_guest") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let init = tmp.path().join("init");
    if !build_static(&init, "test-init.c", "test_init_guest") {
        return;
    }
    let initrd = initramfs::build(&init, &tmp.path().join("cache")).expect("initramfs");
    let img = hello_image(tmp.path(), "hello-from-erofs");
    let shm_before = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    let p = pod("ti", 253, kernel, initrd, tmp.path().join("pod"));

    let t0 = Instant::now();
    let mut st = engine::start(&p.cfg).expect("start");
    let _guard = StopOnDrop(st.clone());
    let boot = wait_for_console(
        &st.console_log,
        "UNICRI-TEST-INIT-UP",
        Duration::from_secs(30),
    );
    let Some(boot) = boot else {
        let tail = console_tail(&st.console_log);
        let _ = engine::stop(&st, Duration::from_secs(1));
        panic!("no marker on the console:\n{tail}");
    };
    eprintln!(
        "BOOT uml test init: {:?} from start() to the marker ({:?} incl. spawn)",
        boot,
        t0.elapsed()
    );
    assert!(engine::alive(&st));
    check_placement(&st, &p);
    // give the console a moment for the NIC lines
    std::thread::sleep(Duration::from_millis(100));
    let console = std::fs::read_to_string(&st.console_log).expect("console");
    let (_, eth_mac) = p.net.nic.clone().expect("nic");
    assert!(
        console.contains(&format!("NIC vec0 {eth_mac}")),
        "{console}"
    );
    assert!(
        console.contains(&format!("NIC vec1 {}", p.cfg.ctl.1)),
        "{console}"
    );
    eprintln!(
        "RSS uml engine: main process {} KiB, whole session {} KiB",
        engine::rss_kib(&st).unwrap_or(0),
        engine::session_rss_kib(&st)
    );
    eprintln!(
        "RSS breakdown of the main process: {}",
        rss_breakdown(st.pid)
    );

    let dev = engine::attach_image(&mut st, &img).expect("attach");
    assert_eq!(dev, "/dev/ubdb");
    assert_eq!(
        engine::attach_image(&mut st, &img).expect("attach again"),
        dev
    );
    let seen = wait_for_console(&st.console_log, "IMAGE-UNMOUNTED", Duration::from_secs(20));
    let console = std::fs::read_to_string(&st.console_log).expect("console");
    assert!(
        seen.is_some(),
        "image not seen by the guest:\n{}",
        console_tail(&st.console_log)
    );
    assert!(
        console.contains("IMAGE-CONTENT hello-from-erofs"),
        "{console}"
    );
    engine::detach_image(&mut st, &img).expect("detach");
    assert!(st.drives.is_empty());
    // the state survives a round trip through JSON (the daemon persists it)
    let json = serde_json::to_string(&st).expect("json");
    let back: VmState = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, st);

    stop_and_check_leaks(&st, &p, shm_before);
}

/// Run by `engine_outlives_its_starter` as a child process: starts a VM, prints its state as
/// one JSON line, and waits to be killed.
#[test]
fn starter_child() {
    let Ok(cfg) = std::env::var("UVT_STARTER_CFG") else {
        return;
    };
    let cfg: VmConfig = serde_json::from_str(&cfg).expect("cfg");
    let st = engine::start(&cfg).expect("start");
    println!("STATE {}", serde_json::to_string(&st).expect("json"));
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn engine_outlives_its_starter() {
    let Some(kernel) = prerequisites("engine_outlives_its_starter") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let init = tmp.path().join("init");
    if !build_static(&init, "test-init.c", "engine_outlives_its_starter") {
        return;
    }
    let initrd = initramfs::build(&init, &tmp.path().join("cache")).expect("initramfs");
    let shm_before = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    let p = pod("ko", 254, kernel, initrd, tmp.path().join("pod"));
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "starter_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "UVT_STARTER_CFG",
            serde_json::to_string(&p.cfg).expect("json"),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("starter");
    let out = child.stdout.take().expect("stdout");
    let mut st = None;
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        // libtest prints "test starter_child ... " in front of it
        if let Some(i) = line.find("STATE ") {
            st = Some(serde_json::from_str::<VmState>(&line[i + 6..]).expect("state"));
            break;
        }
    }
    let st = st.expect("starter printed no state");
    let _guard = StopOnDrop(st.clone());
    // the "daemon" dies hard
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = child.wait();
    assert!(
        wait_for_console(
            &st.console_log,
            "UNICRI-TEST-INIT-UP",
            Duration::from_secs(30)
        )
        .is_some(),
        "{}",
        console_tail(&st.console_log)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(engine::alive(&st), "the engine died with its starter");
    stop_and_check_leaks(&st, &p, shm_before);
}

fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UNICRI_VM_AGENT") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/unicri-vm-agent");
    p.exists().then_some(p)
}

#[test]
fn agent_guest() {
    let Some(kernel) = prerequisites("agent_guest") else {
        return;
    };
    let Some(agent) = agent_binary() else {
        eprintln!(
            "SKIP agent_guest: no agent binary (cargo build -p unicri-vm-agent, or UNICRI_VM_AGENT)"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let initrd = initramfs::build(&agent, &tmp.path().join("cache")).expect("initramfs");
    let img = hello_image(tmp.path(), "hello-from-erofs");
    let shm_before = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    let p = pod("ag", 250, kernel, initrd, tmp.path().join("pod"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let t0 = Instant::now();
    let mut st = engine::start(&p.cfg).expect("start");
    let _guard = StopOnDrop(st.clone());
    let client = AgentClient::new(&p.ns.pin);
    let health = rt.block_on(client.wait_ready(Duration::from_secs(30)));
    let health = match health {
        Ok(h) => h,
        Err(e) => {
            let tail = console_tail(&st.console_log);
            let _ = engine::stop(&st, Duration::from_secs(1));
            let _ = net::teardown(&p.ns.pin, &p.names);
            if std::env::var_os("UNICRI_VM_AGENT_REQUIRED").is_some() {
                panic!("agent did not answer: {e}\n{tail}");
            }
            eprintln!("SKIP agent_guest: the agent did not answer Health ({e}); console:\n{tail}");
            return;
        }
    };
    eprintln!(
        "BOOT uml agent: {:?} from start() to Health ({health:?})",
        t0.elapsed()
    );
    eprintln!(
        "RSS uml engine (agent guest): main process {} KiB, whole session {} KiB",
        engine::rss_kib(&st).unwrap_or(0),
        engine::session_rss_kib(&st)
    );
    eprintln!(
        "RSS breakdown of the main process: {}",
        rss_breakdown(st.pid)
    );
    check_placement(&st, &p);
    eprintln!("console so far:\n{}", console_tail(&st.console_log));

    let setup = proto::PodSetup {
        pod_id: p.cfg.pod_id.clone(),
        hostname: "agent-pod".into(),
        interfaces: p.net.interfaces.clone(),
        routes: p.net.routes.clone(),
        ..proto::PodSetup::default()
    };
    let r = rt.block_on(client.request(proto::Request::Setup(setup)));
    eprintln!("Setup: {r:?}");
    let dev = engine::attach_image(&mut st, &img).expect("attach");
    assert_eq!(dev, "/dev/ubdb");
    let prep = proto::PrepareContainer {
        id: "c1".into(),
        image_device: dev.clone(),
        image_fstype: "erofs".into(),
        config_json: serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": proto::paths::rootfs("c1")},
        })
        .to_string(),
        files: Vec::new(),
    };
    let r = rt.block_on(client.request(proto::Request::PrepareContainer(prep)));
    eprintln!("PrepareContainer: {r:?}");
    assert!(
        matches!(r, Ok(proto::Response::Prepared { .. })),
        "{r:?}\n{}",
        console_tail(&st.console_log)
    );
    let r = rt.block_on(client.request(proto::Request::RemoveContainer { id: "c1".into() }));
    eprintln!("RemoveContainer: {r:?}");
    if r.is_ok() {
        engine::detach_image(&mut st, &img).expect("detach after RemoveContainer");
    }
    stop_and_check_leaks(&st, &p, shm_before);
}

/// Boot timing of the agent guest (not run by default: `cargo test -p unicri-runtime-vm --test
/// uml agent_boot_timing -- --ignored --nocapture`). `UVT_BOOTS` boots (5), `UVT_MEM` MiB
/// (256), `UVT_CMDLINE` extra kernel words (e.g. `loglevel=7`), `UVT_CONSOLE=1` prints each
/// console. Prints start() → Health per boot and the median.
#[test]
#[ignore]
fn agent_boot_timing() {
    let Some(kernel) = prerequisites("agent_boot_timing") else {
        return;
    };
    let Some(agent) = agent_binary() else {
        eprintln!("SKIP agent_boot_timing: no agent binary");
        return;
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let boots: usize = env("UVT_BOOTS").and_then(|v| v.parse().ok()).unwrap_or(5);
    let mem: u32 = env("UVT_MEM").and_then(|v| v.parse().ok()).unwrap_or(256);
    let extra: Vec<String> = env("UVT_CMDLINE")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let initrd = initramfs::build(&agent, &tmp.path().join("cache")).expect("initramfs");
    eprintln!(
        "initramfs: {} bytes, built in {:?}",
        std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0),
        t.elapsed()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut times = Vec::new();
    for i in 0..boots {
        let mut p = pod(
            "bt",
            249,
            kernel.clone(),
            initrd.clone(),
            tmp.path().join(format!("pod{i}")),
        );
        p.cfg.mem_mib = mem;
        p.cfg.cmdline_extra = extra.clone();
        let wall0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let t0 = Instant::now();
        let st = engine::start(&p.cfg).expect("start");
        let guard = StopOnDrop(st.clone());
        let client = AgentClient::new(&p.ns.pin);
        let health = rt.block_on(client.wait_ready(Duration::from_secs(30)));
        let took = t0.elapsed();
        let uptime = match &health {
            Ok(proto::Response::Health { uptime_s, .. }) => *uptime_s,
            _ => -1.0,
        };
        eprintln!(
            "BOOT {i}: {took:?} start() → Health (guest uptime {uptime:.3} s; start at unix {:.3})",
            wall0.as_secs_f64()
        );
        if env("UVT_CONSOLE").is_some() || health.is_err() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "{}",
                std::fs::read_to_string(&st.console_log).unwrap_or_default()
            );
        }
        assert!(health.is_ok(), "{health:?}");
        times.push(took);
        drop(guard);
        engine::stop(&st, Duration::from_millis(500)).expect("stop");
        net::teardown(&p.ns.pin, &p.names).expect("teardown");
    }
    times.sort();
    eprintln!(
        "BOOT median {:?} (min {:?}, max {:?}) over {boots} boots, mem={mem}M, extra={extra:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

/// One keeper request over the agent's keeper relay.
fn keeper_call(
    rt: &tokio::runtime::Runtime,
    client: &AgentClient,
    req: &unicri_runtime_linux::keeper::proto::Request,
) -> unicri_runtime_linux::keeper::proto::Response {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    rt.block_on(async {
        let mut s = client.keeper_stream().await.expect("keeper stream");
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        s.write_all(&line).await.expect("write");
        let mut answer = String::new();
        tokio::io::BufReader::new(s)
            .read_line(&mut answer)
            .await
            .expect("read");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    })
}

/// `UpdateResources` on a real guest: a container created by the guest keeper (a static
/// `sleeper` from tests/guest/sleeper.c), its cgroup files rewritten by the agent and read
/// back from inside the container; an unknown container and the missing cpuset controller.
#[test]
fn agent_guest_update_resources() {
    use unicri_runtime_linux::keeper::proto as kp;
    let Some(kernel) = prerequisites("agent_guest_update_resources") else {
        return;
    };
    let Some(agent) = agent_binary() else {
        eprintln!("SKIP agent_guest_update_resources: no agent binary");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tmp.path().join("layer");
    std::fs::create_dir_all(layer.join("bin")).expect("mkdir");
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(layer.join(d)).expect("mkdir");
    }
    let bin = layer.join("bin/sleeper");
    if !build_static(&bin, "sleeper.c", "agent_guest_update_resources") {
        return;
    }
    let img = image::build(&tmp.path().join("images"), "sleeper", &[layer]).expect("image");
    let initrd = initramfs::build(&agent, &tmp.path().join("cache")).expect("initramfs");
    let shm_before = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0);
    let p = pod("ur", 248, kernel, initrd, tmp.path().join("pod"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut st = engine::start(&p.cfg).expect("start");
    let _guard = StopOnDrop(st.clone());
    let client = AgentClient::new(&p.ns.pin);
    if let Err(e) = rt.block_on(client.wait_ready(Duration::from_secs(30))) {
        panic!(
            "agent did not answer: {e}\n{}",
            console_tail(&st.console_log)
        );
    }
    let dev = engine::attach_image(&mut st, &img).expect("attach");
    let id = "c1";
    let cg = proto::paths::cgroup(id);
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/sleeper"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/bin"],
        },
        "root": {"path": proto::paths::rootfs(id)},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup2"},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "pid"}],
            "cgroupsPath": cg,
        },
    });
    let prep = proto::PrepareContainer {
        id: id.into(),
        image_device: dev,
        image_fstype: "erofs".into(),
        config_json: spec.to_string(),
        files: Vec::new(),
    };
    let (bundle, cgroup_dir) =
        match rt.block_on(client.request(proto::Request::PrepareContainer(prep))) {
            Ok(proto::Response::Prepared {
                bundle, cgroup_dir, ..
            }) => (bundle, cgroup_dir),
            other => panic!("{other:?}\n{}", console_tail(&st.console_log)),
        };
    let update = |r: proto::Resources| {
        rt.block_on(client.request(proto::Request::UpdateResources {
            id: id.into(),
            resources: r,
        }))
    };
    let kind_of = |r: &Result<proto::Response, unicri_runtime_vm::VmError>| match r {
        Err(unicri_runtime_vm::VmError::Agent { kind, .. }) => kind.clone(),
        other => format!("{other:?}"),
    };
    // before the keeper made the cgroup: not found
    let r = update(proto::Resources::default());
    assert_eq!(kind_of(&r), "not_found", "{r:?}");
    let created = keeper_call(
        &rt,
        &client,
        &kp::Request::Create(kp::CreateRequest {
            id: id.into(),
            bundle: bundle.clone().into(),
            cgroup_dirs: vec![cgroup_dir.into()],
            ..kp::CreateRequest::default()
        }),
    );
    assert!(
        matches!(created, kp::Response::Container(_)),
        "{created:?}\n{}",
        console_tail(&st.console_log)
    );
    let started = keeper_call(&rt, &client, &kp::Request::Start { id: id.into() });
    assert!(
        !matches!(started, kp::Response::Error { .. }),
        "{started:?}"
    );
    let read_back = || {
        let files = ["memory.max", "cpu.max", "cpu.weight", "pids.max"];
        let mut argv = vec!["/bin/sleeper".to_string(), "cat".to_string()];
        argv.extend(files.iter().map(|f| format!("/sys/fs/cgroup{cg}/{f}")));
        match keeper_call(
            &rt,
            &client,
            &kp::Request::Exec(kp::ExecRequest {
                id: id.into(),
                argv,
                timeout_ms: 10_000,
            }),
        ) {
            kp::Response::Exec(r) => String::from_utf8_lossy(&r.stdout).into_owned(),
            other => panic!("{other:?}"),
        }
    };
    let r = update(proto::Resources {
        memory_limit_bytes: 64 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 1024,
        pids_limit: 64,
        ..proto::Resources::default()
    });
    assert!(matches!(r, Ok(proto::Response::Ok)), "{r:?}");
    let seen = read_back();
    eprintln!("cgroup after update:\n{seen}");
    for want in [
        "memory.max=67108864",
        "cpu.max=50000 100000",
        "cpu.weight=39",
        "pids.max=64",
    ] {
        assert!(seen.contains(want), "{want} not in\n{seen}");
    }
    // everything unset: no limits, weight and pids.max left as they are
    let r = update(proto::Resources::default());
    assert!(matches!(r, Ok(proto::Response::Ok)), "{r:?}");
    let seen = read_back();
    for want in [
        "memory.max=max",
        "cpu.max=max 100000",
        "cpu.weight=39",
        "pids.max=64",
    ] {
        assert!(seen.contains(want), "{want} not in\n{seen}");
    }
    // the UML kernel has no cpuset controller
    let r = update(proto::Resources {
        cpuset_cpus: "0".into(),
        ..proto::Resources::default()
    });
    assert_eq!(kind_of(&r), "failed_precondition", "{r:?}");
    assert!(format!("{r:?}").contains("cpuset"), "{r:?}");
    eprintln!("cpuset: {r:?}");
    let r = rt.block_on(client.request(proto::Request::UpdateResources {
        id: "nope".into(),
        resources: proto::Resources::default(),
    }));
    assert_eq!(kind_of(&r), "not_found", "{r:?}");

    let deleted = keeper_call(&rt, &client, &kp::Request::Delete { id: id.into() });
    assert!(
        !matches!(deleted, kp::Response::Error { .. }),
        "{deleted:?}"
    );
    let r = rt.block_on(client.request(proto::Request::RemoveContainer { id: id.into() }));
    assert!(matches!(r, Ok(proto::Response::Ok)), "{r:?}");
    engine::detach_image(&mut st, &img).expect("detach");
    stop_and_check_leaks(&st, &p, shm_before);
}
