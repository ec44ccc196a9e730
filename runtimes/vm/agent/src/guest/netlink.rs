//! A minimal rtnetlink client (no crate): set links up, rename/move them to another network
//! namespace, set the MTU, add addresses and routes. A socket works in the network namespace
//! of the thread that created it, so callers that configure a pod's netns open it on a thread
//! that joined that netns.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A link change ([`Netlink::set_link`]).
#[derive(Debug, Default)]
pub struct LinkChange<'a> {
    /// Bring it up.
    pub up: bool,
    /// New MTU.
    pub mtu: Option<u32>,
    /// New name (in the target namespace when `netns_fd` is set).
    pub name: Option<&'a str>,
    /// Move to the network namespace of this fd.
    pub netns_fd: Option<RawFd>,
}

/// An `NETLINK_ROUTE` socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Change link `index`.
    pub fn set_link(&mut self, index: u32, change: &LinkChange<'_>) -> io::Result<()> {
        let mut body = ifinfomsg(index, change.up);
        if let Some(mtu) = change.mtu {
            put_attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(name) = change.name {
            let mut b = name.as_bytes().to_vec();
            b.push(0);
            put_attr(&mut body, IFLA_IFNAME, &b);
        }
        if let Some(fd) = change.netns_fd {
            put_attr(&mut body, IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
        }
        self.call(RTM_NEWLINK, 0, &body)
    }

    /// Add `addr/prefix` to link `index` (`EEXIST` if it is there).
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let body = ifaddrmsg(index, addr, prefix);
        self.call(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    /// Add a route (`EEXIST` if it is there).
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        dst_len: u8,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> io::Result<()> {
        let body = rtmsg(dst, dst_len, gateway, oif);
        self.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    /// Send one request and wait for its acknowledgement.
    fn call(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let msg = nlmsg(ty, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, body);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())?;
        let mut buf = vec![0u8; 16384];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if let Some(result) = find_ack(&buf[..n], self.seq) {
                return match result {
                    0 => Ok(()),
                    e => Err(io::Error::from_raw_os_error(-e)),
                };
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Append an `rtattr` (padded to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (align4(len) - len), 0);
}

/// A whole message: `nlmsghdr` + body.
pub fn nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(align4(len));
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(align4(len), 0);
    m
}

fn ifinfomsg(index: u32, up: bool) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family AF_UNSPEC, pad, type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    let flags = if up { IFF_UP } else { 0 };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes()); // change mask: only IFF_UP, and only when set
    b
}

fn family(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ifaddrmsg(index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut b = vec![family(&addr), prefix, flags, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    let ip = ip_bytes(&addr);
    if addr.is_ipv4() {
        put_attr(&mut b, IFA_LOCAL, &ip);
    }
    put_attr(&mut b, IFA_ADDRESS, &ip);
    b
}

fn rtmsg(dst: IpAddr, dst_len: u8, gateway: Option<IpAddr>, oif: Option<u32>) -> Vec<u8> {
    let scope = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut b = vec![
        family(&dst),
        dst_len,
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    if dst_len > 0 {
        put_attr(&mut b, RTA_DST, &ip_bytes(&dst));
    }
    if let Some(gw) = gateway {
        put_attr(&mut b, RTA_GATEWAY, &ip_bytes(&gw));
    }
    if let Some(oif) = oif {
        put_attr(&mut b, RTA_OIF, &oif.to_ne_bytes());
    }
    b
}

/// The `NLMSG_ERROR` answer to `seq` in a received buffer: 0 (ack) or a negative errno.
pub fn find_ack(mut buf: &[u8], seq: u32) -> Option<i32> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let mseq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if len < 16 || len > buf.len() {
            return None;
        }
        if ty == NLMSG_ERROR && mseq == seq && len >= 20 {
            return Some(i32::from_ne_bytes(buf[16..20].try_into().ok()?));
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_padded() {
        let mut b = Vec::new();
        put_attr(&mut b, IFLA_IFNAME, b"eth0\0");
        assert_eq!(b.len(), 12);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 9);
        assert_eq!(&b[4..9], b"eth0\0");
        assert_eq!(&b[9..], &[0, 0, 0]);
    }

    #[test]
    fn message_header_and_ack() {
        let m = nlmsg(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            &ifinfomsg(3, true),
        );
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 32);
        // an error message answering seq 7 with -EEXIST
        let mut body = (-17i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&m[..16]);
        let ack = nlmsg(NLMSG_ERROR, 0, 7, &body);
        assert_eq!(find_ack(&ack, 7), Some(-17));
        assert_eq!(find_ack(&ack, 8), None);
    }

    #[test]
    fn route_and_address_bodies() {
        let r = rtmsg(
            "0.0.0.0".parse().unwrap(),
            0,
            Some("10.0.0.1".parse().unwrap()),
            Some(2),
        );
        // rtmsg (12) + gateway (8) + oif (8), no RTA_DST for a default route
        assert_eq!(r.len(), 28);
        assert_eq!(r[6], RT_SCOPE_UNIVERSE);
        let a = ifaddrmsg(2, "fd00::5".parse().unwrap(), 64);
        assert_eq!(a[0], AF_INET6);
        assert_eq!(a.len(), 8 + 20);
    }
}
