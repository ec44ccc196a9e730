//! The parts of a CNI result (spec 0.3.0 – 1.1.0 share this shape) the runtime reads: interfaces
//! and IP addresses. The raw JSON is what gets chained and cached; this view only reads it.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ResultInterface {
    /// Interface name.
    #[serde(default)]
    pub name: String,
    /// MAC address, if reported.
    #[serde(default)]
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host-side interfaces.
    #[serde(default)]
    pub sandbox: String,
}

/// An IP configuration in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ResultIp {
    /// Address in CIDR form, `10.250.1.5/24`.
    pub address: String,
    /// Gateway, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces` of the interface that holds the address.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl ResultIp {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

/// A CNI result as far as the runtime needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The version the result is written in.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces created or used.
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<ResultIp>,
}

impl CniResult {
    /// Reads the runtime's view of a raw result.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let r: CniResult = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        for ip in &r.ips {
            if ip.ip().is_none() {
                return Err(format!("ip address {:?} is not an address", ip.address));
            }
        }
        Ok(r)
    }

    /// The addresses of the sandbox interface `ifname`, in result order. Like go-cni, an address
    /// counts when its `interface` index names an interface with a non-empty `sandbox` and that
    /// name; a result that reports no interfaces at all (IPAM-only chains) contributes all its
    /// addresses.
    pub fn sandbox_ips(&self, ifname: &str) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(|ip| {
                if self.interfaces.is_empty() {
                    return true;
                }
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_some_and(|iface| !iface.sandbox.is_empty() && iface.name == ifname)
            })
            .filter_map(ResultIp::ip)
            .collect()
    }
}

/// The pod's primary IP as containerd picks it: the first IPv4 address, else the first address.
pub fn primary_ip(ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_sandbox_interface_addresses() {
        let v = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/unicri/netns/x"}
            ],
            "ips": [
                {"address": "10.250.1.1/24", "interface": 0},
                {"address": "fd00:250::5/64", "gateway": "fd00:250::1", "interface": 2},
                {"address": "10.250.1.5/24", "gateway": "10.250.1.1", "interface": 2},
                {"address": "10.250.9.9/24"}
            ]
        });
        let r = CniResult::from_value(&v).expect("parse");
        let ips = r.sandbox_ips("eth0");
        assert_eq!(
            ips,
            vec![
                "fd00:250::5".parse::<IpAddr>().expect("ip"),
                "10.250.1.5".parse().expect("ip")
            ]
        );
        assert_eq!(primary_ip(&ips), Some("10.250.1.5".parse().expect("ip")));
        assert!(r.sandbox_ips("eth1").is_empty());
    }

    #[test]
    fn ipam_only_results_count_all_addresses() {
        let v = serde_json::json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/16"}]});
        let r = CniResult::from_value(&v).expect("parse");
        assert_eq!(
            r.sandbox_ips("eth0"),
            vec!["10.1.0.2".parse::<IpAddr>().expect("ip")]
        );
        assert!(CniResult::from_value(&serde_json::json!({"ips":[{"address":"bogus"}]})).is_err());
        assert_eq!(primary_ip(&[]), None);
    }
}
