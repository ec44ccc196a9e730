//! CRI v1 container types → the backend-neutral [`ContainerSpec`] and [`ImageConfig`], and back
//! (mounts, for `ContainerStatus`).
//!
//! Everything here is pure: validation errors are `InvalidArgument`; CRI features no backend can
//! honour yet (CDI devices, id-mapped or recursively read-only mounts, image sub-paths, the
//! `Strict` supplemental groups policy) are `Unimplemented` rather than silently dropped, since
//! dropping them would run a container with less isolation or fewer devices than asked for.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;
use unicri_proto::v1;
use unicri_proto::v1::security_profile::ProfileType;
use unicri_sandbox::ErrorKind;
use unicri_sandbox::container::{
    ContainerSpec, DeviceSpec, ImageConfig, MountSpec, Propagation, Resources, SeccompProfile,
    SecuritySpec,
};
use unicri_sandbox::pod::PidMode;

use crate::error::CriError;

/// Maps a CRI container config (in the pod `pod`) to the backend-neutral [`ContainerSpec`].
///
/// `image_ref` is the image the user named, `image_id` the resolved `sha256:…` id.
pub fn container_spec(
    id: &str,
    pod_id: &str,
    pod: &v1::PodSandboxConfig,
    c: &v1::ContainerConfig,
    image_ref: &str,
    image_id: &str,
) -> Result<ContainerSpec, CriError> {
    let md = c.metadata.clone().unwrap_or_default();
    if md.name.is_empty() {
        return Err(CriError::invalid("container metadata needs a name"));
    }
    if !c.cdi_devices.is_empty() {
        return Err(CriError::unimplemented(
            "CDI devices",
            "CDI support is not there yet",
        ));
    }
    let mut env = Vec::with_capacity(c.envs.len());
    for kv in &c.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(CriError::invalid(format!(
                "environment variable name {:?} is empty or contains '='",
                kv.key
            )));
        }
        env.push((kv.key.clone(), kv.value.clone()));
    }
    let mounts = c.mounts.iter().map(mount_spec).collect::<Result<_, _>>()?;
    let devices = c
        .devices
        .iter()
        .map(device_spec)
        .collect::<Result<_, _>>()?;
    let linux = c.linux.clone().unwrap_or_default();
    let resources = resources(&linux.resources.unwrap_or_default())?;
    let pod_pid = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let security = security(&linux.security_context.unwrap_or_default(), pod_pid)?;
    Ok(ContainerSpec {
        id: id.to_string(),
        pod_id: pod_id.to_string(),
        name: md.name,
        attempt: md.attempt,
        image_ref: image_ref.to_string(),
        image_id: image_id.to_string(),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        env,
        mounts,
        devices,
        log_path: log_path(&pod.log_directory, &c.log_path)?,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        resources,
        security,
        stop_signal: stop_signal(c.stop_signal)?,
    })
}

/// `log_directory` + `log_path`: empty unless both are set (an absolute `log_path` stands alone).
fn log_path(dir: &str, file: &str) -> Result<String, CriError> {
    if file.is_empty() {
        return Ok(String::new());
    }
    let file_path = Path::new(file);
    if file_path.components().any(|c| c == Component::ParentDir) {
        return Err(CriError::invalid(format!(
            "container log path {file:?} must not contain '..'"
        )));
    }
    if file_path.is_absolute() {
        return Ok(file.to_string());
    }
    if dir.is_empty() {
        return Ok(String::new());
    }
    if !Path::new(dir).is_absolute() {
        return Err(CriError::invalid(format!(
            "pod log directory {dir:?} must be absolute"
        )));
    }
    Ok(Path::new(dir)
        .join(file_path)
        .to_string_lossy()
        .into_owned())
}

/// One CRI mount → [`MountSpec`].
fn mount_spec(m: &v1::Mount) -> Result<MountSpec, CriError> {
    if !Path::new(&m.container_path).is_absolute() {
        return Err(CriError::invalid(format!(
            "mount container path {:?} must be absolute",
            m.container_path
        )));
    }
    let image = m
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if m.host_path.is_empty() && image.is_empty() {
        return Err(CriError::invalid(format!(
            "mount at {:?} has neither a host path nor an image",
            m.container_path
        )));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(CriError::unimplemented(
            "id-mapped mounts",
            "they come with user namespaces",
        ));
    }
    if m.recursive_read_only {
        return Err(CriError::unimplemented(
            "recursive read-only mounts",
            "unicri does not advertise recursive_read_only_mounts",
        ));
    }
    if !m.image_sub_path.is_empty() {
        return Err(CriError::unimplemented(
            "image volume sub-paths",
            "they come with image volumes",
        ));
    }
    let propagation = match v1::MountPropagation::try_from(m.propagation) {
        Ok(v1::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(v1::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(v1::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(CriError::invalid(format!(
                "mount at {:?} has unknown propagation {}",
                m.container_path, m.propagation
            )));
        }
    };
    Ok(MountSpec {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        propagation,
        selinux_relabel: m.selinux_relabel,
        image,
    })
}

/// One CRI device → [`DeviceSpec`]; empty permissions mean `rwm`.
fn device_spec(d: &v1::Device) -> Result<DeviceSpec, CriError> {
    if !Path::new(&d.host_path).is_absolute() || !Path::new(&d.container_path).is_absolute() {
        return Err(CriError::invalid(format!(
            "device {:?} → {:?}: both paths must be absolute",
            d.host_path, d.container_path
        )));
    }
    let permissions = if d.permissions.is_empty() {
        "rwm".to_string()
    } else {
        d.permissions.clone()
    };
    if !permissions.chars().all(|ch| matches!(ch, 'r' | 'w' | 'm')) {
        return Err(CriError::invalid(format!(
            "device {:?} permissions {:?} may only contain r, w and m",
            d.host_path, d.permissions
        )));
    }
    Ok(DeviceSpec {
        container_path: d.container_path.clone(),
        host_path: d.host_path.clone(),
        permissions,
    })
}

/// `LinuxContainerResources` → [`Resources`].
pub(crate) fn resources(r: &v1::LinuxContainerResources) -> Result<Resources, CriError> {
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(CriError::invalid(format!(
            "oom_score_adj {} is outside -1000..=1000",
            r.oom_score_adj
        )));
    }
    let mut hugepage_limits = BTreeMap::new();
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() {
            return Err(CriError::invalid("hugepage limit without a page size"));
        }
        hugepage_limits.insert(h.page_size.clone(), h.limit);
    }
    Ok(Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits,
        unified: r.unified.clone().into_iter().collect(),
    })
}

/// A CRI uid/gid (`what` names it in errors) as a `u32`.
fn id_u32(what: &str, v: i64) -> Result<u32, CriError> {
    u32::try_from(v).map_err(|_| CriError::invalid(format!("{what} {v} is out of range")))
}

/// `LinuxContainerSecurityContext` → [`SecuritySpec`]; `pod_ns` is the pod's namespace options,
/// used for the pid mode when the container has none.
#[allow(deprecated)] // reads `seccomp_profile_path` / `apparmor_profile` when the new fields are unset
fn security(
    s: &v1::LinuxContainerSecurityContext,
    pod_ns: Option<&v1::NamespaceOption>,
) -> Result<SecuritySpec, CriError> {
    let caps = s.capabilities.clone().unwrap_or_default();
    let run_as_user = s
        .run_as_user
        .as_ref()
        .map(|u| id_u32("run_as_user", u.value))
        .transpose()?;
    if run_as_user.is_some() && !s.run_as_username.is_empty() {
        return Err(CriError::invalid(
            "only one of run_as_user and run_as_username may be set",
        ));
    }
    let run_as_group = s
        .run_as_group
        .as_ref()
        .map(|g| id_u32("run_as_group", g.value))
        .transpose()?;
    if run_as_group.is_some() && run_as_user.is_none() && s.run_as_username.is_empty() {
        return Err(CriError::invalid(
            "run_as_group needs run_as_user or run_as_username",
        ));
    }
    let supplemental_groups = s
        .supplemental_groups
        .iter()
        .map(|g| id_u32("supplemental group", *g))
        .collect::<Result<_, _>>()?;
    if v1::SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy)
        != Ok(v1::SupplementalGroupsPolicy::Merge)
    {
        return Err(CriError::unimplemented(
            "supplemental groups policies other than Merge",
            "unicri does not advertise supplemental_groups_policy",
        ));
    }
    let seccomp = match &s.seccomp {
        Some(p) => seccomp_from_profile(p)?,
        None => seccomp_from_path(&s.seccomp_profile_path)?,
    };
    let apparmor = match &s.apparmor {
        Some(p) => apparmor_from_profile(p)?,
        None => apparmor_from_name(&s.apparmor_profile)?,
    };
    let pid = match s.namespace_options.as_ref().or(pod_ns) {
        Some(ns) => pid_mode(ns)?,
        None => PidMode::default(),
    };
    Ok(SecuritySpec {
        privileged: s.privileged,
        capabilities_add: caps.add_capabilities,
        capabilities_drop: caps.drop_capabilities,
        capabilities_add_ambient: caps.add_ambient_capabilities,
        readonly_rootfs: s.readonly_rootfs,
        no_new_privs: s.no_new_privs,
        run_as_user,
        run_as_username: s.run_as_username.clone(),
        run_as_group,
        supplemental_groups,
        seccomp,
        apparmor,
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        pid,
    })
}

/// The `seccomp` [`v1::SecurityProfile`] → [`SeccompProfile`].
fn seccomp_from_profile(p: &v1::SecurityProfile) -> Result<SeccompProfile, CriError> {
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(SeccompProfile::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
        Ok(ProfileType::Localhost) => seccomp_localhost(&p.localhost_ref),
        Err(_) => Err(CriError::invalid(format!(
            "unknown seccomp profile type {}",
            p.profile_type
        ))),
    }
}

/// The deprecated `seccomp_profile_path` → [`SeccompProfile`].
fn seccomp_from_path(path: &str) -> Result<SeccompProfile, CriError> {
    match path {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        _ => match path.strip_prefix("localhost/") {
            Some(p) => seccomp_localhost(p),
            None => Err(CriError::invalid(format!(
                "unknown seccomp profile path {path:?}"
            ))),
        },
    }
}

/// A localhost seccomp profile, which must be an absolute path.
fn seccomp_localhost(path: &str) -> Result<SeccompProfile, CriError> {
    if Path::new(path).is_absolute() {
        Ok(SeccompProfile::Localhost(path.to_string()))
    } else {
        Err(CriError::invalid(format!(
            "localhost seccomp profile {path:?} must be an absolute path"
        )))
    }
}

/// The `apparmor` [`v1::SecurityProfile`] → a profile name (`None`: runtime default).
fn apparmor_from_profile(p: &v1::SecurityProfile) -> Result<Option<String>, CriError> {
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(None),
        Ok(ProfileType::Unconfined) => Ok(Some("unconfined".to_string())),
        Ok(ProfileType::Localhost) => apparmor_localhost(&p.localhost_ref),
        Err(_) => Err(CriError::invalid(format!(
            "unknown apparmor profile type {}",
            p.profile_type
        ))),
    }
}

/// The deprecated `apparmor_profile` string → a profile name (`None`: runtime default).
fn apparmor_from_name(name: &str) -> Result<Option<String>, CriError> {
    match name {
        "" | "runtime/default" => Ok(None),
        "unconfined" => Ok(Some("unconfined".to_string())),
        _ => match name.strip_prefix("localhost/") {
            Some(p) => apparmor_localhost(p),
            None => Err(CriError::invalid(format!(
                "unknown apparmor profile {name:?}"
            ))),
        },
    }
}

/// A localhost AppArmor profile, which must be named.
fn apparmor_localhost(name: &str) -> Result<Option<String>, CriError> {
    if name.is_empty() {
        Err(CriError::invalid("localhost apparmor profile needs a name"))
    } else {
        Ok(Some(name.to_string()))
    }
}

/// `namespace_options.pid` (with `target_id`) → [`PidMode`].
fn pid_mode(ns: &v1::NamespaceOption) -> Result<PidMode, CriError> {
    match v1::NamespaceMode::try_from(ns.pid) {
        Ok(v1::NamespaceMode::Container) => Ok(PidMode::Container),
        Ok(v1::NamespaceMode::Pod) => Ok(PidMode::Pod),
        Ok(v1::NamespaceMode::Node) => Ok(PidMode::Node),
        Ok(v1::NamespaceMode::Target) if !ns.target_id.is_empty() => {
            Ok(PidMode::Target(ns.target_id.clone()))
        }
        Ok(v1::NamespaceMode::Target) => Err(CriError::invalid(
            "pid namespace mode TARGET needs a target_id",
        )),
        Err(_) => Err(CriError::invalid(format!(
            "unknown pid namespace mode {}",
            ns.pid
        ))),
    }
}

/// The CRI `Signal` enum value → a signal name [`signal_number`] understands (`SIGTERM`,
/// `SIGRTMIN+3`); `RUNTIME_DEFAULT` → empty.
fn stop_signal(value: i32) -> Result<String, CriError> {
    let sig = v1::Signal::try_from(value)
        .map_err(|_| CriError::invalid(format!("unknown stop signal {value}")))?;
    if sig == v1::Signal::RuntimeDefault {
        return Ok(String::new());
    }
    let name = sig.as_str_name();
    Ok(if let Some(n) = name.strip_prefix("SIGRTMINPLUS") {
        format!("SIGRTMIN+{n}")
    } else if let Some(n) = name.strip_prefix("SIGRTMAXMINUS") {
        format!("SIGRTMAX-{n}")
    } else {
        name.to_string()
    })
}

/// The image config document (OCI or Docker), only the parts unicri reads.
#[derive(Deserialize, Default)]
struct ImageConfigDoc {
    /// The runtime config; may be absent or `null`.
    #[serde(default)]
    config: Option<ImageRuntimeConfig>,
}

/// The `config` object of an image config.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ImageRuntimeConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint")]
    entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd")]
    cmd: Option<Vec<String>>,
    /// `Env`.
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir")]
    working_dir: Option<String>,
    /// `User`.
    #[serde(rename = "User")]
    user: Option<String>,
    /// `StopSignal`.
    #[serde(rename = "StopSignal")]
    stop_signal: Option<String>,
}

/// Parses an OCI/Docker image config JSON into [`ImageConfig`]; missing or `null` parts are
/// defaults. Malformed JSON is `Internal` (the image store handed us a broken blob).
pub fn image_config(config_json: &str) -> Result<ImageConfig, CriError> {
    let doc: ImageConfigDoc = serde_json::from_str(config_json)
        .map_err(|e| CriError::new(ErrorKind::Internal, format!("parse image config: {e}")))?;
    let c = doc.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        stop_signal: c.stop_signal.unwrap_or_default(),
    })
}

/// Linux's first real-time signal as glibc exposes it (32 and 33 are reserved by NPTL).
const SIGRTMIN: i32 = 34;
/// Linux's last real-time signal.
const SIGRTMAX: i32 = 64;

/// A signal name or number (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1`, case-insensitive)
/// → its Linux number; `None` for anything else.
#[allow(dead_code)] // for StopContainer, which does not call it yet; drop this once it does
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match bare {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" | "CLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        "RTMIN" => SIGRTMIN,
        "RTMAX" => SIGRTMAX,
        _ => return realtime_signal(bare),
    };
    Some(n)
}

/// `RTMIN+n` / `RTMAX-n` (also the proto's `RTMINPLUSn` / `RTMAXMINUSn`) → number.
fn realtime_signal(bare: &str) -> Option<i32> {
    let offset = |s: &str| {
        s.parse::<i32>()
            .ok()
            .filter(|n| (0..=SIGRTMAX - SIGRTMIN).contains(n))
    };
    if let Some(rest) = bare
        .strip_prefix("RTMIN+")
        .or_else(|| bare.strip_prefix("RTMINPLUS"))
    {
        return offset(rest).map(|n| SIGRTMIN + n);
    }
    if let Some(rest) = bare
        .strip_prefix("RTMAX-")
        .or_else(|| bare.strip_prefix("RTMAXMINUS"))
    {
        return offset(rest).map(|n| SIGRTMAX - n);
    }
    None
}

/// The container's mounts as CRI reports them in `ContainerStatus`.
pub fn mounts_to_cri(spec: &ContainerSpec) -> Vec<v1::Mount> {
    spec.mounts
        .iter()
        .map(|m| v1::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: match m.propagation {
                Propagation::Private => v1::MountPropagation::PropagationPrivate,
                Propagation::HostToContainer => v1::MountPropagation::PropagationHostToContainer,
                Propagation::Bidirectional => v1::MountPropagation::PropagationBidirectional,
            } as i32,
            image: (!m.image.is_empty()).then(|| v1::ImageSpec {
                image: m.image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
#[allow(deprecated)] // exercises the deprecated profile fields
mod tests {
    use super::*;

    fn pod() -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            log_directory: "/var/log/pods/ns_p_uid".into(),
            ..Default::default()
        }
    }

    fn config() -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            ..Default::default()
        }
    }

    fn with_security(s: v1::LinuxContainerSecurityContext) -> v1::ContainerConfig {
        v1::ContainerConfig {
            linux: Some(v1::LinuxContainerConfig {
                security_context: Some(s),
                ..Default::default()
            }),
            ..config()
        }
    }

    fn spec(c: &v1::ContainerConfig) -> Result<ContainerSpec, CriError> {
        container_spec("c1", "p1", &pod(), c, "busybox", "sha256:ab")
    }

    fn invalid(c: &v1::ContainerConfig) -> String {
        match spec(c) {
            Err(e) if e.kind == ErrorKind::InvalidArgument => e.message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn mount(container: &str, host: &str) -> v1::Mount {
        v1::Mount {
            container_path: container.into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn maps_a_full_config() {
        let c = v1::ContainerConfig {
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "true".into()],
            working_dir: "/w".into(),
            envs: vec![
                v1::KeyValue {
                    key: "B".into(),
                    value: "2".into(),
                },
                v1::KeyValue {
                    key: "A".into(),
                    value: "1".into(),
                },
            ],
            mounts: vec![
                v1::Mount {
                    readonly: true,
                    selinux_relabel: true,
                    propagation: v1::MountPropagation::PropagationBidirectional as i32,
                    ..mount("/data", "/srv/data")
                },
                v1::Mount {
                    propagation: v1::MountPropagation::PropagationHostToContainer as i32,
                    ..mount("/h", "/host")
                },
                v1::Mount {
                    image: Some(v1::ImageSpec {
                        image: "docker.io/library/alpine:3".into(),
                        ..Default::default()
                    }),
                    ..mount("/img", "")
                },
            ],
            devices: vec![
                v1::Device {
                    container_path: "/dev/fuse".into(),
                    host_path: "/dev/fuse".into(),
                    permissions: String::new(),
                },
                v1::Device {
                    container_path: "/dev/null2".into(),
                    host_path: "/dev/null".into(),
                    permissions: "r".into(),
                },
            ],
            log_path: "app/2.log".into(),
            stdin: true,
            stdin_once: true,
            tty: true,
            labels: [("l".to_string(), "1".to_string())].into(),
            annotations: [("a".to_string(), "2".to_string())].into(),
            stop_signal: v1::Signal::Sigusr1 as i32,
            linux: Some(v1::LinuxContainerConfig {
                resources: Some(v1::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 512,
                    memory_limit_in_bytes: 1 << 20,
                    memory_swap_limit_in_bytes: 2 << 20,
                    oom_score_adj: -999,
                    cpuset_cpus: "0-1".into(),
                    cpuset_mems: "0".into(),
                    hugepage_limits: vec![v1::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 << 20,
                    }],
                    unified: [("memory.high".to_string(), "1000000".to_string())].into(),
                }),
                security_context: Some(v1::LinuxContainerSecurityContext {
                    capabilities: Some(v1::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        drop_capabilities: vec!["ALL".into()],
                        add_ambient_capabilities: vec!["CAP_NET_RAW".into()],
                    }),
                    privileged: true,
                    readonly_rootfs: true,
                    no_new_privs: true,
                    run_as_user: Some(v1::Int64Value { value: 1000 }),
                    run_as_group: Some(v1::Int64Value { value: 2000 }),
                    supplemental_groups: vec![3000, 4000],
                    masked_paths: vec!["/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into()],
                    seccomp: Some(v1::SecurityProfile {
                        profile_type: ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    seccomp_profile_path: "unconfined".into(),
                    apparmor: Some(v1::SecurityProfile {
                        profile_type: ProfileType::Localhost as i32,
                        localhost_ref: "k8s-deny".into(),
                    }),
                    namespace_options: Some(v1::NamespaceOption {
                        pid: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..config()
        };
        let s = spec(&c).expect("maps");
        assert_eq!((s.id.as_str(), s.pod_id.as_str()), ("c1", "p1"));
        assert_eq!((s.name.as_str(), s.attempt), ("app", 2));
        assert_eq!(
            (s.image_ref.as_str(), s.image_id.as_str()),
            ("busybox", "sha256:ab")
        );
        assert_eq!(s.command, ["/bin/sh"]);
        assert_eq!(s.args, ["-c", "true"]);
        assert_eq!(s.working_dir, "/w");
        assert_eq!(
            s.env,
            [
                ("B".to_string(), "2".to_string()),
                ("A".to_string(), "1".to_string())
            ]
        );
        assert_eq!(
            s.mounts[0],
            MountSpec {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: Propagation::Bidirectional,
                selinux_relabel: true,
                image: String::new(),
            }
        );
        assert_eq!(s.mounts[1].propagation, Propagation::HostToContainer);
        assert_eq!(s.mounts[2].image, "docker.io/library/alpine:3");
        assert_eq!(s.mounts[2].propagation, Propagation::Private);
        assert_eq!(s.devices[0].permissions, "rwm");
        assert_eq!(s.devices[1].permissions, "r");
        assert_eq!(s.devices[1].host_path, "/dev/null");
        assert_eq!(s.log_path, "/var/log/pods/ns_p_uid/app/2.log");
        assert!(s.stdin && s.stdin_once && s.tty);
        assert_eq!(s.labels["l"], "1");
        assert_eq!(s.annotations["a"], "2");
        assert_eq!(s.stop_signal, "SIGUSR1");
        let r = &s.resources;
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 50_000, 512)
        );
        assert_eq!(
            (r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes),
            (1 << 20, 2 << 20)
        );
        assert_eq!(r.oom_score_adj, -999);
        assert_eq!(
            (r.cpuset_cpus.as_str(), r.cpuset_mems.as_str()),
            ("0-1", "0")
        );
        assert_eq!(r.hugepage_limits["2MB"], 4 << 20);
        assert_eq!(r.unified["memory.high"], "1000000");
        let sec = &s.security;
        assert!(sec.privileged && sec.readonly_rootfs && sec.no_new_privs);
        assert_eq!(sec.capabilities_add, ["NET_ADMIN"]);
        assert_eq!(sec.capabilities_drop, ["ALL"]);
        assert_eq!(sec.capabilities_add_ambient, ["CAP_NET_RAW"]);
        assert_eq!(
            (sec.run_as_user, sec.run_as_group),
            (Some(1000), Some(2000))
        );
        assert_eq!(sec.supplemental_groups, [3000, 4000]);
        assert_eq!(sec.masked_paths, ["/proc/kcore"]);
        assert_eq!(sec.readonly_paths, ["/proc/sys"]);
        assert_eq!(
            sec.seccomp,
            SeccompProfile::RuntimeDefault,
            "field wins over path"
        );
        assert_eq!(sec.apparmor.as_deref(), Some("k8s-deny"));
        assert_eq!(sec.pid, PidMode::Pod);
    }

    #[test]
    fn defaults_are_empty() {
        let s = spec(&config()).expect("maps");
        assert_eq!(s.stop_signal, "");
        assert_eq!(s.log_path, "");
        assert_eq!(s.security.seccomp, SeccompProfile::Unconfined);
        assert_eq!(s.security.apparmor, None);
        assert_eq!(s.security.pid, PidMode::Container);
        assert_eq!(s.security.run_as_user, None);
        assert_eq!(s.resources, Resources::default());
    }

    #[test]
    fn metadata_needs_a_name() {
        let mut c = config();
        c.metadata = None;
        invalid(&c);
        c.metadata = Some(v1::ContainerMetadata::default());
        invalid(&c);
    }

    #[test]
    fn env_keys_must_be_names() {
        for key in ["", "A=B"] {
            let c = v1::ContainerConfig {
                envs: vec![v1::KeyValue {
                    key: key.into(),
                    value: "v".into(),
                }],
                ..config()
            };
            invalid(&c);
        }
    }

    #[test]
    fn mounts_are_validated() {
        let bad = [
            mount("relative", "/h"),
            mount("/c", ""),
            v1::Mount {
                propagation: 42,
                ..mount("/c", "/h")
            },
        ];
        for m in bad {
            invalid(&v1::ContainerConfig {
                mounts: vec![m],
                ..config()
            });
        }
        let unsupported = [
            v1::Mount {
                recursive_read_only: true,
                readonly: true,
                ..mount("/c", "/h")
            },
            v1::Mount {
                uid_mappings: vec![v1::IdMapping::default()],
                ..mount("/c", "/h")
            },
        ];
        for m in unsupported {
            let e = spec(&v1::ContainerConfig {
                mounts: vec![m],
                ..config()
            })
            .expect_err("unsupported");
            assert_eq!(e.kind, ErrorKind::Unimplemented);
        }
    }

    #[test]
    fn devices_are_validated() {
        let dev = |c: &str, h: &str, p: &str| v1::Device {
            container_path: c.into(),
            host_path: h.into(),
            permissions: p.into(),
        };
        for d in [
            dev("/dev/x", "", ""),
            dev("x", "/dev/x", ""),
            dev("/dev/x", "/dev/x", "rwx"),
        ] {
            invalid(&v1::ContainerConfig {
                devices: vec![d],
                ..config()
            });
        }
    }

    #[test]
    fn cdi_devices_are_unimplemented() {
        let c = v1::ContainerConfig {
            cdi_devices: vec![v1::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..config()
        };
        assert_eq!(spec(&c).expect_err("cdi").kind, ErrorKind::Unimplemented);
    }

    #[test]
    fn log_paths() {
        assert_eq!(log_path("/d", "a/0.log").expect("ok"), "/d/a/0.log");
        assert_eq!(log_path("", "a/0.log").expect("ok"), "");
        assert_eq!(log_path("/d", "").expect("ok"), "");
        assert_eq!(log_path("/d", "/abs/0.log").expect("ok"), "/abs/0.log");
        assert_eq!(log_path("", "/abs/0.log").expect("ok"), "/abs/0.log");
        for (dir, file) in [
            ("/d", "../escape.log"),
            ("/d", "a/../../x"),
            ("rel", "a.log"),
        ] {
            let e = log_path(dir, file).expect_err("invalid");
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
        }
        let c = v1::ContainerConfig {
            log_path: "../x.log".into(),
            ..config()
        };
        invalid(&c);
    }

    #[test]
    fn oom_score_adj_and_hugepages_are_validated() {
        for r in [
            v1::LinuxContainerResources {
                oom_score_adj: 1001,
                ..Default::default()
            },
            v1::LinuxContainerResources {
                oom_score_adj: -1001,
                ..Default::default()
            },
            v1::LinuxContainerResources {
                hugepage_limits: vec![v1::HugepageLimit {
                    page_size: String::new(),
                    limit: 1,
                }],
                ..Default::default()
            },
        ] {
            invalid(&v1::ContainerConfig {
                linux: Some(v1::LinuxContainerConfig {
                    resources: Some(r),
                    ..Default::default()
                }),
                ..config()
            });
        }
    }

    #[test]
    fn ids_are_validated() {
        let neg = Some(v1::Int64Value { value: -1 });
        let huge = Some(v1::Int64Value {
            value: i64::from(u32::MAX) + 1,
        });
        for s in [
            v1::LinuxContainerSecurityContext {
                run_as_user: neg,
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                run_as_user: huge,
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                run_as_user: Some(v1::Int64Value { value: 0 }),
                run_as_group: neg,
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                supplemental_groups: vec![1, -5],
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                run_as_group: Some(v1::Int64Value { value: 1 }),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                run_as_user: Some(v1::Int64Value { value: 1 }),
                run_as_username: "nobody".into(),
                ..Default::default()
            },
        ] {
            invalid(&with_security(s));
        }
        let ok = spec(&with_security(v1::LinuxContainerSecurityContext {
            run_as_username: "nobody".into(),
            run_as_group: Some(v1::Int64Value { value: 0 }),
            ..Default::default()
        }))
        .expect("username with group");
        assert_eq!(ok.security.run_as_username, "nobody");
        assert_eq!(ok.security.run_as_group, Some(0));
    }

    #[test]
    fn strict_supplemental_groups_policy_is_unimplemented() {
        let c = with_security(v1::LinuxContainerSecurityContext {
            supplemental_groups_policy: v1::SupplementalGroupsPolicy::Strict as i32,
            ..Default::default()
        });
        assert_eq!(spec(&c).expect_err("strict").kind, ErrorKind::Unimplemented);
    }

    #[test]
    fn seccomp_profiles() {
        let profile = |t: ProfileType, r: &str| v1::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert_eq!(
            seccomp_from_profile(&profile(ProfileType::Unconfined, "")).expect("ok"),
            SeccompProfile::Unconfined
        );
        assert_eq!(
            seccomp_from_profile(&profile(ProfileType::Localhost, "/p.json")).expect("ok"),
            SeccompProfile::Localhost("/p.json".into())
        );
        for (path, want) in [
            ("", SeccompProfile::Unconfined),
            ("unconfined", SeccompProfile::Unconfined),
            ("runtime/default", SeccompProfile::RuntimeDefault),
            ("docker/default", SeccompProfile::RuntimeDefault),
            (
                "localhost//var/lib/p.json",
                SeccompProfile::Localhost("/var/lib/p.json".into()),
            ),
        ] {
            assert_eq!(seccomp_from_path(path).expect("ok"), want, "{path}");
        }
        // Through container_spec: the deprecated path is used when the field is absent.
        let s = spec(&with_security(v1::LinuxContainerSecurityContext {
            seccomp_profile_path: "runtime/default".into(),
            ..Default::default()
        }))
        .expect("maps");
        assert_eq!(s.security.seccomp, SeccompProfile::RuntimeDefault);
        for sc in [
            v1::LinuxContainerSecurityContext {
                seccomp: Some(profile(ProfileType::Localhost, "p.json")),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                seccomp: Some(v1::SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                seccomp_profile_path: "localhost/rel.json".into(),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                seccomp_profile_path: "bogus".into(),
                ..Default::default()
            },
        ] {
            invalid(&with_security(sc));
        }
    }

    #[test]
    fn apparmor_profiles() {
        let profile = |t: ProfileType, r: &str| v1::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert_eq!(
            apparmor_from_profile(&profile(ProfileType::RuntimeDefault, "")).expect("ok"),
            None
        );
        assert_eq!(
            apparmor_from_profile(&profile(ProfileType::Unconfined, ""))
                .expect("ok")
                .as_deref(),
            Some("unconfined")
        );
        assert_eq!(apparmor_from_name("").expect("ok"), None);
        assert_eq!(apparmor_from_name("runtime/default").expect("ok"), None);
        assert_eq!(
            apparmor_from_name("unconfined").expect("ok").as_deref(),
            Some("unconfined")
        );
        assert_eq!(
            apparmor_from_name("localhost/k8s-x")
                .expect("ok")
                .as_deref(),
            Some("k8s-x")
        );
        let s = spec(&with_security(v1::LinuxContainerSecurityContext {
            apparmor_profile: "localhost/prof".into(),
            ..Default::default()
        }))
        .expect("maps");
        assert_eq!(s.security.apparmor.as_deref(), Some("prof"));
        for sc in [
            v1::LinuxContainerSecurityContext {
                apparmor: Some(profile(ProfileType::Localhost, "")),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                apparmor_profile: "localhost/".into(),
                ..Default::default()
            },
            v1::LinuxContainerSecurityContext {
                apparmor_profile: "whatever".into(),
                ..Default::default()
            },
        ] {
            invalid(&with_security(sc));
        }
    }

    #[test]
    fn pid_mode_comes_from_the_container_else_the_pod() {
        let ns = |pid: v1::NamespaceMode, target: &str| v1::NamespaceOption {
            pid: pid as i32,
            target_id: target.into(),
            ..Default::default()
        };
        let c = with_security(v1::LinuxContainerSecurityContext {
            namespace_options: Some(ns(v1::NamespaceMode::Target, "abc")),
            ..Default::default()
        });
        assert_eq!(
            spec(&c).expect("maps").security.pid,
            PidMode::Target("abc".into())
        );
        let c = with_security(v1::LinuxContainerSecurityContext {
            namespace_options: Some(ns(v1::NamespaceMode::Node, "")),
            ..Default::default()
        });
        assert_eq!(spec(&c).expect("maps").security.pid, PidMode::Node);

        let mut p = pod();
        p.linux = Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(ns(v1::NamespaceMode::Pod, "")),
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = container_spec("c", "p", &p, &config(), "i", "sha256:1").expect("maps");
        assert_eq!(s.security.pid, PidMode::Pod);

        invalid(&with_security(v1::LinuxContainerSecurityContext {
            namespace_options: Some(ns(v1::NamespaceMode::Target, "")),
            ..Default::default()
        }));
        invalid(&with_security(v1::LinuxContainerSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                pid: 17,
                ..Default::default()
            }),
            ..Default::default()
        }));
    }

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal(0).expect("ok"), "");
        assert_eq!(
            stop_signal(v1::Signal::Sigterm as i32).expect("ok"),
            "SIGTERM"
        );
        assert_eq!(
            stop_signal(v1::Signal::Sigrtminplus3 as i32).expect("ok"),
            "SIGRTMIN+3"
        );
        assert_eq!(
            stop_signal(v1::Signal::Sigrtmaxminus2 as i32).expect("ok"),
            "SIGRTMAX-2"
        );
        invalid(&v1::ContainerConfig {
            stop_signal: 9999,
            ..config()
        });
        // Every CRI signal maps to a name signal_number understands.
        for v in 1..=100 {
            if let Ok(name) = stop_signal(v) {
                assert!(signal_number(&name).is_some(), "{name}");
            }
        }
    }

    #[test]
    fn image_configs() {
        let c = image_config(
            r#"{"architecture":"amd64","config":{"Entrypoint":["/e"],"Cmd":["a","b"],
                "Env":["PATH=/bin"],"WorkingDir":"/w","User":"1:2","StopSignal":"SIGQUIT"}}"#,
        )
        .expect("parses");
        assert_eq!(
            c,
            ImageConfig {
                entrypoint: vec!["/e".into()],
                cmd: vec!["a".into(), "b".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: "/w".into(),
                user: "1:2".into(),
                stop_signal: "SIGQUIT".into(),
            }
        );
        let nulls = r#"{"config":{"Entrypoint":null,"Cmd":null,"Env":null,"WorkingDir":null}}"#;
        for doc in ["{}", r#"{"config":null}"#, r#"{"config":{}}"#, nulls] {
            assert_eq!(
                image_config(doc).expect(doc),
                ImageConfig::default(),
                "{doc}"
            );
        }
        for bad in ["", "not json", r#"{"config":{"Cmd":"x"}}"#] {
            assert_eq!(image_config(bad).expect_err(bad).kind, ErrorKind::Internal);
        }
    }

    #[test]
    fn signal_numbers() {
        for (name, n) in [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("term", 15),
            ("15", 15),
            ("SIGKILL", 9),
            ("SIGHUP", 1),
            ("SIGSYS", 31),
            ("SIGCHLD", 17),
            ("SIGIOT", 6),
            ("SIGPOLL", 29),
            ("SIGWINCH", 28),
            ("SIGRTMIN", 34),
            ("SIGRTMAX", 64),
            ("SIGRTMIN+3", 37),
            ("RTMIN+30", 64),
            ("SIGRTMAX-1", 63),
            ("SIGRTMINPLUS2", 36),
            ("SIGRTMAXMINUS14", 50),
            ("64", 64),
        ] {
            assert_eq!(signal_number(name), Some(n), "{name}");
        }
        for bad in [
            "",
            "0",
            "65",
            "-1",
            "SIGFOO",
            "SIGRTMIN+31",
            "SIGRTMAX-31",
            "SIGRTMIN+x",
        ] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn mounts_round_trip_to_cri() {
        let c = v1::ContainerConfig {
            mounts: vec![
                v1::Mount {
                    readonly: true,
                    selinux_relabel: true,
                    propagation: v1::MountPropagation::PropagationHostToContainer as i32,
                    ..mount("/a", "/b")
                },
                v1::Mount {
                    propagation: v1::MountPropagation::PropagationBidirectional as i32,
                    image: Some(v1::ImageSpec {
                        image: "img:1".into(),
                        ..Default::default()
                    }),
                    ..mount("/i", "")
                },
                mount("/p", "/q"),
            ],
            ..config()
        };
        let s = spec(&c).expect("maps");
        assert_eq!(mounts_to_cri(&s), c.mounts);
    }
}
