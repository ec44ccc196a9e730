//! Backend-neutral description of a pod: what a CRI `PodSandboxConfig` maps to, as plain data.
//!
//! `cri-server` maps CRI → [`PodSpec`]; backends (`runtimes/*`) read it. Pure data, no I/O, no
//! validation beyond what the types express: backends reject what they cannot honour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything a backend needs to create a pod sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    /// The pod's 64-hex-digit id (chosen by unicri).
    pub id: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid` (kubelet's pod uid).
    pub uid: String,
    /// `metadata.attempt`.
    pub attempt: u32,
    /// The pod's hostname; empty means the node's hostname.
    pub hostname: String,
    /// Where kubelet wants the containers' logs (`log_directory`).
    pub log_directory: String,
    /// DNS settings; empty means "copy the node's resolv.conf".
    pub dns: DnsSpec,
    /// Port mappings (`port_mappings`), handed to CNI's `portMappings` capability.
    pub port_mappings: Vec<PortMapping>,
    /// `linux.cgroup_parent`, e.g. `/kubepods/besteffort/pod<uid>`; empty lets the backend choose.
    pub cgroup_parent: String,
    /// `linux.sysctls`: name (dotted or slashed) → value.
    pub sysctls: BTreeMap<String, String>,
    /// `linux.security_context.namespace_options`.
    pub namespaces: PodNamespaces,
    /// Size of the pod's `/dev/shm` in bytes; `None` is the backend's default (64 MiB).
    pub shm_size: Option<u64>,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// `annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// `dns_config`: resolv.conf content for the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsSpec {
    /// `nameserver` lines, in order.
    pub servers: Vec<String>,
    /// The `search` line's domains, in order.
    pub searches: Vec<String>,
    /// The `options` line's options, in order (e.g. `ndots:5`).
    pub options: Vec<String>,
}

impl DnsSpec {
    /// True when nothing is set (the backend then copies the node's resolv.conf).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// One `PortMapping`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// Node address to bind; empty means all.
    pub host_ip: String,
}

/// A port mapping's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// `NamespaceOption` for the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodNamespaces {
    /// Network namespace: the pod's own or the node's (`hostNetwork`).
    pub network: NamespaceMode,
    /// IPC namespace: the pod's own or the node's (`hostIPC`).
    pub ipc: NamespaceMode,
    /// PID namespace.
    pub pid: PidMode,
}

/// Whether a namespace is the pod's own or the node's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// One namespace for the pod, shared by its containers.
    #[default]
    Pod,
    /// The node's namespace.
    Node,
}

/// The PID namespace a pod's containers get.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    /// One namespace shared by the pod's containers (`shareProcessNamespace`).
    Pod,
    /// One namespace per container (kubelet's default).
    #[default]
    Container,
    /// The node's namespace (`hostPID`).
    Node,
    /// The namespace of the container with this id (ephemeral debug containers).
    Target(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_and_defaults_missing_fields() {
        let mut spec = PodSpec {
            id: "a".repeat(64),
            hostname: "web-0".into(),
            ..PodSpec::default()
        };
        spec.namespaces.pid = PidMode::Target("b".repeat(64));
        spec.sysctls.insert("kernel.shmmni".into(), "8192".into());
        let json = serde_json::to_string(&spec).expect("serialize");
        let back: PodSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);

        let minimal: PodSpec = serde_json::from_str(r#"{"id":"x"}"#).expect("minimal");
        assert_eq!(minimal.namespaces.network, NamespaceMode::Pod);
        assert_eq!(minimal.namespaces.pid, PidMode::Container);
        assert!(minimal.dns.is_empty());
    }
}
