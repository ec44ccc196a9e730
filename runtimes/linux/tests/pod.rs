//! Real-parts tests of the pod half of the `linux` backend: real namespaces, mounts and cgroups.
//! They need root and cgroupfs; otherwise each test prints a loud SKIP and passes.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use unicri_runtime_linux::cgroups::{CgroupLayout, CgroupManager};
use unicri_runtime_linux::ns::{self, NsKind};
use unicri_runtime_linux::{LinuxError, LinuxPod, PodState, Problem, files, mountinfo, sysctl};
use unicri_sandbox::pod::{DnsSpec, NamespaceMode, PodSpec};
use unicri_sandbox::{Classify, ErrorKind as Kind};

/// A test's world: a temp dir holding the pods dir, a unique top-level cgroup, and a guard that
/// cleans both even when the test fails.
struct Env {
    tmp: tempfile::TempDir,
    pods: PathBuf,
    cgroup_top: String,
    roots: Vec<PathBuf>,
}

impl Env {
    /// `None` (after a loud SKIP) when not root or no cgroupfs.
    fn new(test: &str) -> Option<Env> {
        if !nix::unistd::geteuid().is_root() {
            skip(test, "needs root");
            return None;
        }
        let mgr = match CgroupManager::detect() {
            Ok(m) => m,
            Err(e) => {
                skip(test, &format!("no cgroupfs: {e}"));
                return None;
            }
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let tmp_path = std::fs::canonicalize(tmp.path()).expect("canonicalize");
        let suffix: u64 = rand::random();
        Some(Env {
            pods: tmp_path.join("pods"),
            tmp,
            cgroup_top: format!("/unicri-test-{suffix:016x}"),
            roots: mgr.roots(),
        })
    }

    fn root(&self) -> PathBuf {
        std::fs::canonicalize(self.tmp.path()).expect("canonicalize")
    }

    fn spec(&self, name: &str) -> PodSpec {
        let id = unicri_sandbox::id::new_id();
        PodSpec {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: "default".into(),
            hostname: name.into(),
            cgroup_parent: format!("{}/pod-{}", self.cgroup_top, &id[..12]),
            id,
            ..PodSpec::default()
        }
    }

    /// No mounts under the temp dir (other than the prepared pods dir) and no test cgroup left.
    fn assert_no_leaks(&self) {
        let root = self.root();
        let mounts: Vec<PathBuf> =
            mountinfo::mounts_under(&mountinfo::read().expect("mountinfo"), &root)
                .into_iter()
                .filter(|m| m != &self.pods)
                .collect();
        assert!(
            mounts.is_empty(),
            "mounts left under {}: {mounts:?}",
            root.display()
        );
        for r in &self.roots {
            let d = r.join(self.cgroup_top.trim_start_matches('/'));
            assert!(!d.exists(), "cgroup dir left: {}", d.display());
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let root = self.root();
        let _ = ns::release_pods_dir(&self.pods);
        // deepest first; lazily, so a failing test cannot wedge the next
        let mut mounts = mountinfo::mounts_under(&mountinfo::read().unwrap_or_default(), &root);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        for r in &self.roots {
            remove_tree(&r.join(self.cgroup_top.trim_start_matches('/')));
        }
    }
}

/// Prints a SKIP line straight to the stderr fd (libtest's capture only swallows `eprintln!`).
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// rmdir a cgroup tree deepest first (cgroup dirs cannot be removed recursively).
fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .expect("gethostname")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn pod_with_own_namespaces_shm_files_and_cgroups() {
    let Some(env) = Env::new("pod_with_own_namespaces_shm_files_and_cgroups") else {
        return;
    };
    let mut spec = env.spec("web-0");
    spec.sysctls.insert("kernel.shmmni".into(), "1234".into());
    spec.sysctls.insert("kernel/msgmax".into(), "4321".into());
    spec.sysctls.insert("fs.mqueue.msg_max".into(), "17".into());
    spec.shm_size = Some(16 * 1024 * 1024);
    spec.dns = DnsSpec {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    };
    let host_shmmni = sysctl::read("kernel.shmmni").expect("host shmmni");
    let host_name = node_hostname();
    let pod_dir = env.pods.join(&spec.id);

    let state = LinuxPod::create(&pod_dir, &spec).expect("create pod");
    assert_eq!(state.pod_dir, pod_dir);
    assert_eq!(
        state.ipc_pin.as_deref(),
        Some(pod_dir.join("ns/ipc").as_path())
    );
    assert_eq!(
        state.uts_pin.as_deref(),
        Some(pod_dir.join("ns/uts").as_path())
    );
    assert!(ns::is_pinned(&pod_dir.join("ns/ipc")) && ns::is_pinned(&pod_dir.join("ns/uts")));
    assert_eq!(LinuxPod::check(&state), []);

    // UTS: the pod's hostname inside, the node's outside
    let inside = LinuxPod::run_in_uts(&state, node_hostname).expect("enter uts");
    assert_eq!(inside, "web-0");
    assert_eq!(node_hostname(), host_name);

    // IPC sysctls inside, node untouched
    let (shmmni, msgmax, mq) = LinuxPod::run_in_ipc(&state, || {
        (
            sysctl::read("kernel.shmmni").expect("shmmni"),
            sysctl::read("kernel.msgmax").expect("msgmax"),
            sysctl::read("fs.mqueue.msg_max").expect("msg_max"),
        )
    })
    .expect("enter ipc");
    assert_eq!(
        (shmmni.as_str(), msgmax.as_str(), mq.as_str()),
        ("1234", "4321", "17")
    );
    assert_eq!(
        sysctl::read("kernel.shmmni").expect("host shmmni"),
        host_shmmni
    );

    // shm tmpfs with the right options
    let entries = mountinfo::read().expect("mountinfo");
    let shm = mountinfo::mounted_at(&entries, &pod_dir.join("shm")).expect("shm mounted");
    assert_eq!(shm.fs_type, "tmpfs");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(
            shm.mount_options.iter().any(|o| o == opt),
            "{opt} in {:?}",
            shm.mount_options
        );
    }
    assert!(
        shm.super_options.iter().any(|o| o == "size=16384k"),
        "{:?}",
        shm.super_options
    );
    // tmpfs shows `mode=` only when it is not its default 1777, so look at the root itself
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pod_dir.join("shm"))
        .expect("stat shm")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777);

    // cgroup dir in every hierarchy, cpuset filled in
    let cg = state.cgroup.clone().expect("cgroup state");
    assert_eq!(cg.dirs.len(), env.roots.len());
    for (dir, root) in cg.dirs.iter().zip(&env.roots) {
        assert!(dir.is_dir(), "{}", dir.display());
        assert_eq!(dir, &root.join(spec.cgroup_parent.trim_start_matches('/')));
        if dir.join("cpuset.cpus").exists() {
            let cpus = std::fs::read_to_string(dir.join("cpuset.cpus")).expect("cpus");
            assert!(!cpus.trim().is_empty(), "cpuset.cpus copied from parent");
        }
    }
    if let CgroupLayout::V1(h) = CgroupManager::detect().expect("detect").layout() {
        let mounted: Vec<&str> = h
            .iter()
            .flat_map(|h| h.controllers.iter().map(String::as_str))
            .collect();
        for c in ["cpu", "memory", "pids"] {
            assert!(mounted.contains(&c), "{c} hierarchy used: {mounted:?}");
        }
    }
    assert_eq!(cg.pids().expect("pids"), Default::default());

    // files
    let read = |n: &str| std::fs::read_to_string(pod_dir.join(n)).expect(n);
    assert_eq!(read("hostname"), "web-0\n");
    assert_eq!(read("hosts"), files::HOSTS_HEADER);
    assert_eq!(
        read("resolv.conf"),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    files::add_pod_ip(
        &pod_dir.join("hosts"),
        "10.1.2.3".parse().expect("ip"),
        "web-0",
    )
    .expect("add ip");
    assert!(read("hosts").ends_with("10.1.2.3\tweb-0\n"));

    // state round-trips as JSON (the daemon stores it opaquely)
    let json = serde_json::to_string(&state).expect("json");
    let state: PodState = serde_json::from_str(&json).expect("from json");

    LinuxPod::remove(&state).expect("remove");
    LinuxPod::remove(&state).expect("remove twice");
    assert!(!pod_dir.exists());
    env.assert_no_leaks();
    let problems = LinuxPod::check(&state);
    assert!(
        problems.contains(&Problem::PodDirMissing(pod_dir.clone())),
        "{problems:?}"
    );
    assert!(
        problems.contains(&Problem::ShmNotMounted(pod_dir.join("shm"))),
        "{problems:?}"
    );
}

#[test]
fn host_ipc_and_host_network() {
    let Some(env) = Env::new("host_ipc_and_host_network") else {
        return;
    };
    // both from the node: no pins, no shm, node files
    let mut spec = env.spec("hostpod");
    spec.namespaces.ipc = NamespaceMode::Node;
    spec.namespaces.network = NamespaceMode::Node;
    spec.hostname = String::new();
    let pod_dir = env.pods.join(&spec.id);
    let state = LinuxPod::create(&pod_dir, &spec).expect("create host pod");
    assert_eq!(
        (
            state.ipc_pin.as_ref(),
            state.uts_pin.as_ref(),
            state.shm.as_ref()
        ),
        (None, None, None)
    );
    assert!(!pod_dir.join("ns").exists());
    assert_eq!(state.hostname, node_hostname());
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("hostname")).expect("hostname"),
        format!("{}\n", node_hostname())
    );
    assert_eq!(
        std::fs::read(pod_dir.join("hosts")).expect("hosts"),
        std::fs::read("/etc/hosts").expect("node hosts")
    );
    assert_eq!(
        std::fs::read(pod_dir.join("resolv.conf")).expect("resolv"),
        std::fs::read("/etc/resolv.conf").expect("node resolv")
    );
    assert_eq!(LinuxPod::check(&state), []);
    LinuxPod::remove(&state).expect("remove");
    env.assert_no_leaks();

    // host network, pod IPC: an IPC pin and shm, no UTS pin, the node's hostname
    let mut spec = env.spec("hostnet");
    spec.namespaces.network = NamespaceMode::Node;
    let pod_dir = env.pods.join(&spec.id);
    let state = LinuxPod::create(&pod_dir, &spec).expect("create host-network pod");
    assert!(state.ipc_pin.is_some() && state.shm.is_some() && state.uts_pin.is_none());
    assert_eq!(
        LinuxPod::run_in_uts(&state, node_hostname).expect("uts"),
        node_hostname()
    );
    LinuxPod::remove(&state).expect("remove");
    env.assert_no_leaks();

    // sysctls that would change the node are refused before anything is made
    let mut spec = env.spec("refused");
    spec.namespaces.ipc = NamespaceMode::Node;
    spec.sysctls
        .insert("kernel.shmmax".into(), "1000000".into());
    let pod_dir = env.pods.join(&spec.id);
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("IPC sysctl with host IPC");
    assert_eq!(e.kind(), Kind::InvalidArgument, "{e}");
    let mut spec = env.spec("refused-net");
    spec.namespaces.network = NamespaceMode::Node;
    spec.sysctls
        .insert("net.core.somaxconn".into(), "1024".into());
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("net sysctl with host network");
    assert_eq!(e.kind(), Kind::InvalidArgument, "{e}");
    let mut spec = env.spec("refused-node");
    spec.sysctls
        .insert("kernel.pid_max".into(), "4194304".into());
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("non-namespaced sysctl");
    assert!(e.to_string().contains("not a namespaced sysctl"), "{e}");
    assert!(!pod_dir.exists());
    env.assert_no_leaks();
}

#[test]
fn rollback_when_the_cgroup_cannot_be_created() {
    let Some(env) = Env::new("rollback_when_the_cgroup_cannot_be_created") else {
        return;
    };
    let mut spec = env.spec("doomed");
    spec.sysctls.insert("kernel.shmmni".into(), "2048".into());
    // `cgroup.procs` is a file in every cgroup dir (v1 and v2): mkdir below it fails, after the
    // test's top-level cgroup was already created by this pod
    spec.cgroup_parent = format!("{}/cgroup.procs/pod", env.cgroup_top);
    let pod_dir = env.pods.join(&spec.id);
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("cgroup step fails");
    assert!(
        matches!(e, LinuxError::CreateCgroup { .. }),
        "original error kept: {e:?}"
    );
    assert!(!pod_dir.exists(), "pod dir rolled back");
    env.assert_no_leaks();
}

#[test]
fn rollback_when_an_ipc_sysctl_cannot_be_written() {
    let Some(env) = Env::new("rollback_when_an_ipc_sysctl_cannot_be_written") else {
        return;
    };
    let mut spec = env.spec("badsysctl");
    // passes kubelet's prefix rule, but no such file: fails inside the pin thread
    spec.sysctls
        .insert("kernel.shm_no_such_knob".into(), "1".into());
    let pod_dir = env.pods.join(&spec.id);
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("unknown sysctl");
    match &e {
        LinuxError::SetSysctl { source, .. } => {
            assert_eq!(source.kind(), ErrorKind::NotFound, "{e}")
        }
        other => panic!("expected SetSysctl, got {other:?}"),
    }
    assert!(!pod_dir.exists(), "pod dir rolled back");
    env.assert_no_leaks();
}

#[test]
fn create_refuses_a_live_pod_dir_and_keeps_it() {
    let Some(env) = Env::new("create_refuses_a_live_pod_dir_and_keeps_it") else {
        return;
    };
    let spec = env.spec("twice");
    let pod_dir = env.pods.join(&spec.id);
    let state = LinuxPod::create(&pod_dir, &spec).expect("create");
    let e = LinuxPod::create(&pod_dir, &spec).expect_err("second create");
    assert_eq!(e.kind(), Kind::AlreadyExists, "{e}");
    assert_eq!(LinuxPod::check(&state), [], "the live pod is untouched");

    // recovery sees lost mounts, and remove copes with them
    let ipc = state.ipc_pin.clone().expect("ipc pin");
    let shm = state.shm.clone().expect("shm");
    umount2(&ipc, MntFlags::MNT_DETACH).expect("lose the ipc pin");
    umount2(&shm, MntFlags::MNT_DETACH).expect("lose shm");
    assert_eq!(
        LinuxPod::check(&state),
        [
            Problem::PinMissing {
                kind: "ipc",
                path: ipc
            },
            Problem::ShmNotMounted(shm)
        ]
    );
    LinuxPod::remove(&state).expect("remove");
    env.assert_no_leaks();
}

#[test]
fn net_sysctls_are_applied_inside_a_pinned_netns() {
    let Some(env) = Env::new("net_sysctls_are_applied_inside_a_pinned_netns") else {
        return;
    };
    // a netns pin like network-cni's NetNs::create makes
    let pin = env.root().join("netns");
    std::fs::write(&pin, b"").expect("pin file");
    let target = pin.clone();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare net");
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("pin netns");
    })
    .join()
    .expect("pin thread");

    let key = "net.ipv4.ip_unprivileged_port_start";
    let host = sysctl::read(key).expect("host value");
    let value = if host == "123" { "124" } else { "123" };
    let mut spec = env.spec("netpod");
    spec.sysctls.insert(key.into(), value.into());
    sysctl::apply_net_sysctls(&pin, &spec).expect("apply");
    let inside = ns::run_in(&pin, NsKind::Net, || sysctl::read(key))
        .expect("enter netns")
        .expect("read");
    assert_eq!(inside, value);
    assert_eq!(sysctl::read(key).expect("host value"), host);

    // refused for host network; nothing to do without net sysctls
    spec.namespaces.network = NamespaceMode::Node;
    assert!(sysctl::apply_net_sysctls(&pin, &spec).is_err());
    assert!(sysctl::apply_net_sysctls(&pin, &env.spec("none")).is_ok());

    ns::unpin(&pin).expect("unpin");
    ns::unpin(&pin).expect("unpin twice");
    env.assert_no_leaks();
}

#[test]
fn cgroup_with_a_process_is_reported_and_removed_after_it_exits() {
    let Some(env) = Env::new("cgroup_with_a_process_is_reported_and_removed_after_it_exits") else {
        return;
    };
    let spec = env.spec("busy");
    let pod_dir = env.pods.join(&spec.id);
    let state = LinuxPod::create(&pod_dir, &spec).expect("create");
    let cg = state.cgroup.clone().expect("cgroup");

    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = i32::try_from(child.id()).expect("pid");
    for d in &cg.dirs {
        std::fs::write(d.join("cgroup.procs"), pid.to_string()).expect("attach");
    }
    assert!(cg.pids().expect("pids").contains(&pid));

    let e = LinuxPod::remove(&state).expect_err("busy cgroup");
    let text = e.to_string();
    assert!(
        text.contains("remove cgroups") && text.contains(&pid.to_string()),
        "{text}"
    );
    assert!(!pod_dir.exists(), "the rest of the pod is gone");

    child.kill().expect("kill");
    child.wait().expect("reap");
    LinuxPod::remove(&state).expect("remove after the process exited");
    env.assert_no_leaks();
}
