//! unicri's pod networking, standalone (knows nothing of CRI or SQLite):
//!
//! * [`netns`]: network namespaces pinned by a bind mount, no process ([`NetNs::create`],
//!   [`NetNs::open`], [`NetNs::remove`], [`run_in`]).
//! * [`conf`]: the network configuration ([`NetworkConfigList`]): first `*.conflist`/`*.conf`/
//!   `*.json` of the config directory, validated; the built-in loopback network.
//! * [`exec`]: running one plugin binary ([`PluginExec`]) with the CNI environment, stdin and a
//!   deadline; plugin failures parsed from the CNI error JSON ([`PluginError`]).
//! * [`runtime`]: `CNI_ARGS`, capability arguments (`portMappings`, `bandwidth`, `dns`) and the
//!   per-plugin stdin config.
//! * [`cache`]: the ADD result cache that makes DEL/CHECK work after a restart.
//! * [`network`]: [`Cni`], list-level ADD/DEL/CHECK/STATUS as libcni does them, readiness
//!   ([`Cni::status`]) and the pod-level [`Cni::setup_pod`] / [`Cni::teardown_pod`].
//!
//! See the crate README for the invariants.

pub mod cache;
pub mod conf;
pub mod error;
pub mod exec;
pub mod netns;
pub mod network;
pub mod result;
pub mod runtime;

pub use cache::{CacheEntry, ResultCache};
pub use conf::{NetworkConfigList, PluginConf};
pub use error::{CniError, PluginError};
pub use exec::{CniCommand, PluginExec};
pub use netns::{InterfaceStats, NetNs, interface_stats, run_in};
pub use network::{
    Cni, CniOptions, DEFAULT_IFNAME, NotReadyReason, PodNetwork, PodNetworkStatus, default_bin_dirs,
};
pub use result::CniResult;
pub use runtime::{Bandwidth, CapabilityArgs, Dns, K8sArgs, PortMapping, RuntimeConf};

#[cfg(test)]
mod testutil;
