//! unicri's `linux` backend, pod half: pods without a process.
//!
//! * [`LinuxPod`]: create a pod from a [`PodSpec`](unicri_sandbox::pod::PodSpec) (pinned IPC/UTS
//!   namespaces, hostname, IPC sysctls, `/dev/shm` tmpfs, `hostname`/`hosts`/`resolv.conf`, pod
//!   cgroup) with full rollback; remove it idempotently; check it after a restart.
//! * [`ns`]: namespace pins made on a dedicated thread that unshares and exits; entering a pin.
//! * [`sysctl`]: kubelet's namespaced-sysctl rules; `net.*` applied inside a pinned netns.
//! * [`cgroups`]: cgroupfs driver over v1 (hybrid) or v2.
//! * [`files`]: pod files, written atomically.
//! * [`spec`]: a container's OCI runtime spec from its `ContainerSpec`, image config and pod.
//! * [`user`]: the container's uid/gid/groups from the rootfs' `/etc/passwd` and `/etc/group`.
//! * [`seccomp`]: the default seccomp profile and `Localhost` profiles, as OCI seccomp.
//! * [`keeper`]: the node keeper process (parent of every container, log writer, exit records)
//!   and the daemon's client for it.
//!
//! The network namespace is `network-cni`'s (`NetNs::create`); this crate only enters it to apply
//! `net.*` sysctls.

pub mod cgroups;
pub mod error;
pub mod files;
pub mod keeper;
pub mod mountinfo;
pub mod ns;
pub mod pod;
pub mod seccomp;
pub mod spec;
pub mod sysctl;
pub mod user;

pub use error::LinuxError;
pub use pod::{LinuxPod, PodState, Problem};
