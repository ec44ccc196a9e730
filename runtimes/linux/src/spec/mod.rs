//! The OCI runtime spec of a `linux` container: [`build`] turns a backend-neutral
//! [`ContainerSpec`] (plus its image's config, its pod and the pod's [`PodState`]) into an
//! [`oci_spec::runtime::Spec`] for libcontainer, following containerd 1.7's CRI plugin and runc's
//! conventions (which kubelet and critest expect).
//!
//! * process: argv (Docker's entrypoint/cmd rules), environment, cwd, user ([`crate::user`]),
//!   capabilities ([`caps`]), `no_new_privileges`; never `oom_score_adj` (libcontainer would write
//!   it into its caller's own `/proc/self`; the keeper sets it on the container process).
//! * mounts ([`mounts`]), namespaces, devices and device cgroup rules ([`devices`]), resources,
//!   masked/read-only paths, seccomp ([`crate::seccomp`]), AppArmor where the node has it.
//!
//! Everything the node decides (cgroup version, AppArmor, swap accounting, capabilities the
//! kernel knows, architecture) is read once into [`HostInfo`]; [`build_with`] takes it explicitly.

pub mod caps;
pub mod devices;
pub mod mounts;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Linux, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Process, Root, Spec, User,
};
use unicri_sandbox::container::{ContainerSpec, ImageConfig, Resources};
use unicri_sandbox::pod::{PidMode, PodSpec};

use crate::error::LinuxError;
use crate::pod::PodState;
use crate::seccomp;
use crate::user;

/// `PATH` when neither the image nor the container sets one (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths masked in every unprivileged container unless the spec lists its own (containerd's).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths read-only in every unprivileged container unless the spec lists its own.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What [`build`] needs to make one container's spec.
#[derive(Clone, Debug)]
pub struct SpecInputs<'a> {
    /// The container.
    pub container: &'a ContainerSpec,
    /// Its image's config.
    pub image: &'a ImageConfig,
    /// Its pod.
    pub pod: &'a PodSpec,
    /// What the pod's creation made (namespace pins, `/dev/shm`, pod files).
    pub pod_state: &'a PodState,
    /// Pinned netns file of the pod; `None` when the pod uses the host network.
    pub netns: Option<&'a Path>,
    /// Mounted, writable rootfs directory of the container (an overlay the caller made).
    pub rootfs: &'a Path,
    /// cgroupsPath for the container, e.g. `/kubepods/pod<uid>/<container id>` (cgroupfs driver).
    pub cgroups_path: String,
    /// PID namespace to join: `Some(path)` for pod-shared (`PidMode::Pod`, path of the pod init's
    /// namespace) or `TARGET`; `None` means a new namespace for `PidMode::Container`, the node's
    /// for `PidMode::Node`.
    pub pid_ns: Option<&'a Path>,
}

/// The result of [`build`].
#[derive(Clone, Debug)]
pub struct BuiltSpec {
    /// The OCI runtime spec.
    pub spec: Spec,
    /// The signal that stops the container (the spec's, else the image's, else SIGTERM).
    pub stop_signal: i32,
    /// The process's uid.
    pub uid: u32,
    /// The process's gid.
    pub gid: u32,
    /// The process's supplementary gids.
    pub additional_gids: Vec<u32>,
}

/// Facts about the node that shape a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// cgroup v2 (unified): containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled` is `Y`).
    pub apparmor: bool,
    /// The memory controller accounts swap (a memory limit then also caps memory + swap).
    pub swap: bool,
    /// Highest capability number the kernel knows (`None`: all oci-spec knows).
    pub last_cap: Option<u8>,
    /// This process's bounding set; no container gets a capability outside it.
    pub bounding: Option<u64>,
    /// Architecture and kernel, for seccomp profile conditions.
    pub seccomp: seccomp::Target,
}

impl HostInfo {
    /// Reads the node's facts. `cgroups_path` is the container's cgroup; its parent (the pod
    /// cgroup, which exists) is where swap accounting is looked for on cgroup v2.
    pub fn detect(cgroups_path: &str) -> HostInfo {
        let root = Path::new(crate::cgroups::CGROUP_ROOT);
        let cgroup_v2 = root.join("cgroup.controllers").exists();
        let swap = if cgroup_v2 {
            let parent = Path::new(cgroups_path)
                .parent()
                .map(|p| p.strip_prefix("/").unwrap_or(p).to_path_buf())
                .unwrap_or_default();
            root.join(parent).join("memory.swap.max").exists()
        } else {
            root.join("memory/memory.memsw.limit_in_bytes").exists()
        };
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        HostInfo {
            cgroup_v2,
            apparmor,
            swap,
            last_cap: caps::host_last_cap(),
            bounding: caps::host_bounding(),
            seccomp: seccomp::Target::host(),
        }
    }
}

/// Builds the OCI spec of a container on this node (see the module docs). Blocking (reads the
/// rootfs' `/etc/passwd`, stats devices, reads seccomp profiles).
pub fn build(inputs: &SpecInputs<'_>) -> Result<BuiltSpec, LinuxError> {
    build_with(inputs, &HostInfo::detect(&inputs.cgroups_path))
}

/// [`build`] for a given node.
pub fn build_with(inputs: &SpecInputs<'_>, host: &HostInfo) -> Result<BuiltSpec, LinuxError> {
    let c = inputs.container;
    let sec = &c.security;
    let privileged = sec.privileged;

    let argv = process_args(c, inputs.image)?;
    let resolved = user::resolve(inputs.rootfs, sec, &inputs.image.user)?;
    let env = environment(c, inputs.image, &inputs.pod_state.hostname, &resolved.home);
    let cwd = working_dir(c, inputs.image)?;
    let stop_signal = if c.stop_signal.is_empty() {
        if inputs.image.stop_signal.is_empty() {
            libc::SIGTERM
        } else {
            parse_signal(&inputs.image.stop_signal)?
        }
    } else {
        parse_signal(&c.stop_signal)?
    };

    let all_caps = caps::all_capabilities(host.last_cap);
    let mut capabilities = caps::compute(sec, &all_caps)?;
    if let Some(mask) = host.bounding {
        caps::restrict(&mut capabilities, mask);
    }
    let bounding: Capabilities = capabilities.bounding().clone().unwrap_or_default();

    let mut u = User::default();
    u.set_uid(resolved.uid);
    u.set_gid(resolved.gid);
    u.set_additional_gids(Some(resolved.additional_gids.clone()));

    let mut process = Process::default();
    process.set_terminal(Some(c.tty));
    process.set_user(u);
    process.set_args(Some(argv));
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(None);
    // `Some(false)` must not be written: libcontainer 0.7 loads seccomp *after* dropping
    // capabilities whenever the field is present, which fails without no_new_privs (seccomp is
    // then a privileged operation); absent, it loads the filter while it still has them.
    process.set_no_new_privileges(sec.no_new_privs.then_some(true));
    process.set_oom_score_adj(None);
    process.set_apparmor_profile(apparmor_profile(sec, host));

    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf());
    root.set_readonly(Some(sec.readonly_rootfs));

    let (mounts, rootfs_propagation) = mounts::build(inputs)?;

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces(inputs, host)?));
    linux.set_cgroups_path(Some(PathBuf::from(&inputs.cgroups_path)));
    let (devs, mut rules) = if privileged {
        (
            devices::host_devices()?,
            vec![devices::rule(true, None, None, None, "rwm")],
        )
    } else {
        let mut rules = vec![devices::rule(false, None, None, None, "rwm")];
        rules.extend(
            devices::DEFAULT_ALLOWED
                .iter()
                .map(|&(t, maj, min, access)| devices::rule(true, Some(t), maj, min, access)),
        );
        (vec![], rules)
    };
    let mut devs = devs;
    for d in &c.devices {
        for (dev, rule) in devices::from_spec(d)? {
            devs.retain(|existing| existing.path() != dev.path());
            devs.push(dev);
            if !privileged {
                rules.push(rule);
            }
        }
    }
    linux.set_devices(Some(devs));
    linux.set_resources(Some(resources(&c.resources, rules, host)?));
    linux.set_rootfs_propagation(rootfs_propagation);
    if privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_seccomp(None);
    } else {
        let or_default = |given: &[String], default: &[&str]| -> Vec<String> {
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.to_vec()
            }
        };
        linux.set_masked_paths(Some(or_default(&sec.masked_paths, DEFAULT_MASKED_PATHS)));
        linux.set_readonly_paths(Some(or_default(
            &sec.readonly_paths,
            DEFAULT_READONLY_PATHS,
        )));
        linux.set_seccomp(seccomp::for_container(
            &sec.seccomp,
            &bounding,
            &host.seccomp,
        )?);
    }
    linux.set_sysctl(None);

    let mut spec = Spec::default();
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    // the hostname is set only where the container gets the pod's own UTS namespace (libcontainer
    // refuses a hostname without a UTS namespace and would otherwise rename the node)
    spec.set_hostname(
        inputs
            .pod_state
            .uts_pin
            .as_ref()
            .map(|_| inputs.pod_state.hostname.clone()),
    );
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations((!c.annotations.is_empty()).then(|| {
        c.annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    }));
    spec.set_linux(Some(linux));

    Ok(BuiltSpec {
        spec,
        stop_signal,
        uid: resolved.uid,
        gid: resolved.gid,
        additional_gids: resolved.additional_gids,
    })
}

/// The process's argv (containerd's rules, from moby): a `command` replaces the entrypoint and
/// drops the image's cmd (`args` follow it); with only `args`, they replace the image's cmd after
/// the entrypoint; else entrypoint + cmd. An entrypoint of `[""]` counts as none.
pub fn process_args(c: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>, LinuxError> {
    let mut argv = if !c.command.is_empty() {
        c.command.clone()
    } else if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty() {
        vec![]
    } else {
        image.entrypoint.clone()
    };
    if !c.args.is_empty() {
        argv.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() {
        return Err(LinuxError::InvalidArgument {
            what: "command",
            value: String::new(),
            reason: "neither the container nor its image names a command".into(),
        });
    }
    Ok(argv)
}

/// Sets `key=value` in `env`, in place when the key is there, else at the end.
fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// The process environment, containerd's way: `PATH` (default), `HOSTNAME`, then the image's
/// variables, then the container's, each replacing an earlier value of the same key in place;
/// `TERM=xterm` with a tty and `HOME` from `/etc/passwd` when still unset.
pub fn environment(
    c: &ContainerSpec,
    image: &ImageConfig,
    hostname: &str,
    home: &str,
) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    if !hostname.is_empty() {
        set_env(&mut env, "HOSTNAME", hostname);
    }
    for e in &image.env {
        // an image entry without `=` carries no value; skip it
        if let Some((k, v)) = e.split_once('=')
            && !k.is_empty()
        {
            set_env(&mut env, k, v);
        }
    }
    for (k, v) in &c.env {
        if !k.is_empty() {
            set_env(&mut env, k, v);
        }
    }
    if c.tty && !has_env(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !has_env(&env, "HOME") {
        env.push(format!("HOME={}", if home.is_empty() { "/" } else { home }));
    }
    env
}

/// The working directory: the container's, else the image's, else `/`; must be absolute.
fn working_dir(c: &ContainerSpec, image: &ImageConfig) -> Result<PathBuf, LinuxError> {
    let dir = if !c.working_dir.is_empty() {
        &c.working_dir
    } else if !image.working_dir.is_empty() {
        &image.working_dir
    } else {
        "/"
    };
    if !dir.starts_with('/') {
        return Err(LinuxError::InvalidArgument {
            what: "working directory",
            value: dir.to_string(),
            reason: "must be absolute".into(),
        });
    }
    Ok(PathBuf::from(dir))
}

/// Parses a stop signal: a number, or a name with or without `SIG` in any case (`SIGTERM`,
/// `term`, `RTMIN+3`).
pub fn parse_signal(s: &str) -> Result<i32, LinuxError> {
    const SIGRTMIN: i32 = 34;
    const SIGRTMAX: i32 = 64;
    let bad = |reason: &str| LinuxError::InvalidArgument {
        what: "stop signal",
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad("out of range"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, LinuxError> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse()
                .map_err(|_| bad("bad real-time signal offset"))?
        };
        let n = base + sign * off;
        if (SIGRTMIN..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad("real-time signal out of range"))
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| bad("unknown signal"))
}

/// The AppArmor profile: only where the node has AppArmor, never for privileged containers;
/// `unconfined` and `runtime/default` (no default profile is loaded by unicri) mean none.
fn apparmor_profile(
    sec: &unicri_sandbox::container::SecuritySpec,
    host: &HostInfo,
) -> Option<String> {
    if !host.apparmor || sec.privileged {
        return None;
    }
    let name = sec.apparmor.as_deref()?;
    let name = name.strip_prefix("localhost/").unwrap_or(name);
    match name {
        "" | "unconfined" | "runtime/default" => None,
        n => Some(n.to_string()),
    }
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The container's namespaces: a new mount namespace; the pod's IPC/UTS/network namespaces (the
/// node's when the pod has none); PID per [`SpecInputs::pid_ns`]; a new cgroup namespace on
/// cgroup v2 for unprivileged containers (containerd's rule); never a user namespace.
fn namespaces(inputs: &SpecInputs<'_>, host: &HostInfo) -> Result<Vec<LinuxNamespace>, LinuxError> {
    let st = inputs.pod_state;
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)];
    match (inputs.pid_ns, &inputs.container.security.pid) {
        (Some(path), _) => out.push(namespace(LinuxNamespaceType::Pid, Some(path))),
        (None, PidMode::Container) => out.push(namespace(LinuxNamespaceType::Pid, None)),
        (None, PidMode::Node) => {}
        (None, mode @ (PidMode::Pod | PidMode::Target(_))) => {
            return Err(LinuxError::InvalidArgument {
                what: "pid namespace",
                value: format!("{mode:?}"),
                reason: "the namespace to join was not given".into(),
            });
        }
    }
    if let Some(ipc) = &st.ipc_pin {
        out.push(namespace(LinuxNamespaceType::Ipc, Some(ipc)));
    }
    if let Some(uts) = &st.uts_pin {
        out.push(namespace(LinuxNamespaceType::Uts, Some(uts)));
    }
    if let Some(net) = inputs.netns {
        out.push(namespace(LinuxNamespaceType::Network, Some(net)));
    }
    if host.cgroup_v2 && !inputs.container.security.privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

fn non_negative(what: &'static str, v: i64) -> Result<u64, LinuxError> {
    u64::try_from(v).map_err(|_| LinuxError::InvalidArgument {
        what,
        value: v.to_string(),
        reason: "must not be negative".into(),
    })
}

/// `linux.resources`: the device rules plus what the spec sets (zero / empty means unset).
/// A memory limit also caps memory + swap when the node accounts swap and no swap limit is
/// given (containerd 1.7). No pids limit.
fn resources(
    r: &Resources,
    devices: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
    host: &HostInfo,
) -> Result<LinuxResources, LinuxError> {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));

    let mut cpu = LinuxCpu::default();
    let mut any_cpu = false;
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(non_negative("cpu shares", r.cpu_shares)?));
        any_cpu = true;
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        any_cpu = true;
    }
    if r.cpu_period != 0 {
        cpu.set_period(Some(non_negative("cpu period", r.cpu_period)?));
        any_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        any_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        any_cpu = true;
    }
    out.set_cpu(any_cpu.then_some(cpu));

    let mut mem = LinuxMemory::default();
    let mut any_mem = false;
    if r.memory_limit_in_bytes != 0 {
        non_negative("memory limit", r.memory_limit_in_bytes)?;
        mem.set_limit(Some(r.memory_limit_in_bytes));
        if r.memory_swap_limit_in_bytes == 0 && host.swap {
            mem.set_swap(Some(r.memory_limit_in_bytes));
        }
        any_mem = true;
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap {
        mem.set_swap(Some(r.memory_swap_limit_in_bytes));
        any_mem = true;
    }
    out.set_memory(any_mem.then_some(mem));

    if !r.hugepage_limits.is_empty() {
        let mut limits = vec![];
        for (size, bytes) in &r.hugepage_limits {
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(size.clone());
            l.set_limit(
                i64::try_from(*bytes).map_err(|_| LinuxError::InvalidArgument {
                    what: "hugepage limit",
                    value: bytes.to_string(),
                    reason: "too large".into(),
                })?,
            );
            limits.push(l);
        }
        out.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
