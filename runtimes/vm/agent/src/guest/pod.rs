//! `Setup`: the pod's namespaces, network, files and `/dev/shm` in the guest.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::MsFlags;
use unicri_vm_agent::proto::{Interface, PodSetup, Route, paths};

use super::error::{Error, Result};
use super::netlink::{LinkChange, Netlink};
use super::{files, init, mounts, ns};

/// The pod files `Setup` may write.
const POD_FILES: [&str; 3] = ["hosts", "resolv.conf", "hostname"];
/// `/dev/shm` size when the request says 0.
const DEFAULT_SHM: u64 = 64 << 20;

/// `addr/prefix`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| Error::invalid(format!("{s:?} is not in CIDR form (address/prefix)")))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|e| Error::invalid(format!("{s:?}: bad address: {e}")))?;
    let prefix: u8 = p
        .parse()
        .map_err(|e| Error::invalid(format!("{s:?}: bad prefix length: {e}")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(Error::invalid(format!(
            "{s:?}: prefix length {prefix} exceeds {max}"
        )));
    }
    Ok((addr, prefix))
}

fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(Error::invalid(format!(
            "{name:?} is not a valid interface name"
        )));
    }
    Ok(())
}

/// A checked [`Route`].
#[derive(Debug, PartialEq)]
pub struct ParsedRoute {
    dst: IpAddr,
    dst_len: u8,
    gateway: Option<IpAddr>,
    device: String,
}

/// Sysctls as (key, value).
type Sysctls = Vec<(String, String)>;

/// Check the whole request before changing anything.
pub fn validate(req: &PodSetup) -> Result<(Sysctls, Vec<ParsedRoute>)> {
    if req.hostname.len() > 64 {
        return Err(Error::invalid(format!(
            "hostname {:?} is longer than 64 bytes",
            req.hostname
        )));
    }
    for name in req.files.keys() {
        if !POD_FILES.contains(&name.as_str()) {
            return Err(Error::invalid(format!(
                "pod file {name:?} is not one of hosts, resolv.conf, hostname"
            )));
        }
    }
    let mut sysctls = Vec::new();
    for (k, v) in &req.sysctls {
        ns::sysctl_path(k)?;
        if ns::sysctl_namespace(k).is_none() {
            return Err(Error::invalid(format!(
                "sysctl {k} is not namespaced (only net.*, kernel.*, fs.mqueue.*)"
            )));
        }
        sysctls.push((k.clone(), v.clone()));
    }
    for i in &req.interfaces {
        init::normalize_mac(&i.mac).ok_or_else(|| {
            Error::invalid(format!("interface {:?}: {:?} is not a MAC", i.name, i.mac))
        })?;
        validate_ifname(&i.name)?;
        for a in &i.addresses {
            parse_cidr(a)?;
        }
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        routes.push(parse_route(r)?);
    }
    Ok((sysctls, routes))
}

fn parse_route(r: &Route) -> Result<ParsedRoute> {
    let (dst, dst_len) = parse_cidr(&r.destination)?;
    let gateway = match r.gateway.as_deref() {
        None | Some("") => None,
        Some(g) => Some(
            g.parse::<IpAddr>()
                .map_err(|e| Error::invalid(format!("route gateway {g:?}: {e}")))?,
        ),
    };
    if gateway.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
        return Err(Error::invalid(format!(
            "route to {}: gateway and destination differ in address family",
            r.destination
        )));
    }
    if !r.device.is_empty() {
        validate_ifname(&r.device)?;
    }
    if gateway.is_none() && r.device.is_empty() {
        return Err(Error::invalid(format!(
            "route to {} has neither a gateway nor a device",
            r.destination
        )));
    }
    Ok(ParsedRoute {
        dst,
        dst_len,
        gateway,
        device: r.device.clone(),
    })
}

/// Do the whole setup (idempotent).
pub fn setup(req: &PodSetup) -> Result<()> {
    let (sysctls, routes) = validate(req)?;
    ns::ensure(&req.hostname, &sysctls)?;
    ns::in_pod_netns(init::loopback_up)?;
    for i in &req.interfaces {
        setup_interface(i)?;
    }
    ns::in_pod_netns(move || {
        let mut nl = Netlink::open().map_err(|e| Error::io("open netlink", &e))?;
        for r in &routes {
            add_route(&mut nl, r)?;
        }
        Ok(())
    })?;
    for (name, content) in &req.files {
        let path = Path::new(paths::POD_DIR).join(name);
        files::write_atomic(&path, content.as_bytes(), 0o644)
            .map_err(|e| Error::io(format!("write pod file {}", path.display()), &e))?;
    }
    let shm = format!("{}/shm", paths::POD_DIR);
    let size = if req.shm_size == 0 {
        DEFAULT_SHM
    } else {
        req.shm_size
    };
    mounts::mount_once(
        "shm",
        &shm,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size={size}")),
    )?;
    Ok(())
}

fn setup_interface(i: &Interface) -> Result<()> {
    let mac = init::normalize_mac(&i.mac)
        .ok_or_else(|| Error::invalid(format!("{:?} is not a MAC", i.mac)))?;
    if let Some((index, old)) = init::find_nic(&mac) {
        // still in the guest's root netns: move it, renaming it on the way
        let pin = std::fs::File::open(ns::pin("net"))
            .map_err(|e| Error::io("open the pod's netns pin", &e))?;
        let mut nl = Netlink::open().map_err(|e| Error::io("open netlink", &e))?;
        nl.set_link(
            index,
            &LinkChange {
                name: Some(&i.name),
                netns_fd: Some(pin.as_raw_fd()),
                ..LinkChange::default()
            },
        )
        .map_err(|e| {
            Error::io(
                format!("move NIC {old} ({mac}) into the pod's netns as {}", i.name),
                &e,
            )
        })?;
        tracing::info!(nic = %old, mac = %mac, name = %i.name, "moved NIC into the pod netns");
    }
    let i = i.clone();
    ns::in_pod_netns(move || {
        let index = nix::net::if_::if_nametoindex(i.name.as_str()).map_err(|e| {
            Error::not_found(format!(
                "no NIC with MAC {} in the guest, and no {} in the pod's netns: {}",
                i.mac,
                i.name,
                std::io::Error::from(e)
            ))
        })?;
        let mut nl = Netlink::open().map_err(|e| Error::io("open netlink", &e))?;
        if i.mtu > 0 {
            nl.set_link(
                index,
                &LinkChange {
                    mtu: Some(i.mtu),
                    ..LinkChange::default()
                },
            )
            .map_err(|e| Error::io(format!("set MTU {} on {}", i.mtu, i.name), &e))?;
        }
        for a in &i.addresses {
            let (addr, prefix) = parse_cidr(a)?;
            match nl.add_address(index, addr, prefix) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(Error::io(format!("add address {a} to {}", i.name), &e)),
            }
        }
        nl.set_link(
            index,
            &LinkChange {
                up: true,
                ..LinkChange::default()
            },
        )
        .map_err(|e| Error::io(format!("bring up {}", i.name), &e))
    })
}

fn add_route(nl: &mut Netlink, r: &ParsedRoute) -> Result<()> {
    let oif = if r.device.is_empty() {
        None
    } else {
        Some(
            nix::net::if_::if_nametoindex(r.device.as_str()).map_err(|e| {
                Error::not_found(format!(
                    "route device {} in the pod's netns: {}",
                    r.device,
                    std::io::Error::from(e)
                ))
            })?,
        )
    };
    match nl.add_route(r.dst, r.dst_len, r.gateway, oif) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(Error::io(
            format!(
                "add route {}/{} via {:?} dev {:?}",
                r.dst, r.dst_len, r.gateway, r.device
            ),
            &e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.88.0.5/16").unwrap(),
            ("10.88.0.5".parse().unwrap(), 16)
        );
        assert_eq!(parse_cidr("fd00::1/64").unwrap().1, 64);
        assert!(parse_cidr("10.88.0.5").is_err());
        assert!(parse_cidr("10.88.0.5/33").is_err());
        assert!(parse_cidr("x/3").is_err());
    }

    #[test]
    fn validates_setup() {
        let mut req = PodSetup {
            hostname: "web".into(),
            interfaces: vec![Interface {
                mac: "02:00:00:00:01:02".into(),
                name: "eth0".into(),
                mtu: 1500,
                addresses: vec!["10.88.0.5/16".into()],
            }],
            routes: vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.88.0.1".into()),
                device: "eth0".into(),
            }],
            ..PodSetup::default()
        };
        req.files
            .insert("hosts".into(), "127.0.0.1 localhost\n".into());
        req.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        let (sysctls, routes) = validate(&req).unwrap();
        assert_eq!(sysctls.len(), 1);
        assert_eq!(routes[0].dst_len, 0);

        let mut bad = req.clone();
        bad.files.insert("passwd".into(), String::new());
        assert!(validate(&bad).unwrap_err().message.contains("passwd"));
        let mut bad = req.clone();
        bad.sysctls.insert("vm.swappiness".into(), "1".into());
        assert!(
            validate(&bad)
                .unwrap_err()
                .message
                .contains("not namespaced")
        );
        let mut bad = req.clone();
        bad.interfaces[0].name = "a/b".into();
        assert!(validate(&bad).is_err());
        let mut bad = req.clone();
        bad.routes[0].gateway = Some("fd00::1".into());
        assert!(validate(&bad).unwrap_err().message.contains("family"));
        let mut bad = req;
        bad.routes[0].gateway = None;
        bad.routes[0].device = String::new();
        assert!(validate(&bad).is_err());
    }
}
