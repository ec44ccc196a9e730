//! The agent protocol: what the daemon (host) says to the guest agent (PID 1 of a `vm` pod's
//! guest), the same over both engines (`uml`, `kvm`).
//!
//! Transport: TCP over the pod's *control link*, a point-to-point tap in the pod's network
//! namespace on the host ([`HOST_CTL_IP`]) and a NIC in the guest ([`GUEST_CTL_IP`], port
//! [`AGENT_PORT`]), which the agent keeps in the guest's root network namespace — the pod's
//! containers live in a network namespace of their own in the guest and never see it. The
//! agent only accepts connections from [`HOST_CTL_IP`].
//!
//! Every connection starts with one JSON line, a [`Hello`], and then:
//! * [`Hello::Keeper`]: the agent answers nothing and relays the connection byte for byte to
//!   the guest's keeper socket — from there on it is the `linux` keeper protocol
//!   (`unicri_runtime_linux::keeper::proto`), sessions (exec/attach frames) included;
//! * [`Hello::Agent`]: one [`Response`] line;
//! * [`Hello::PortForward`]: a [`Response::Ok`] line (or `Error`), then raw bytes both ways
//!   with a TCP connection to `127.0.0.1:<port>` in the pod's network namespace in the guest;
//! * [`Hello::Logs`]: a [`Response::Ok`] line, then the bytes of the container's guest log file
//!   from `offset` on, following it as it grows (like `tail -c +N -f`); the agent closes the
//!   connection after the container was removed and everything was sent.
//!
//! All guest paths below are fixed by [`paths`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a message changes incompatibly; [`Response::Health`] reports it.
pub const PROTOCOL_VERSION: u32 = 1;
/// The agent's TCP port on the control link.
pub const AGENT_PORT: u16 = 1024;
/// The host end of the control link (in the pod's netns on the host).
pub const HOST_CTL_IP: &str = "169.254.100.1";
/// The guest end of the control link.
pub const GUEST_CTL_IP: &str = "169.254.100.2";
/// Prefix length of the control link.
pub const CTL_PREFIX: u8 = 30;
/// Kernel command line key naming the guest's control NIC: `unicri.ctl=<mac>` (the agent finds
/// the NIC with that MAC and gives it [`GUEST_CTL_IP`]).
pub const CMDLINE_CTL: &str = "unicri.ctl";

/// The first line of every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "svc", rename_all = "snake_case")]
pub enum Hello {
    /// Relay to the guest keeper.
    Keeper,
    /// One agent request.
    Agent {
        /// The request.
        request: Request,
    },
    /// A TCP connection to a port on the pod's loopback in the guest.
    PortForward {
        /// Port on 127.0.0.1 in the pod's netns.
        port: u16,
    },
    /// Follow a container's guest log file from `offset`.
    Logs {
        /// Container id.
        id: String,
        /// Byte offset to start at.
        offset: u64,
    },
}

/// An agent request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness, version, uptime.
    Health,
    /// Set up the pod in the guest (idempotent; sent once after boot, and again after a
    /// daemon restart is harmless): network, hostname, pod files, namespaces, sysctls, shm.
    Setup(PodSetup),
    /// Prepare a container's bundle: mount its image, make its writable layer and rootfs,
    /// write its files and `config.json`. Answers [`Response::Prepared`]. Idempotent.
    PrepareContainer(PrepareContainer),
    /// Write (or rewrite) files in the guest, e.g. a changed ConfigMap; each file is replaced
    /// atomically (write to a temp file, rename).
    PutFiles {
        /// The files.
        files: Vec<FileEntry>,
    },
    /// Unmount and remove a container's bundle, rootfs, writable layer, files and log file
    /// (after the keeper deleted it). Idempotent.
    RemoveContainer {
        /// Container id.
        id: String,
    },
    /// Change a container's resources (CRI `UpdateContainerResources`): the agent writes its
    /// cgroup v2 files under `/sys/fs/cgroup/pod/<id>`. Answers [`Response::Ok`]; a container
    /// without a cgroup is `not_found`, a write the kernel refuses (named with its file, value
    /// and errno) or a controller the guest kernel lacks (cpuset) is `failed_precondition`
    /// (cgroup v2 takes a `memory.max` below the usage: it reclaims, then OOM-kills).
    UpdateResources {
        /// Container id.
        id: String,
        /// The new resources.
        resources: Resources,
    },
    /// Resource usage of the guest and of containers.
    Stats {
        /// Container ids (unknown ones are left out of the answer).
        ids: Vec<String>,
    },
    /// The size of a container's guest log file now (0 when it has none yet): the daemon
    /// waits until its relay has copied that much before it reports the container exited, so
    /// a log read right after the exit is complete.
    LogSize {
        /// Container id.
        id: String,
    },
    /// Sync filesystems and power the guest off (the engine process then exits).
    Shutdown,
}

/// [`Request::Setup`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSetup {
    /// Pod id.
    pub pod_id: String,
    /// The pod's hostname (UTS namespace of its containers).
    pub hostname: String,
    /// The pod's NICs, found in the guest by MAC, renamed to `name` and moved into the pod's
    /// network namespace. Empty for a pod without a network.
    pub interfaces: Vec<Interface>,
    /// Routes in the pod's network namespace.
    pub routes: Vec<Route>,
    /// Pod files by name: `hosts`, `resolv.conf`, `hostname` → written to `/run/unicri/pod/`.
    pub files: BTreeMap<String, String>,
    /// Sysctls for the pod's namespaces (`net.*` in its netns, `kernel.*`/`fs.mqueue.*` in its
    /// IPC namespace).
    pub sysctls: BTreeMap<String, String>,
    /// Size of the pod's `/dev/shm` in bytes (0: 64 MiB).
    pub shm_size: u64,
}

/// A NIC of the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interface {
    /// MAC address (`aa:bb:cc:dd:ee:ff`), how the agent finds the NIC.
    pub mac: String,
    /// Name in the pod's netns (`eth0`).
    pub name: String,
    /// MTU (0: leave as is).
    pub mtu: u32,
    /// Addresses in CIDR form (`10.88.0.5/16`).
    pub addresses: Vec<String>,
}

/// A route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Destination in CIDR form (`0.0.0.0/0` for the default route).
    pub destination: String,
    /// Gateway, if any.
    pub gateway: Option<String>,
    /// Device name in the pod's netns.
    pub device: String,
}

/// [`Request::PrepareContainer`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrepareContainer {
    /// Container id.
    pub id: String,
    /// Guest block device holding the image (read-only EROFS, or ext4), e.g. `/dev/ubdb` or
    /// `/dev/vdb`; the agent waits up to 10 s for it to appear and mounts it once per device at
    /// `/run/unicri/images/<device name>`.
    pub image_device: String,
    /// Filesystem type of the image device (`erofs`, `ext4`).
    pub image_fstype: String,
    /// The OCI runtime spec (`config.json`) with guest paths: `root.path` is
    /// [`paths::rootfs`]`(id)`, namespace paths are the pod's pins in the guest, mount sources
    /// are guest paths (files of this request, pod files, volumes).
    pub config_json: String,
    /// Files and directories to make before the container is created.
    pub files: Vec<FileEntry>,
}

/// [`Request::UpdateResources`]: a container's resources, as CRI's `LinuxContainerResources`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// `memory.max` in bytes (0 or less: no limit, `max`). `memory.swap.max` is left alone.
    pub memory_limit_bytes: i64,
    /// CFS period in µs (`cpu.max`'s second field, 1000..=1000000; 0: left as it is).
    pub cpu_period: i64,
    /// CFS quota in µs per period (`cpu.max`'s first field; 0 or less: no limit, `max`).
    pub cpu_quota: i64,
    /// CPU shares (cgroup v1 scale, 2..262144), written as `cpu.weight` converted like runc
    /// and crun do: `1 + ((shares - 2) * 9999) / 262142`. 0: left as it is.
    pub cpu_shares: i64,
    /// `pids.max` (0: left as it is; below 0: no limit, `max`).
    pub pids_limit: i64,
    /// `cpuset.cpus` (empty: left as it is). The UML guest kernel has no cpuset controller:
    /// a non-empty value is then `failed_precondition`.
    pub cpuset_cpus: String,
    /// `cpuset.mems` (empty: left as it is), as `cpuset_cpus`.
    pub cpuset_mems: String,
}

/// A file, directory or symlink to write in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileEntry {
    /// Absolute guest path.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// File content (base64), or the symlink's target (plain).
    pub data: String,
}

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// Refused or failed. `kind` is one of `invalid_argument`, `not_found`,
    /// `failed_precondition`, `internal`.
    Error {
        /// Error class.
        kind: String,
        /// What happened.
        message: String,
    },
    /// [`Request::Health`].
    Health {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// Seconds since the guest booted.
        uptime_s: f64,
        /// Whether [`Request::Setup`] was done.
        set_up: bool,
    },
    /// [`Request::PrepareContainer`].
    Prepared {
        /// The bundle directory (holds `config.json`).
        bundle: String,
        /// The guest log file the keeper is to write.
        log_path: String,
        /// The container's cgroup directory in the guest (for OOM reads).
        cgroup_dir: String,
    },
    /// [`Request::Stats`].
    Stats(GuestStats),
    /// [`Request::LogSize`].
    LogSize {
        /// Bytes in the guest log file.
        bytes: u64,
    },
}

/// [`Request::Stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestStats {
    /// Guest memory: total and available (bytes, from `/proc/meminfo`).
    pub mem_total: u64,
    /// Available memory.
    pub mem_available: u64,
    /// Per container.
    pub containers: BTreeMap<String, ContainerUsage>,
}

/// One container's usage from its guest cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerUsage {
    /// `cpu.stat` `usage_usec` × 1000.
    pub cpu_ns: u64,
    /// `memory.current` minus `inactive_file`.
    pub memory_working_set: u64,
    /// `memory.current`.
    pub memory_usage: u64,
    /// Bytes written to the container's writable layer (tmpfs) so far.
    pub writable_bytes: u64,
}

/// Fixed guest paths.
pub mod paths {
    /// The guest keeper's directory (its socket is `keeper.sock` there).
    pub const KEEPER_DIR: &str = "/run/unicri/keeper";
    /// Pod files (`hosts`, `resolv.conf`, `hostname`) and the pod's `/dev/shm` (`shm/`).
    pub const POD_DIR: &str = "/run/unicri/pod";
    /// The pod's pinned namespaces in the guest: `net`, `ipc`, `uts`.
    pub const NS_DIR: &str = "/run/unicri/pod/ns";
    /// Volumes shared by the pod's containers (emptyDir, copied directories).
    pub const VOLUMES_DIR: &str = "/run/unicri/volumes";
    /// The cgroup (v2, mounted at /sys/fs/cgroup) under which containers get `<id>`.
    pub const POD_CGROUP: &str = "/pod";

    /// A container's bundle directory.
    pub fn bundle(id: &str) -> String {
        format!("/run/unicri/c/{id}")
    }
    /// A container's rootfs (overlay of its image and a tmpfs writable layer).
    pub fn rootfs(id: &str) -> String {
        format!("/run/unicri/c/{id}/rootfs")
    }
    /// Where a container's copied-in files go (`files/<n>`).
    pub fn files(id: &str) -> String {
        format!("/run/unicri/c/{id}/files")
    }
    /// The container's guest log file.
    pub fn log(id: &str) -> String {
        format!("/run/unicri/logs/{id}.log")
    }
    /// The container's cgroup path (relative to the cgroup root).
    pub fn cgroup(id: &str) -> String {
        format!("{POD_CGROUP}/{id}")
    }
}
