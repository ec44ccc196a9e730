//! What the runtime tells a plugin besides its configuration: the per-invocation environment
//! (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`) and the capability arguments that
//! become `runtimeConfig`, plus the stdin config a plugin receives (libcni's `buildOneConfig`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::conf::{NetworkConfigList, PluginConf};
use crate::error::CniError;

/// Capability name for port mappings (the `portmap` plugin).
pub const CAP_PORT_MAPPINGS: &str = "portMappings";
/// Capability name for traffic shaping (the `bandwidth` plugin).
pub const CAP_BANDWIDTH: &str = "bandwidth";
/// Capability name for DNS settings.
pub const CAP_DNS: &str = "dns";

/// One invocation's runtime parameters (libcni's `RuntimeConf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`: the pod sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pinned netns path; `None` sends an empty value (DEL after the netns is
    /// gone, as containerd does).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface inside the netns (`eth0`, `lo`).
    pub ifname: String,
    /// `CNI_ARGS` as ordered key/value pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments, passed as `runtimeConfig` to plugins that declare them.
    pub capability_args: CapabilityArgs,
}

impl RuntimeConf {
    /// `CNI_ARGS`: `K=V` pairs joined by `;`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Checks the fields against the spec's rules so a bad id never reaches a plugin or a cache
    /// file name.
    pub fn validate(&self) -> Result<(), CniError> {
        validate_container_id(&self.container_id)?;
        validate_ifname(&self.ifname)?;
        for (k, v) in &self.args {
            for (what, s) in [("CNI_ARGS key", k), ("CNI_ARGS value", v)] {
                if s.contains([';', '=']) || s.contains('\0') {
                    return Err(CniError::InvalidArgument {
                        what,
                        value: s.clone(),
                        reason: "must not contain ';', '=' or NUL",
                    });
                }
            }
            if k.is_empty() {
                return Err(CniError::InvalidArgument {
                    what: "CNI_ARGS key",
                    value: k.clone(),
                    reason: "must not be empty",
                });
            }
        }
        Ok(())
    }
}

/// The Kubernetes pod identity passed in `CNI_ARGS` (what kubelet's network plugins expect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_INFRA_CONTAINER_ID`: the sandbox id.
    pub infra_container_id: String,
    /// `K8S_POD_UID`.
    pub pod_uid: String,
}

impl K8sArgs {
    /// The pairs in the order containerd sends them, `IgnoreUnknown=1` first so plugins that do
    /// not know the K8S_ keys accept them.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.pod_namespace.clone()),
            ("K8S_POD_NAME".into(), self.pod_name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                self.infra_container_id.clone(),
            ),
            ("K8S_POD_UID".into(), self.pod_uid.clone()),
        ]
    }
}

/// A port mapping for the `portMappings` capability (CRI `PortMapping`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower case, as containerd sends it).
    pub protocol: String,
    /// Host address to bind; empty means all.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping for the `bandwidth` capability: rates in bits per second, bursts in bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate, bits/s.
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    pub ingress_burst: u64,
    /// Egress rate, bits/s.
    pub egress_rate: u64,
    /// Egress burst, bits.
    pub egress_burst: u64,
}

/// DNS settings for the `dns` capability (CRI `DNSConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default)]
    pub searches: Vec<String>,
    /// resolv.conf options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// Capability arguments by capability name; each plugin sees only those it declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CapabilityArgs(pub BTreeMap<String, Value>);

impl CapabilityArgs {
    /// Sets any capability argument by name.
    pub fn set(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_string(), value);
    }

    /// Sets `portMappings` (left unset when `mappings` is empty, as containerd does).
    pub fn set_port_mappings(&mut self, mappings: &[PortMapping]) {
        if !mappings.is_empty() {
            self.set(CAP_PORT_MAPPINGS, json(mappings));
        }
    }

    /// Sets `bandwidth`.
    pub fn set_bandwidth(&mut self, bandwidth: &Bandwidth) {
        self.set(CAP_BANDWIDTH, json(bandwidth));
    }

    /// Sets `dns`.
    pub fn set_dns(&mut self, dns: &Dns) {
        self.set(CAP_DNS, json(dns));
    }

    /// The `runtimeConfig` object for one plugin: the arguments whose capability the plugin
    /// declares (`"capabilities": {"<name>": true}`), nothing else.
    pub fn for_plugin(&self, plugin: &PluginConf) -> Map<String, Value> {
        self.0
            .iter()
            .filter(|(k, _)| plugin.capabilities.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> Value {
    // These types serialize to JSON infallibly (plain structs of strings and numbers).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The configuration a plugin reads on stdin: its own object with `name` and `cniVersion` of the
/// list, `prevResult` when there is one, and `runtimeConfig` with the capability arguments it
/// declares (replacing any `runtimeConfig` in the file, as libcni does).
pub fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    caps: &CapabilityArgs,
) -> Value {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let rc = caps.for_plugin(plugin);
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

/// Container id rule of the spec: non-empty, alphanumerics plus `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidArgument {
            what: "container id",
            value: id.to_string(),
            reason: "must be non-empty alphanumerics, '_', '.', '-'",
        })
    }
}

/// Interface name rule of the spec (Linux's): 1–15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidArgument {
            what: "interface name",
            value: name.to_string(),
            reason: "must be 1-15 bytes without '/', ':' or whitespace",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NetworkConfigList {
        NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"podnet","plugins":[
                {"type":"bridge","name":"ignored","cniVersion":"0.3.1","runtimeConfig":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true}},
                {"type":"bandwidth","capabilities":{"bandwidth":true,"portMappings":false}},
                {"type":"dnsplugin","capabilities":{"dns":true,"unknownCap":true}}
            ]}"#,
            "t",
        )
        .expect("valid")
    }

    fn caps() -> CapabilityArgs {
        let mut c = CapabilityArgs::default();
        c.set_port_mappings(&[PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }]);
        c.set_bandwidth(&Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 2_000_000,
            egress_rate: 3,
            egress_burst: 4,
        });
        c.set_dns(&Dns {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        c
    }

    #[test]
    fn capability_args_only_reach_declaring_plugins() {
        let l = list();
        let c = caps();
        let bridge = plugin_stdin(&l, &l.plugins[0], None, &c);
        // the stale runtimeConfig of the file is kept only when nothing replaces it
        assert_eq!(bridge["runtimeConfig"], serde_json::json!({"stale": 1}));
        assert_eq!(bridge["name"], "podnet");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("prevResult").is_none());

        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let portmap = plugin_stdin(&l, &l.plugins[1], Some(&prev), &c);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            serde_json::json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );
        let bw = plugin_stdin(&l, &l.plugins[2], None, &c);
        assert_eq!(
            bw["runtimeConfig"],
            serde_json::json!({"bandwidth":{"ingressRate":1000000,"ingressBurst":2000000,"egressRate":3,"egressBurst":4}})
        );
        let dns = plugin_stdin(&l, &l.plugins[3], None, &c);
        assert_eq!(
            dns["runtimeConfig"],
            serde_json::json!({"dns":{"servers":["10.96.0.10"],"searches":["svc.cluster.local"],"options":["ndots:5"]}})
        );
        // no capability args at all: no runtimeConfig injected
        let none = plugin_stdin(&l, &l.plugins[1], None, &CapabilityArgs::default());
        assert!(none.get("runtimeConfig").is_none());
    }

    #[test]
    fn host_ip_is_sent_when_set() {
        let mut c = CapabilityArgs::default();
        c.set_port_mappings(&[PortMapping {
            host_port: 1,
            container_port: 2,
            protocol: "udp".into(),
            host_ip: "127.0.0.1".into(),
        }]);
        assert_eq!(c.0[CAP_PORT_MAPPINGS][0]["hostIP"], "127.0.0.1");
        let mut empty = CapabilityArgs::default();
        empty.set_port_mappings(&[]);
        assert!(empty.0.is_empty());
    }

    #[test]
    fn cni_args_format_and_validation() {
        let k = K8sArgs {
            pod_namespace: "default".into(),
            pod_name: "web-0".into(),
            infra_container_id: "abc123".into(),
            pod_uid: "1f2e-33".into(),
        };
        let rt = RuntimeConf {
            container_id: "abc123".into(),
            netns: None,
            ifname: "eth0".into(),
            args: k.to_pairs(),
            capability_args: CapabilityArgs::default(),
        };
        assert_eq!(
            rt.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=1f2e-33"
        );
        rt.validate().expect("valid");
        let mut bad = rt.clone();
        bad.args.push(("X".into(), "a;b".into()));
        assert!(bad.validate().is_err());
        for id in ["", "a/b", "..", "a b"] {
            let mut bad = rt.clone();
            bad.container_id = id.into();
            assert!(bad.validate().is_err(), "{id:?}");
        }
        for ifname in ["", "averyveryverylongname", "a:b", "a/b", ".."] {
            let mut bad = rt.clone();
            bad.ifname = ifname.into();
            assert!(bad.validate().is_err(), "{ifname:?}");
        }
    }
}
