//! The pod network of a VM, in the pod's pinned network namespace on the host.
//!
//! CNI put `eth0` (the pod's IPs and routes) into the netns. [`setup`] adds two persistent
//! taps owned by root, with eth0's MTU:
//! * the pod NIC's tap (`tap0_vm`), joined to `eth0` with tc (Kata's "tcfilter" mode): an
//!   ingress qdisc on both and a `u32 match u32 0 0 action mirred egress redirect` filter each
//!   way, so every frame arriving on one leaves through the other. The guest NIC gets eth0's
//!   MAC, and eth0 keeps its addresses (the host stack never sees the redirected frames);
//! * the control tap (`ctl0`) with [`proto::HOST_CTL_IP`]/[`proto::CTL_PREFIX`], the host end
//!   of the agent's control link.
//!
//! It reads what the guest needs (eth0's MAC, MTU, global addresses, its routes other than
//! the kernel's own subnet routes) into [`PodNet`]. [`teardown`] removes the taps and qdiscs
//! and is idempotent. Everything runs as `nsenter --net=<pin> ip|tc …` child processes: the
//! caller's threads never change namespace.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};
use unicri_vm_agent::proto;

use crate::error::{VmError, run};

/// Interface names in the pod netns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetNames {
    /// The CNI interface (`eth0`).
    pub pod_if: String,
    /// The tap of the guest's pod NIC (`tap0_vm`).
    pub nic_tap: String,
    /// The control tap (`ctl0`).
    pub ctl_tap: String,
}

impl Default for NetNames {
    fn default() -> Self {
        NetNames {
            pod_if: "eth0".into(),
            nic_tap: "tap0_vm".into(),
            ctl_tap: "ctl0".into(),
        }
    }
}

/// What [`setup`] made and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// The pod NIC: tap name and the guest NIC's MAC (eth0's); `None` when the netns has no
    /// `pod_if` (a pod without a network).
    pub nic: Option<(String, String)>,
    /// The control tap's name.
    pub ctl_tap: String,
    /// The guest control NIC's MAC (the caller's, e.g. [`ctl_mac`]).
    pub ctl_mac: String,
    /// `Interface`s for [`proto::PodSetup::interfaces`] (eth0 with its MAC, MTU, addresses).
    pub interfaces: Vec<proto::Interface>,
    /// Routes for [`proto::PodSetup::routes`].
    pub routes: Vec<proto::Route>,
}

/// The guest control NIC's MAC for a pod: locally administered, unicast, from the pod id.
pub fn ctl_mac(pod_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(pod_id.as_bytes());
    format!(
        "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

fn ns(netns: &Path, prog: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display())).arg(prog);
    c
}

fn ip(netns: &Path, args: &[&str]) -> Result<Vec<u8>, VmError> {
    run(ns(netns, "ip").args(args))
}

fn tc(netns: &Path, args: &[&str]) -> Result<Vec<u8>, VmError> {
    run(ns(netns, "tc").args(args))
}

#[derive(Deserialize)]
struct IpLink {
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    address: String,
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct IpAddr {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: String,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn link_exists(netns: &Path, name: &str) -> Result<bool, VmError> {
    let out = ip(netns, &["-j", "link", "show"])?;
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap_or_default();
    Ok(links
        .iter()
        .any(|l| l.get("ifname").and_then(|n| n.as_str()) == Some(name)))
}

/// Reads `pod_if`'s MAC, MTU, addresses and routes.
fn inspect(netns: &Path, pod_if: &str) -> Result<(proto::Interface, Vec<proto::Route>), VmError> {
    let bad = |reason: String| VmError::PodNetwork {
        netns: netns.to_path_buf(),
        reason,
    };
    let out = ip(netns, &["-j", "addr", "show", "dev", pod_if])?;
    let links: Vec<IpLink> =
        serde_json::from_slice(&out).map_err(|e| bad(format!("ip -j addr: {e}")))?;
    let link = links
        .into_iter()
        .next()
        .ok_or_else(|| bad(format!("no interface {pod_if}")))?;
    let addresses = link
        .addr_info
        .iter()
        .filter(|a| a.scope != "link" && a.scope != "host" && !a.local.is_empty())
        .filter(|a| a.family == "inet" || a.family == "inet6")
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = ip(netns, &["-j", family, "route", "show", "table", "main"])?;
        let list: Vec<IpRoute> =
            serde_json::from_slice(&out).map_err(|e| bad(format!("ip -j route: {e}")))?;
        for r in list {
            if r.dev != pod_if
                || r.protocol == "kernel"
                || r.kind.as_deref().is_some_and(|k| k != "unicast")
                || r.dst.starts_with("fe80:")
                || r.dst.starts_with("ff00:")
                || r.dst.starts_with("multicast")
            {
                continue;
            }
            let destination = match r.dst.as_str() {
                "default" if family == "-4" => "0.0.0.0/0".to_string(),
                "default" => "::/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d if family == "-4" => format!("{d}/32"),
                d => format!("{d}/128"),
            };
            routes.push(proto::Route {
                destination,
                gateway: r.gateway,
                device: pod_if.to_string(),
            });
        }
    }
    Ok((
        proto::Interface {
            mac: link.address,
            name: pod_if.to_string(),
            mtu: link.mtu,
            addresses,
        },
        routes,
    ))
}

fn add_tap(netns: &Path, name: &str, mtu: u32) -> Result<(), VmError> {
    if !link_exists(netns, name)? {
        ip(
            netns,
            &["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"],
        )?;
    }
    let mtu = mtu.to_string();
    ip(netns, &["link", "set", "dev", name, "mtu", &mtu, "up"])?;
    Ok(())
}

/// Redirects everything arriving on `from` out of `to` (ingress qdisc + u32/mirred filter).
fn redirect(netns: &Path, from: &str, to: &str) -> Result<(), VmError> {
    // replace: idempotent when setup is retried
    tc(netns, &["qdisc", "replace", "dev", from, "ingress"])?;
    let _ = tc(netns, &["filter", "del", "dev", from, "parent", "ffff:"]);
    tc(
        netns,
        &[
            "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ],
    )?;
    Ok(())
}

/// Makes the taps of a pod's VM in `netns` and reads the pod network; `ctl_mac` is the MAC
/// the guest's control NIC will have (a permanent neighbour entry for
/// [`proto::GUEST_CTL_IP`] spares the agent's first connections an ARP round — which a guest
/// still booting would leave unanswered for a second). On failure whatever was made is
/// removed again.
pub fn setup(netns: &Path, names: &NetNames, ctl_mac: &str) -> Result<PodNet, VmError> {
    let result = setup_inner(netns, names, ctl_mac);
    if result.is_err()
        && let Err(e) = teardown(netns, names)
    {
        tracing::warn!(error = %e, netns = %netns.display(), "cleanup after failed network setup");
    }
    result
}

fn setup_inner(netns: &Path, names: &NetNames, ctl_mac: &str) -> Result<PodNet, VmError> {
    let has_pod_if = link_exists(netns, &names.pod_if)?;
    let mut net = PodNet {
        ctl_tap: names.ctl_tap.clone(),
        ctl_mac: ctl_mac.to_string(),
        ..PodNet::default()
    };
    let mut mtu = 1500;
    if has_pod_if {
        let (iface, routes) = inspect(netns, &names.pod_if)?;
        if iface.mtu > 0 {
            mtu = iface.mtu;
        }
        add_tap(netns, &names.nic_tap, mtu)?;
        redirect(netns, &names.pod_if, &names.nic_tap)?;
        redirect(netns, &names.nic_tap, &names.pod_if)?;
        net.nic = Some((names.nic_tap.clone(), iface.mac.clone()));
        net.interfaces.push(iface);
        net.routes = routes;
    }
    add_tap(netns, &names.ctl_tap, mtu)?;
    let addr = format!("{}/{}", proto::HOST_CTL_IP, proto::CTL_PREFIX);
    ip(netns, &["addr", "replace", &addr, "dev", &names.ctl_tap])?;
    ip(
        netns,
        &[
            "neigh",
            "replace",
            proto::GUEST_CTL_IP,
            "lladdr",
            ctl_mac,
            "dev",
            &names.ctl_tap,
            "nud",
            "permanent",
        ],
    )?;
    Ok(net)
}

/// Removes the taps and eth0's ingress qdisc (with its filter). Idempotent; a netns pin that
/// is already gone is fine.
pub fn teardown(netns: &Path, names: &NetNames) -> Result<(), VmError> {
    if !netns.exists() {
        return Ok(());
    }
    for tap in [&names.nic_tap, &names.ctl_tap] {
        if link_exists(netns, tap)? {
            ip(netns, &["link", "del", "dev", tap])?;
        }
    }
    if link_exists(netns, &names.pod_if)? {
        let qd = tc(netns, &["-j", "qdisc", "show", "dev", &names.pod_if])?;
        if String::from_utf8_lossy(&qd).contains("\"ingress\"") {
            tc(netns, &["qdisc", "del", "dev", &names.pod_if, "ingress"])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_mac_is_local_unicast_and_stable() {
        let m = ctl_mac("pod-1");
        assert_eq!(m, ctl_mac("pod-1"));
        assert_ne!(m, ctl_mac("pod-2"));
        assert!(m.starts_with("0e:"));
        assert_eq!(m.len(), 17);
    }
}
