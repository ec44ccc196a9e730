//! The connection multiplexer between the guest and host unix sockets (after Firecracker's
//! `unix/muxer.rs`): routes guest packets to connections by (host port, guest port), opens
//! `<uds_path>_<port>` for guest connection requests, accepts host connections on `<uds_path>`
//! and reads their `CONNECT <port>\n`, and queues what each connection has for the guest.
//!
//! Every socket is registered in one epoll (the device's host thread waits on it) under a token
//! that is never reused, so a late event for a closed socket cannot reach a new one.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::Conn;
use super::packet::{HOST_CID, Header, TYPE_STREAM, op};

/// Epoll token of the host thread's wake-up eventfd.
pub const WAKE_TOKEN: u64 = 0;
/// Epoll token of the host listener.
const LISTENER_TOKEN: u64 = 1;
/// At most this many connections (each buffers at most 64 KiB of guest data).
pub const MAX_CONNECTIONS: usize = 256;
/// At most this many accepted host sockets still owing their `CONNECT` line.
const MAX_HOST_PENDING: usize = 64;
/// At most this many RSTs for unknown connections queued for the guest; TX processing pauses
/// while the backlog is full.
const MAX_RST_BACKLOG: usize = 256;
/// The longest `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// Host-initiated connections get local ports in [1<<30, 1<<31).
const LOCAL_PORT_MIN: u32 = 1 << 30;
const LOCAL_PORT_END: u32 = 1 << 31;

/// A connection's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    local_port: u32,
    peer_port: u32,
}

/// Something for the guest.
enum Rx {
    /// Ask this connection.
    Conn(Key),
    /// An RST for a packet no connection wanted.
    Rst(Key),
}

/// An accepted host socket that has not sent its whole `CONNECT` line yet.
struct HostPending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The multiplexer.
pub struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    epoll: Arc<Epoll>,
    listener: UnixListener,
    listener_polled: bool,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u64, Key>,
    host_pending: HashMap<u64, HostPending>,
    rxq: VecDeque<Rx>,
    rst_backlog: usize,
    /// Host-allocated local ports and their connections.
    local_ports: HashMap<u32, Key>,
    last_local_port: u32,
    next_token: u64,
    expiry_armed: bool,
}

fn ctl(epoll: &Epoll, op: ControlOperation, fd: i32, ev: EventSet, token: u64) -> bool {
    match epoll.ctl(op, fd, EpollEvent::new(ev, token)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "vsock: epoll_ctl failed");
            false
        }
    }
}

/// Connects a non-blocking unix stream socket to `path`: a host listener whose backlog is full
/// refuses (EAGAIN) rather than blocking the vCPU thread.
fn connect_nonblocking(path: &OsStr) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (the keyword in any case).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("connect") {
        return None;
    }
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(port)
}

impl Muxer {
    /// A muxer for the guest `cid`, accepting host connections on `listener` (non-blocking,
    /// bound at `uds_path`), with its sockets in `epoll`.
    pub fn new(
        cid: u64,
        uds_path: PathBuf,
        epoll: Arc<Epoll>,
        listener: UnixListener,
    ) -> std::io::Result<Muxer> {
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            cid,
            uds_path,
            epoll,
            listener,
            listener_polled: true,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            host_pending: HashMap::new(),
            rxq: VecDeque::new(),
            rst_backlog: 0,
            local_ports: HashMap::new(),
            last_local_port: LOCAL_PORT_MIN - 1,
            next_token: LISTENER_TOKEN + 1,
            expiry_armed: false,
        })
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Whether something waits for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Whether TX processing must wait for RX buffers (too many RSTs queued).
    pub fn rx_backlog_full(&self) -> bool {
        self.rst_backlog >= MAX_RST_BACKLOG
    }

    /// Whether a connection's kill timer was armed since the last call.
    pub fn take_expiry_armed(&mut self) -> bool {
        std::mem::take(&mut self.expiry_armed)
    }

    /// How long the host thread may sleep before a kill timer fires (-1: no timer).
    pub fn next_timeout_ms(&self, now: Instant) -> i32 {
        self.conns
            .values()
            .filter_map(Conn::expiry)
            .min()
            .map_or(-1, |t| {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            })
    }

    /// Resets the connections whose kill timer fired.
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expiry().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            tracing::debug!(?key, "vsock: connection timed out");
            self.with_conn(key, Conn::kill);
        }
    }

    /// Runs `f` on a connection, then keeps the RX queue, the kill timers and epoll in step.
    fn with_conn<R>(&mut self, key: Key, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let conn = self.conns.get_mut(&key)?;
        let expiry = conn.expiry();
        let r = f(conn);
        conn.settle();
        if conn.expiry().is_some() && conn.expiry() != expiry {
            self.expiry_armed = true;
        }
        let want = conn.wanted_events();
        if want != conn.polled {
            let fd = conn.fd();
            let ok = match (conn.polled, want) {
                (None, Some(ev)) => ctl(&self.epoll, ControlOperation::Add, fd, ev, conn.token),
                (Some(_), Some(ev)) => {
                    ctl(&self.epoll, ControlOperation::Modify, fd, ev, conn.token)
                }
                (Some(_), None) => ctl(
                    &self.epoll,
                    ControlOperation::Delete,
                    fd,
                    EventSet::empty(),
                    0,
                ),
                (None, None) => true,
            };
            if ok {
                conn.polled = want;
            } else if want.is_some() {
                // a socket that cannot be watched is reset
                conn.kill();
                if conn.polled.is_some() {
                    ctl(
                        &self.epoll,
                        ControlOperation::Delete,
                        fd,
                        EventSet::empty(),
                        0,
                    );
                    conn.polled = None;
                }
            }
        }
        if !conn.in_rxq && conn.has_pending_rx() {
            conn.in_rxq = true;
            self.rxq.push_back(Rx::Conn(key));
        }
        Some(r)
    }

    fn add_conn(&mut self, key: Key, conn: Conn) {
        self.tokens.insert(conn.token, key);
        self.conns.insert(key, conn);
        self.with_conn(key, |_| ());
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.polled.is_some() {
                ctl(
                    &self.epoll,
                    ControlOperation::Delete,
                    conn.fd(),
                    EventSet::empty(),
                    0,
                );
            }
            self.tokens.remove(&conn.token);
            if self.local_ports.get(&key.local_port) == Some(&key) {
                self.local_ports.remove(&key.local_port);
            }
            self.resume_listener();
        }
    }

    fn enq_rst(&mut self, key: Key) {
        if self.rst_backlog < MAX_RST_BACKLOG {
            self.rst_backlog += 1;
            self.rxq.push_back(Rx::Rst(key));
        }
    }

    /// The next packet for the guest, its data in `buf` (the room of the RX buffer).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        for _ in 0..self.rxq.len() {
            match self.rxq.pop_front()? {
                Rx::Rst(key) => {
                    self.rst_backlog = self.rst_backlog.saturating_sub(1);
                    let h = Header {
                        src_cid: HOST_CID,
                        dst_cid: self.cid,
                        src_port: key.local_port,
                        dst_port: key.peer_port,
                        type_: TYPE_STREAM,
                        op: op::RST,
                        ..Header::default()
                    };
                    return Some((h, 0));
                }
                Rx::Conn(key) => {
                    match self.conns.get_mut(&key) {
                        Some(c) if c.in_rxq => c.in_rxq = false,
                        _ => continue,
                    }
                    // a connection with more to say goes to the back of the queue
                    if let Some((h, n)) = self.with_conn(key, |c| c.recv_pkt(buf)).flatten() {
                        if h.op == op::RST {
                            self.remove_conn(key);
                        }
                        return Some((h, n));
                    }
                }
            }
        }
        None
    }

    /// A packet from the guest.
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                ?hdr,
                "vsock: dropping a packet not from the guest to the host"
            );
            return;
        }
        let key = Key {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.enq_rst(key);
            }
            return;
        }
        if !self.conns.contains_key(&key) {
            match hdr.op {
                op::REQUEST => self.peer_request(hdr, key),
                op::RST => {}
                _ => self.enq_rst(key),
            }
            return;
        }
        if hdr.op == op::RST {
            self.remove_conn(key);
            return;
        }
        self.with_conn(key, |c| c.send_pkt(hdr, data));
    }

    /// A guest packet whose data could not be read (too long, or past its buffers).
    pub fn bad_pkt(&mut self, hdr: &Header) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.op == op::RST {
            return;
        }
        let key = Key {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.with_conn(key, Conn::kill);
        } else {
            self.enq_rst(key);
        }
    }

    /// The guest connects to host port `hdr.dst_port`: `<uds_path>_<port>`.
    fn peer_request(&mut self, hdr: &Header, key: Key) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: connection limit reached, refusing a guest connection");
            self.enq_rst(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(&path) {
            Ok(s) => {
                let token = self.token();
                self.add_conn(key, Conn::new_peer_init(s, hdr, token));
            }
            Err(e) => {
                tracing::debug!(error = %e, port = hdr.dst_port, "vsock: no host listener");
                self.enq_rst(key);
            }
        }
    }

    /// An epoll event (not the wake-up eventfd).
    pub fn handle_event(&mut self, token: u64, ev: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_host();
        } else if let Some(key) = self.tokens.get(&token).copied() {
            self.with_conn(key, |c| c.notify(ev));
        } else if self.host_pending.contains_key(&token) {
            self.read_connect(token);
        }
    }

    fn pause_listener(&mut self) {
        if self.listener_polled {
            self.listener_polled = !ctl(
                &self.epoll,
                ControlOperation::Delete,
                self.listener.as_raw_fd(),
                EventSet::empty(),
                0,
            );
        }
    }

    fn resume_listener(&mut self) {
        if !self.listener_polled {
            self.listener_polled = ctl(
                &self.epoll,
                ControlOperation::Add,
                self.listener.as_raw_fd(),
                EventSet::IN,
                LISTENER_TOKEN,
            );
        }
    }

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.host_pending.len() >= MAX_HOST_PENDING
                        || self.conns.len() >= MAX_CONNECTIONS
                    {
                        tracing::warn!(
                            "vsock: connection limit reached, refusing a host connection"
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    if ctl(
                        &self.epoll,
                        ControlOperation::Add,
                        stream.as_raw_fd(),
                        EventSet::IN,
                        token,
                    ) {
                        let line = Vec::with_capacity(MAX_CONNECT_LINE);
                        self.host_pending
                            .insert(token, HostPending { stream, line });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // e.g. out of fds: stop watching the listener until a socket goes away
                    tracing::warn!(error = %e, "vsock: accept failed");
                    self.pause_listener();
                    break;
                }
            }
        }
    }

    /// Reads (a byte at a time, so no data after it is taken) a host socket's `CONNECT` line.
    fn read_connect(&mut self, token: u64) {
        let Some(p) = self.host_pending.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match p.stream.read(&mut b) {
                Ok(0) => break None,
                Ok(_) if b[0] == b'\n' => break parse_connect(&p.line),
                Ok(_) => {
                    p.line.push(b[0]);
                    if p.line.len() > MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(p) = self.host_pending.remove(&token) else {
            return;
        };
        ctl(
            &self.epoll,
            ControlOperation::Delete,
            p.stream.as_raw_fd(),
            EventSet::empty(),
            0,
        );
        self.resume_listener();
        match port {
            Some(port) => self.host_connect(p.stream, port),
            None => tracing::debug!("vsock: bad or missing CONNECT line from a host socket"),
        }
    }

    /// A host socket asked for guest port `peer_port`: send the guest an OP_REQUEST.
    fn host_connect(&mut self, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        // at most 2 * MAX_CONNECTIONS ports can be taken
        for _ in 0..=2 * MAX_CONNECTIONS {
            let next = self.last_local_port.wrapping_add(1);
            self.last_local_port = if (LOCAL_PORT_MIN..LOCAL_PORT_END).contains(&next) {
                next
            } else {
                LOCAL_PORT_MIN
            };
            let key = Key {
                local_port: self.last_local_port,
                peer_port,
            };
            if !self.local_ports.contains_key(&key.local_port) && !self.conns.contains_key(&key) {
                let token = self.token();
                self.local_ports.insert(key.local_port, key);
                let conn = Conn::new_local_init(stream, self.cid, key.local_port, peer_port, token);
                self.add_conn(key, conn);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"HELLO 52"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }
}
