//! Backend-neutral description of a container: what a CRI `ContainerConfig` (plus the image's
//! config) maps to, as plain data, and the container's observed status.
//!
//! `cri-server` maps CRI → [`ContainerSpec`] and the image config → [`ImageConfig`]; backends
//! (`runtimes/*`) turn both into their own form (an OCI runtime spec for `linux`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything a backend needs to create one container in a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    /// The container's 64-hex-digit id (chosen by unicri).
    pub id: String,
    /// The pod it belongs to.
    pub pod_id: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.attempt`.
    pub attempt: u32,
    /// The image reference the user gave (`image.image`).
    pub image_ref: String,
    /// The resolved image id (`sha256:…`).
    pub image_id: String,
    /// `command` (replaces the image's entrypoint when non-empty).
    pub command: Vec<String>,
    /// `args` (replaces the image's cmd when non-empty).
    pub args: Vec<String>,
    /// `working_dir` (replaces the image's when non-empty).
    pub working_dir: String,
    /// `envs`, in order; later entries win over earlier ones and over the image's.
    pub env: Vec<(String, String)>,
    /// `mounts`.
    pub mounts: Vec<MountSpec>,
    /// `devices`.
    pub devices: Vec<DeviceSpec>,
    /// Absolute path of the CRI log file (`log_directory` + `log_path`); empty: no log.
    pub log_path: String,
    /// `stdin`: keep a stdin pipe open.
    pub stdin: bool,
    /// `stdin_once`: close stdin after the first attach ends.
    pub stdin_once: bool,
    /// `tty`.
    pub tty: bool,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// `annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `linux.resources`.
    pub resources: Resources,
    /// `linux.security_context`.
    pub security: SecuritySpec,
    /// Stop signal from the container config (`linux.security_context` has none; CRI 1.30+ puts it
    /// in `stop_signal`); empty: the image's, else SIGTERM.
    pub stop_signal: String,
}

/// One bind mount into the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the node.
    pub host_path: String,
    /// Mount read-only.
    pub readonly: bool,
    /// Mount propagation.
    pub propagation: Propagation,
    /// SELinux relabel requested (ignored where SELinux is off).
    pub selinux_relabel: bool,
    /// An image volume (`image` field set): not supported by the `linux` backend yet.
    pub image: String,
}

/// Mount propagation of a [`MountSpec`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// `rprivate` (CRI's PROPAGATION_PRIVATE).
    #[default]
    Private,
    /// `rslave` (PROPAGATION_HOST_TO_CONTAINER).
    HostToContainer,
    /// `rshared` (PROPAGATION_BIDIRECTIONAL).
    Bidirectional,
}

/// One device node made available in the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceSpec {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the node.
    pub host_path: String,
    /// cgroup permissions, a combination of `r`, `w` and `m`.
    pub permissions: String,
}

/// `LinuxContainerResources`; zero / empty means "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// CFS period in µs.
    pub cpu_period: i64,
    /// CFS quota in µs.
    pub cpu_quota: i64,
    /// CPU shares (relative weight).
    pub cpu_shares: i64,
    /// Memory limit in bytes.
    pub memory_limit_in_bytes: i64,
    /// Memory + swap limit in bytes.
    pub memory_swap_limit_in_bytes: i64,
    /// `oom_score_adj` (-1000..=1000).
    pub oom_score_adj: i64,
    /// cpuset CPUs, e.g. `0-1`.
    pub cpuset_cpus: String,
    /// cpuset memory nodes.
    pub cpuset_mems: String,
    /// Hugepage limits: page size (e.g. `2MB`) → bytes.
    pub hugepage_limits: BTreeMap<String, u64>,
    /// cgroup v2 unified settings.
    pub unified: BTreeMap<String, String>,
}

/// `LinuxContainerSecurityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecuritySpec {
    /// Run privileged: all capabilities, all devices, no masked/read-only paths, no seccomp.
    pub privileged: bool,
    /// Capabilities to add (`CAP_` prefix optional, `ALL` allowed).
    pub capabilities_add: Vec<String>,
    /// Capabilities to drop (`CAP_` prefix optional, `ALL` allowed).
    pub capabilities_drop: Vec<String>,
    /// Ambient capabilities to add.
    pub capabilities_add_ambient: Vec<String>,
    /// Mount the rootfs read-only.
    pub readonly_rootfs: bool,
    /// Set `no_new_privs`.
    pub no_new_privs: bool,
    /// `run_as_user`: numeric uid.
    pub run_as_user: Option<u32>,
    /// `run_as_username`: resolved in the image's `/etc/passwd`.
    pub run_as_username: String,
    /// `run_as_group`: numeric gid (only with a user).
    pub run_as_group: Option<u32>,
    /// `supplemental_groups`.
    pub supplemental_groups: Vec<u32>,
    /// Seccomp profile.
    pub seccomp: SeccompProfile,
    /// AppArmor profile name (`None`: runtime default where the host has AppArmor).
    pub apparmor: Option<String>,
    /// `masked_paths` (kubelet sends the defaults; empty means the runtime's defaults).
    pub masked_paths: Vec<String>,
    /// `readonly_paths` (as `masked_paths`).
    pub readonly_paths: Vec<String>,
    /// `namespace_options.pid` for this container, with the target for `TARGET`.
    pub pid: crate::pod::PidMode,
}

/// Which seccomp profile a container runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    /// No filter.
    #[default]
    Unconfined,
    /// The runtime's default profile (Docker's/containerd's).
    RuntimeDefault,
    /// An OCI seccomp JSON file on the node.
    Localhost(String),
}

/// The parts of an image's config a container starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` as `KEY=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`uid`, `name`, `uid:gid`, `name:group`).
    pub user: String,
    /// `StopSignal`.
    pub stop_signal: String,
}

/// A container's lifecycle state, as CRI names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, not started.
    #[default]
    Created,
    /// Its process runs.
    Running,
    /// Its process has exited (or it never ran and was stopped).
    Exited,
    /// The runtime lost track of it.
    Unknown,
}

impl ContainerState {
    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Unknown => "unknown",
        }
    }

    /// Parses [`ContainerState::as_str`]'s names; anything else is `Unknown`.
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "exited" => ContainerState::Exited,
            _ => ContainerState::Unknown,
        }
    }
}

/// How a container's process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitStatus {
    /// Exit code; `128 + n` for death by signal `n`.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// When it ended, Unix nanoseconds.
    pub finished_at: i64,
    /// What the backend knows about why it ended (a WebAssembly trap message, say); CRI's
    /// `message`. Empty for a plain exit.
    pub message: String,
}

impl ExitStatus {
    /// CRI's `reason`: `OOMKilled`, `Completed` (code 0) or `Error`.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed {
            "OOMKilled"
        } else if self.code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_unknown_names_are_unknown() {
        for s in [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Unknown,
        ] {
            assert_eq!(ContainerState::parse(s.as_str()), s);
        }
        assert_eq!(ContainerState::parse("paused"), ContainerState::Unknown);
    }

    #[test]
    fn exit_reason_prefers_oom_then_code() {
        let mut e = ExitStatus {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: 1,
            message: String::new(),
        };
        assert_eq!(e.reason(), "OOMKilled");
        e.oom_killed = false;
        assert_eq!(e.reason(), "Error");
        e.code = 0;
        assert_eq!(e.reason(), "Completed");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = ContainerSpec {
            id: "c".repeat(64),
            env: vec![("A".into(), "1".into())],
            security: SecuritySpec {
                seccomp: SeccompProfile::Localhost("/p.json".into()),
                run_as_user: Some(0),
                ..SecuritySpec::default()
            },
            ..ContainerSpec::default()
        };
        let json = serde_json::to_string(&spec).expect("serialize");
        let back: ContainerSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);
    }
}
