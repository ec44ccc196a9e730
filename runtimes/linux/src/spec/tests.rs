use std::collections::BTreeMap;

use oci_spec::runtime::{Capability, LinuxDeviceType, LinuxSeccompAction};
use unicri_sandbox::container::{DeviceSpec, MountSpec, Propagation, SeccompProfile, SecuritySpec};
use unicri_sandbox::pod::NamespaceMode;

use super::*;

struct Fixture {
    rootfs: tempfile::TempDir,
    pod_dir: tempfile::TempDir,
    container: ContainerSpec,
    image: ImageConfig,
    pod: PodSpec,
    state: PodState,
}

impl Fixture {
    fn new() -> Fixture {
        let rootfs = tempfile::tempdir().expect("rootfs");
        std::fs::create_dir_all(rootfs.path().join("etc")).expect("etc");
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:101:102::/srv/web:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\nweb:x:102:\nlogs:x:4:web\n",
        )
        .expect("group");
        let pod_dir = tempfile::tempdir().expect("pod dir");
        let p = pod_dir.path();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(p.join(f), "x\n").expect("pod file");
        }
        std::fs::create_dir_all(p.join("shm")).expect("shm");
        let state = PodState {
            pod_dir: p.to_path_buf(),
            ipc_pin: Some(p.join("ns/ipc")),
            uts_pin: Some(p.join("ns/uts")),
            shm: Some(p.join("shm")),
            hostname: "web-0".into(),
            hostname_file: Some(p.join("hostname")),
            hosts_file: Some(p.join("hosts")),
            resolv_conf: Some(p.join("resolv.conf")),
            cgroup: None,
        };
        Fixture {
            rootfs,
            pod_dir,
            container: ContainerSpec {
                id: "c".repeat(64),
                ..ContainerSpec::default()
            },
            image: ImageConfig {
                entrypoint: vec!["/bin/server".into()],
                cmd: vec!["--port".into(), "80".into()],
                env: vec!["PATH=/opt/bin:/bin".into(), "A=image".into()],
                ..ImageConfig::default()
            },
            pod: PodSpec::default(),
            state,
        }
    }

    fn inputs(&self) -> SpecInputs<'_> {
        SpecInputs {
            container: &self.container,
            image: &self.image,
            pod: &self.pod,
            pod_state: &self.state,
            netns: Some(Path::new("/run/netns/test")),
            rootfs: self.rootfs.path(),
            cgroups_path: "/kubepods/podx/c".into(),
            pid_ns: None,
        }
    }

    fn build(&self) -> Result<BuiltSpec, LinuxError> {
        build_with(&self.inputs(), &host())
    }
}

fn host() -> HostInfo {
    HostInfo {
        cgroup_v2: true,
        apparmor: false,
        swap: true,
        last_cap: Some(40),
        bounding: None,
        seccomp: seccomp::Target {
            scmp_arch: "SCMP_ARCH_X86_64".into(),
            go_arch: "amd64".into(),
            kernel: (6, 1),
        },
    }
}

fn argv(command: &[&str], args: &[&str], entrypoint: &[&str], cmd: &[&str]) -> Vec<String> {
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let c = ContainerSpec {
        command: v(command),
        args: v(args),
        ..ContainerSpec::default()
    };
    let i = ImageConfig {
        entrypoint: v(entrypoint),
        cmd: v(cmd),
        ..ImageConfig::default()
    };
    process_args(&c, &i).unwrap_or_default()
}

#[test]
fn argv_merge_rules() {
    assert_eq!(argv(&[], &[], &["/ep"], &["cmd"]), ["/ep", "cmd"]);
    assert_eq!(argv(&[], &["a"], &["/ep"], &["cmd"]), ["/ep", "a"]);
    assert_eq!(argv(&["/c"], &[], &["/ep"], &["cmd"]), ["/c"]);
    assert_eq!(argv(&["/c"], &["a"], &["/ep"], &["cmd"]), ["/c", "a"]);
    assert_eq!(argv(&[], &[], &[], &["sh"]), ["sh"]);
    assert_eq!(argv(&[], &[], &[""], &["sh"]), ["sh"]);
    let c = ContainerSpec::default();
    assert!(matches!(
        process_args(&c, &ImageConfig::default()),
        Err(LinuxError::InvalidArgument {
            what: "command",
            ..
        })
    ));
}

#[test]
fn env_overrides_in_place_and_adds_defaults() {
    let mut f = Fixture::new();
    f.container.env = vec![
        ("A".into(), "container".into()),
        ("B".into(), "1".into()),
        ("A".into(), "last".into()),
    ];
    f.container.tty = true;
    let built = f.build().expect("build");
    let process = built.spec.process().as_ref().expect("process");
    let env = process.env().as_ref().expect("env");
    assert_eq!(
        env,
        &[
            "PATH=/opt/bin:/bin",
            "HOSTNAME=web-0",
            "A=last",
            "B=1",
            "TERM=xterm",
            "HOME=/root"
        ]
    );
    assert_eq!(process.terminal(), Some(true));

    let image = ImageConfig::default();
    let env = environment(&ContainerSpec::default(), &image, "h", "");
    assert_eq!(
        env,
        [
            format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=h".into(),
            "HOME=/".into()
        ]
    );
}

#[test]
fn process_user_cwd_and_signal() {
    let mut f = Fixture::new();
    f.image.user = "web".into();
    f.image.working_dir = "/srv".into();
    f.image.stop_signal = "SIGQUIT".into();
    f.container.security.supplemental_groups = vec![9000];
    f.container.security.no_new_privs = true;
    let built = f.build().expect("build");
    assert_eq!((built.uid, built.gid), (101, 102));
    assert_eq!(built.additional_gids, vec![102, 4, 9000]);
    assert_eq!(built.stop_signal, libc::SIGQUIT);
    let p = built.spec.process().as_ref().expect("process");
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.user().uid(), 101);
    assert_eq!(
        p.user().additional_gids().as_deref(),
        Some(&[102, 4, 9000][..])
    );
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.oom_score_adj(), None);
    assert!(
        p.env()
            .as_ref()
            .expect("env")
            .contains(&"HOME=/srv/web".to_string())
    );

    f.container.working_dir = "/work".into();
    f.container.stop_signal = "9".into();
    let built = f.build().expect("build");
    assert_eq!(built.stop_signal, 9);
    let p = built.spec.process().as_ref().expect("process");
    assert_eq!(p.cwd(), Path::new("/work"));

    f.container.security.run_as_username = "ghost".into();
    let err = f.build().expect_err("unknown user");
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[test]
fn signals_parse() {
    assert_eq!(parse_signal("SIGTERM").expect("a"), 15);
    assert_eq!(parse_signal("term").expect("b"), 15);
    assert_eq!(parse_signal("SIGUSR1").expect("c"), libc::SIGUSR1);
    assert_eq!(parse_signal("RTMIN+3").expect("d"), 37);
    assert_eq!(parse_signal("SIGRTMAX-1").expect("e"), 63);
    assert!(parse_signal("SIGNOPE").is_err());
    assert!(parse_signal("0").is_err());
}

fn destinations(s: &Spec) -> Vec<String> {
    s.mounts()
        .iter()
        .flatten()
        .map(|m| m.destination().display().to_string())
        .collect()
}

fn mount_at<'a>(s: &'a Spec, dest: &str) -> &'a oci_spec::runtime::Mount {
    s.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

#[test]
fn default_and_pod_mounts_in_order() {
    let f = Fixture::new();
    let built = f.build().expect("build");
    let s = &built.spec;
    assert_eq!(
        destinations(s),
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
        ]
    );
    let sys = mount_at(s, "/sys");
    assert!(
        sys.options()
            .as_ref()
            .expect("opts")
            .contains(&"ro".to_string())
    );
    let shm = mount_at(s, "/dev/shm");
    assert_eq!(
        shm.source().as_deref(),
        Some(f.pod_dir.path().join("shm").as_path())
    );
    assert_eq!(shm.typ().as_deref(), Some("bind"));
    let hosts = mount_at(s, "/etc/hosts");
    assert_eq!(
        hosts.options().as_deref(),
        Some(&["rbind".to_string(), "rprivate".into(), "rw".into()][..])
    );
    assert_eq!(s.hostname().as_deref(), Some("web-0"));
    let root = s.root().as_ref().expect("root");
    assert_eq!(root.path(), f.rootfs.path());
    assert_eq!(root.readonly(), Some(false));
}

#[test]
fn user_mounts_replace_defaults_and_set_propagation() {
    let mut f = Fixture::new();
    let data = tempfile::tempdir().expect("data");
    let hosts = data.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts");
    f.container.mounts = vec![
        MountSpec {
            container_path: "/data/sub".into(),
            host_path: data.path().display().to_string(),
            readonly: true,
            ..MountSpec::default()
        },
        MountSpec {
            container_path: "/etc/hosts".into(),
            host_path: hosts.display().to_string(),
            ..MountSpec::default()
        },
        MountSpec {
            container_path: "/data".into(),
            host_path: data.path().display().to_string(),
            ..MountSpec::default()
        },
    ];
    let built = f.build().expect("build");
    let s = &built.spec;
    let dests = destinations(s);
    assert_eq!(dests.iter().filter(|d| *d == "/etc/hosts").count(), 1);
    let h = mount_at(s, "/etc/hosts");
    assert_eq!(h.source().as_deref(), Some(hosts.as_path()));
    // parents before children
    let pos = |d: &str| dests.iter().position(|x| x == d).expect("present");
    assert!(pos("/data") < pos("/data/sub"));
    let sub = mount_at(s, "/data/sub");
    assert_eq!(
        sub.options().as_deref(),
        Some(&["rbind".to_string(), "rprivate".into(), "ro".into()][..])
    );
    let linux = s.linux().as_ref().expect("linux");
    assert_eq!(linux.rootfs_propagation(), &None);

    // a /dev mount replaces the /dev defaults but keeps the pod's /dev/shm on top
    f.container.mounts = vec![MountSpec {
        container_path: "/dev".into(),
        host_path: "/dev".into(),
        ..MountSpec::default()
    }];
    let built = f.build().expect("build");
    let dests = destinations(&built.spec);
    assert!(!dests.contains(&"/dev/pts".to_string()));
    assert!(!dests.contains(&"/dev/mqueue".to_string()));
    let pos = |d: &str| dests.iter().position(|x| x == d).expect("present");
    assert!(pos("/dev") < pos("/dev/shm"));

    // `/` is mounted shared or private on every test host; slave needs shared-or-slave
    let root_shared = crate::mountinfo::read()
        .ok()
        .and_then(|m| {
            m.iter()
                .rfind(|e| e.mount_point == Path::new("/"))
                .map(|e| e.optional.iter().any(|o| o.starts_with("shared:")))
        })
        .unwrap_or(false);
    f.container.mounts = vec![MountSpec {
        container_path: "/data".into(),
        host_path: data.path().display().to_string(),
        propagation: Propagation::Bidirectional,
        ..MountSpec::default()
    }];
    let on_tmp_shared = crate::mountinfo::read().ok().is_some_and(|m| {
        let canon = std::fs::canonicalize(data.path()).unwrap_or_default();
        m.iter()
            .filter(|e| canon.starts_with(&e.mount_point))
            .max_by_key(|e| e.mount_point.components().count())
            .is_some_and(|e| e.optional.iter().any(|o| o.starts_with("shared:")))
    });
    match f.build() {
        Ok(b) => {
            assert!(
                on_tmp_shared,
                "built although not shared (root shared: {root_shared})"
            );
            let linux = b.spec.linux().as_ref().expect("linux");
            assert_eq!(linux.rootfs_propagation().as_deref(), Some("shared"));
            let m = mount_at(&b.spec, "/data");
            assert!(
                m.options()
                    .as_ref()
                    .expect("o")
                    .contains(&"rshared".to_string())
            );
        }
        Err(e) => {
            assert!(!on_tmp_shared, "{e}");
            assert!(matches!(e, LinuxError::MountPropagation { .. }), "{e}");
        }
    }
}

#[test]
fn bad_mounts_are_refused() {
    let mut f = Fixture::new();
    let links = tempfile::tempdir().expect("tempdir");
    let dangling = links.path().join("dangling");
    std::os::unix::fs::symlink(links.path().join("nowhere/deeper"), &dangling).expect("symlink");
    let cases = [
        (
            MountSpec {
                container_path: "relative".into(),
                host_path: "/tmp".into(),
                ..MountSpec::default()
            },
            "InvalidArgument",
        ),
        (
            MountSpec {
                container_path: "/x".into(),
                ..MountSpec::default()
            },
            "InvalidArgument",
        ),
        (
            MountSpec {
                container_path: "/x".into(),
                // a dangling symlink: made by nobody, resolvable by nobody
                host_path: dangling.display().to_string(),
                ..MountSpec::default()
            },
            "SpecNotFound",
        ),
        (
            MountSpec {
                container_path: "/x".into(),
                image: "busybox".into(),
                ..MountSpec::default()
            },
            "SpecUnsupported",
        ),
    ];
    for (m, want) in cases {
        f.container.mounts = vec![m.clone()];
        let err = f.build().expect_err("refused");
        let got = match err {
            LinuxError::InvalidArgument { .. } => "InvalidArgument",
            LinuxError::SpecNotFound { .. } => "SpecNotFound",
            LinuxError::SpecUnsupported { .. } => "SpecUnsupported",
            _ => "other",
        };
        assert_eq!(got, want, "{m:?}: {err}");
    }
}

#[test]
fn namespaces_follow_pod_and_pid_mode() {
    let mut f = Fixture::new();
    let built = f.build().expect("build");
    let ns = built
        .spec
        .linux()
        .as_ref()
        .expect("linux")
        .namespaces()
        .clone()
        .expect("ns");
    let find = |ns: &[LinuxNamespace], t: LinuxNamespaceType| {
        ns.iter().find(|n| n.typ() == t).map(|n| n.path().clone())
    };
    assert_eq!(find(&ns, LinuxNamespaceType::Mount), Some(None));
    assert_eq!(find(&ns, LinuxNamespaceType::Pid), Some(None));
    assert_eq!(
        find(&ns, LinuxNamespaceType::Ipc),
        Some(f.state.ipc_pin.clone())
    );
    assert_eq!(
        find(&ns, LinuxNamespaceType::Uts),
        Some(f.state.uts_pin.clone())
    );
    assert_eq!(
        find(&ns, LinuxNamespaceType::Network),
        Some(Some(PathBuf::from("/run/netns/test")))
    );
    assert_eq!(find(&ns, LinuxNamespaceType::Cgroup), Some(None));
    assert_eq!(find(&ns, LinuxNamespaceType::User), None);

    // host network + IPC, shared pid namespace; cgroup v1
    f.state.ipc_pin = None;
    f.state.uts_pin = None;
    f.state.shm = None;
    f.pod.namespaces.ipc = NamespaceMode::Node;
    f.container.security.pid = PidMode::Pod;
    let pid = PathBuf::from("/proc/42/ns/pid");
    let mut inputs = f.inputs();
    inputs.netns = None;
    inputs.pid_ns = Some(&pid);
    let v1 = HostInfo {
        cgroup_v2: false,
        ..host()
    };
    let built = build_with(&inputs, &v1).expect("build");
    let ns = built
        .spec
        .linux()
        .as_ref()
        .expect("linux")
        .namespaces()
        .clone()
        .expect("ns");
    assert_eq!(find(&ns, LinuxNamespaceType::Pid), Some(Some(pid.clone())));
    for t in [
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ] {
        assert_eq!(find(&ns, t), None, "{t:?}");
    }
    assert_eq!(built.spec.hostname(), &None);
    let shm = mount_at(&built.spec, "/dev/shm");
    assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));

    inputs.pid_ns = None;
    assert!(
        build_with(&inputs, &v1).is_err(),
        "pod pid mode without a path"
    );
    f.container.security.pid = PidMode::Node;
    let mut inputs = f.inputs();
    inputs.netns = None;
    let built = build_with(&inputs, &v1).expect("host pid");
    let ns = built
        .spec
        .linux()
        .as_ref()
        .expect("linux")
        .namespaces()
        .clone()
        .expect("ns");
    assert_eq!(find(&ns, LinuxNamespaceType::Pid), None);
}

#[test]
fn resources_and_device_rules() {
    let mut f = Fixture::new();
    f.container.resources = Resources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1".into(),
        hugepage_limits: BTreeMap::from([("2MB".to_string(), 4u64 << 20)]),
        unified: BTreeMap::from([("memory.high".to_string(), "50000000".to_string())]),
        oom_score_adj: 500,
        ..Resources::default()
    };
    f.container.devices = vec![DeviceSpec {
        container_path: "/dev/xnull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    let built = f.build().expect("build");
    let linux = built.spec.linux().as_ref().expect("linux");
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/podx/c"))
    );
    let r = linux.resources().as_ref().expect("resources");
    let cpu = r.cpu().as_ref().expect("cpu");
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
    let mem = r.memory().as_ref().expect("memory");
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
    assert!(r.pids().is_none());
    let hp = r.hugepage_limits().as_ref().expect("hugepages");
    assert_eq!(
        (hp[0].page_size().as_str(), hp[0].limit()),
        ("2MB", 4 << 20)
    );
    assert_eq!(
        r.unified()
            .as_ref()
            .and_then(|u| u.get("memory.high"))
            .map(String::as_str),
        Some("50000000")
    );
    let rules: Vec<String> = r
        .devices()
        .iter()
        .flatten()
        .map(|d| format!("{}{}", if d.allow() { "+" } else { "-" }, d))
        .collect();
    assert_eq!(rules[0], "-a *:* rwm");
    for want in [
        "+c *:* m",
        "+b *:* m",
        "+c 1:3 rwm",
        "+c 136:* rwm",
        "+c 5:2 rwm",
    ] {
        assert!(rules.contains(&want.to_string()), "{want} in {rules:?}");
    }
    assert_eq!(rules.last().map(String::as_str), Some("+c 1:3 rwm"));
    let devs = linux.devices().as_ref().expect("devices");
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].path(), Path::new("/dev/xnull"));
    assert_eq!(devs[0].typ(), LinuxDeviceType::C);

    f.container.resources = Resources {
        cpu_shares: -1,
        ..Resources::default()
    };
    assert!(f.build().is_err());
}

#[test]
fn security_defaults_and_seccomp() {
    let mut f = Fixture::new();
    f.container.security.seccomp = SeccompProfile::RuntimeDefault;
    f.container.security.capabilities_drop = vec!["NET_RAW".into()];
    f.container.annotations = BTreeMap::from([("a".to_string(), "b".to_string())]);
    let built = f.build().expect("build");
    let linux = built.spec.linux().as_ref().expect("linux");
    assert_eq!(
        linux.masked_paths().as_deref().map(<[String]>::len),
        Some(DEFAULT_MASKED_PATHS.len())
    );
    assert_eq!(
        linux.readonly_paths().as_deref().map(<[String]>::len),
        Some(DEFAULT_READONLY_PATHS.len())
    );
    let sc = linux.seccomp().as_ref().expect("seccomp");
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert!(
        !sc.syscalls()
            .iter()
            .flatten()
            .any(|s| s.names().contains(&"mount".to_string()))
    );
    let caps = built
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .expect("caps");
    let b = caps.bounding().clone().expect("bounding");
    assert!(!b.contains(&Capability::NetRaw) && b.contains(&Capability::Chown));
    assert_eq!(
        built
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("a"))
            .map(String::as_str),
        Some("b")
    );

    f.container.security.masked_paths = vec!["/proc/x".into()];
    f.container.security.readonly_rootfs = true;
    let built = f.build().expect("build");
    let linux = built.spec.linux().as_ref().expect("linux");
    assert_eq!(
        linux.masked_paths().as_deref(),
        Some(&["/proc/x".to_string()][..])
    );
    assert_eq!(
        built.spec.root().as_ref().and_then(|r| r.readonly()),
        Some(true)
    );
    let hosts = mount_at(&built.spec, "/etc/hosts");
    assert!(
        hosts
            .options()
            .as_ref()
            .expect("o")
            .contains(&"ro".to_string())
    );

    f.container.security.capabilities_add = vec!["NOT_A_CAP".into()];
    assert!(matches!(f.build(), Err(LinuxError::InvalidArgument { .. })));
}

#[test]
fn privileged_gets_everything() {
    let mut f = Fixture::new();
    f.container.security.privileged = true;
    f.container.security.seccomp = SeccompProfile::RuntimeDefault;
    let built = f.build().expect("build");
    let s = &built.spec;
    let linux = s.linux().as_ref().expect("linux");
    assert!(linux.seccomp().is_none());
    assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("rules");
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    assert_eq!(rules[0].to_string(), "a *:* rwm");
    let devs = linux.devices().as_ref().expect("devices");
    assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
    let caps = s
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .expect("caps");
    assert_eq!(caps.bounding().as_ref().map(|b| b.len()), Some(41));
    assert_eq!(caps.effective().as_ref().map(|b| b.len()), Some(41));
    let sys = mount_at(s, "/sys");
    assert!(
        !sys.options()
            .as_ref()
            .expect("o")
            .contains(&"ro".to_string())
    );
    let ns = linux.namespaces().clone().expect("ns");
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
}

#[test]
fn spec_serializes_for_libcontainer() {
    let mut f = Fixture::new();
    f.container.security.seccomp = SeccompProfile::RuntimeDefault;
    let built = f.build().expect("build");
    let json = serde_json::to_value(&built.spec).expect("json");
    assert!(json["process"].get("oomScoreAdj").is_none());
    assert!(json["process"].get("rlimits").is_none());
    let back: Spec = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, built.spec);
    let _ = SecuritySpec::default();
}

#[test]
fn a_missing_mount_host_path_is_made_as_a_directory() {
    let mut f = Fixture::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = tmp.path().join("made/by/the/runtime");
    f.container.mounts = vec![MountSpec {
        container_path: "/data".into(),
        host_path: host.display().to_string(),
        ..MountSpec::default()
    }];
    f.build().expect("built");
    assert!(host.is_dir());
}
