//! One vsock stream connection between a guest port and a host unix socket: its state machine,
//! credit-based flow control, the bounded guest → host buffer (after Firecracker's
//! `csm/connection.rs`).
//!
//! Data from the host is not buffered: it is read from the host socket straight into a packet
//! for the guest, when the guest has an RX buffer and credit for it. Data from the guest that
//! the host socket cannot take at once waits in `tx_buf`, at most [`TX_BUF_SIZE`] bytes (the
//! `buf_alloc` the device advertises; a guest overrunning it is reset).
//!
//! Half-close is forwarded both ways: guest SHUTDOWN(SEND) → `shutdown(Write)` on the host socket
//! once `tx_buf` is flushed; EOF from the host → SHUTDOWN(SEND) to the guest, or SHUTDOWN(RCV |
//! SEND) when the host closed its socket entirely (EPOLLHUP). When both directions are done the
//! device resets the connection (OP_RST).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, send};
use vmm_sys_util::epoll::EventSet;

use super::packet::{HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

/// The receive buffer the device advertises to the guest for each connection, and the bound of
/// what it buffers for a host socket that does not read.
pub const TX_BUF_SIZE: u32 = 64 * 1024;
/// When the guest's idea of our free space drops below this, send it a credit update.
const CREDIT_UPDATE_THRESHOLD: u32 = 4 * 1024;
/// How long the guest has to answer a host-initiated connection request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may linger in shutdown before the device resets it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Things to tell the guest (`pending` bits), in the order `recv_pkt` yields them.
mod pending {
    pub const RST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const REQUEST: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const RW: u8 = 16;
    pub const CREDIT_UPDATE: u8 = 32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The host connected; the guest has not answered our OP_REQUEST yet.
    LocalInit,
    /// The guest connected; our OP_RESPONSE has not been delivered yet.
    PeerInit,
    /// Data flows (possibly half-closed, see the shutdown flags).
    Established,
    /// Dead: an OP_RST is due to the guest, then the connection goes.
    Killed,
}

/// A connection.
pub struct Conn {
    /// The host-side port (the guest's destination port, or an ephemeral one ≥ 1<<30).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    peer_cid: u64,
    stream: UnixStream,
    state: State,
    /// Guest data the host socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Bytes of guest data written to the host socket, in total.
    fwd_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes of host data sent to the guest, in total.
    rx_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_to_peer: Wrapping<u32>,
    pending: u8,
    shutdown_flags: u32,
    /// The guest will receive no more.
    peer_shut_rcv: bool,
    /// The guest will send no more.
    peer_shut_send: bool,
    /// The host socket reached EOF (the guest has been or is being told).
    local_eof: bool,
    /// The host socket hung up entirely (EPOLLHUP).
    host_hup: bool,
    /// SHUTDOWN(RCV | SEND) was sent or is pending.
    full_shutdown_sent: bool,
    /// `shutdown(Write)` was done on the host socket.
    stream_wr_shut: bool,
    expiry: Option<Instant>,
    /// Whether the socket is in the muxer's epoll, and for what.
    pub(super) polled: Option<EventSet>,
    /// Its epoll token.
    pub(super) token: u64,
    /// Whether the muxer's RX queue holds an entry for it.
    pub(super) in_rxq: bool,
}

impl Conn {
    fn new(
        stream: UnixStream,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
        token: u64,
    ) -> Conn {
        Conn {
            local_port,
            peer_port,
            peer_cid,
            stream,
            state,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            pending: 0,
            shutdown_flags: 0,
            peer_shut_rcv: false,
            peer_shut_send: false,
            local_eof: false,
            host_hup: false,
            full_shutdown_sent: false,
            stream_wr_shut: false,
            expiry: None,
            polled: None,
            token,
            in_rxq: false,
        }
    }

    /// A connection the guest asked for (its OP_REQUEST `req`), to the connected `stream`.
    pub fn new_peer_init(stream: UnixStream, req: &Header, token: u64) -> Conn {
        let mut c = Conn::new(
            stream,
            req.src_cid,
            req.dst_port,
            req.src_port,
            State::PeerInit,
            token,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending = pending::RESPONSE;
        c
    }

    /// A connection the host asked for (`CONNECT <peer_port>`) from `local_port`.
    pub fn new_local_init(
        stream: UnixStream,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        token: u64,
    ) -> Conn {
        let mut c = Conn::new(
            stream,
            peer_cid,
            local_port,
            peer_port,
            State::LocalInit,
            token,
        );
        c.pending = pending::REQUEST;
        c
    }

    /// The host socket's fd.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether it has something for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// When the device will reset it unless something happens first.
    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    fn take(&mut self, bit: u8) -> bool {
        let had = self.pending & bit != 0;
        self.pending &= !bit;
        had
    }

    /// Whether host data may still flow to the guest.
    fn may_read(&self) -> bool {
        self.state == State::Established && !self.peer_shut_rcv && !self.local_eof
    }

    /// How many bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest's idea of our free space is low and we have freed some since.
    fn peer_needs_credit_update(&self) -> bool {
        let seen_used = (self.fwd_cnt - self.last_fwd_cnt_to_peer).0 as usize + self.tx_buf.len();
        let seen_free = (TX_BUF_SIZE as usize).saturating_sub(seen_used);
        seen_free < CREDIT_UPDATE_THRESHOLD as usize && self.fwd_cnt != self.last_fwd_cnt_to_peer
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Schedules an OP_RST and drops whatever is buffered; the host socket is shut down at once.
    pub fn kill(&mut self) {
        if self.state != State::Killed {
            self.state = State::Killed;
            self.tx_buf = VecDeque::new();
            self.expiry = None;
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        self.pending = pending::RST;
    }

    /// Fills `buf` (the room an RX buffer has for data) with the next packet for the guest:
    /// its header and how many bytes of `buf` are its data; `None` if there is nothing to say
    /// (or only data that does not fit).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let pkt = self.next_pkt(buf);
        if let Some((h, _)) = &pkt {
            // every packet carries our credit
            self.last_fwd_cnt_to_peer = Wrapping(h.fwd_cnt);
            self.pending &= !pending::CREDIT_UPDATE;
        }
        pkt
    }

    fn next_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.take(pending::RST) {
            let mut h = self.header(op::RST);
            h.buf_alloc = 0;
            return Some((h, 0));
        }
        if self.take(pending::RESPONSE) {
            self.state = State::Established;
            return Some((self.header(op::RESPONSE), 0));
        }
        if self.take(pending::REQUEST) {
            self.expiry = Some(Instant::now() + REQUEST_TIMEOUT);
            return Some((self.header(op::REQUEST), 0));
        }
        if self.take(pending::SHUTDOWN) {
            let mut h = self.header(op::SHUTDOWN);
            h.flags = self.shutdown_flags;
            return Some((h, 0));
        }
        if self.pending & pending::RW != 0
            && let Some(pkt) = self.read_host(buf)
        {
            return Some(pkt);
        }
        if self.take(pending::CREDIT_UPDATE) {
            return Some((self.header(op::CREDIT_UPDATE), 0));
        }
        None
    }

    /// The RW indication: host data is (probably) waiting.
    fn read_host(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if !self.may_read() {
            self.pending &= !pending::RW;
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            // the socket is not polled for input again until the guest sends credit
            self.pending &= !pending::RW;
            return Some((self.header(op::CREDIT_REQUEST), 0));
        }
        let max = buf.len().min(credit);
        if max == 0 {
            // an RX buffer with no room for data: keep the indication for a bigger one
            return None;
        }
        loop {
            return match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    self.pending &= !pending::RW;
                    self.local_eof = true;
                    let mut h = self.header(op::SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    if self.host_hup {
                        h.flags |= SHUTDOWN_RCV;
                        self.full_shutdown_sent = true;
                        self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                    }
                    self.check_done();
                    Some((h, 0))
                }
                Ok(n) => {
                    // more may follow: RW stays until the socket would block
                    let mut h = self.header(op::RW);
                    h.len = n as u32;
                    self.rx_cnt += Wrapping(n as u32);
                    Some((h, n))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.pending &= !pending::RW;
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, port = self.local_port, "vsock: host socket read failed");
                    self.kill();
                    self.take(pending::RST);
                    let mut h = self.header(op::RST);
                    h.buf_alloc = 0;
                    Some((h, 0))
                }
            };
        }
    }

    /// A packet from the guest for this connection (not OP_RST, which the muxer handles).
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if self.state == State::Killed {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (hdr.op, self.state) {
            (op::RW, State::Established) if !self.peer_shut_send => {
                if data.is_empty() {
                    return;
                }
                if let Err(e) = self.send_bytes(data) {
                    tracing::debug!(error = %e, port = self.local_port, "vsock: host socket write failed");
                    self.kill();
                    return;
                }
                if self.peer_needs_credit_update() {
                    self.pending |= pending::CREDIT_UPDATE;
                }
            }
            (op::RESPONSE, State::LocalInit) => {
                self.state = State::Established;
                self.expiry = None;
                let msg = format!("OK {}\n", self.local_port);
                match self.write_stream(msg.as_bytes()) {
                    Ok(n) if n == msg.len() => {}
                    _ => self.kill(),
                }
            }
            (op::SHUTDOWN, State::Established) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv {
                    self.pending &= !pending::RW;
                }
                self.after_tx_progress();
                if self.peer_shut_rcv && self.peer_shut_send && self.state != State::Killed {
                    // waiting for the host to drain tx_buf, but not forever
                    self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                }
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, s) => {
                if s == State::Established {
                    self.pending |= pending::CREDIT_UPDATE;
                }
            }
            (o, s) => {
                tracing::debug!(op = o, state = ?s, port = self.local_port, "vsock: unexpected packet, resetting");
                self.kill();
            }
        }
    }

    /// An epoll event on the host socket.
    pub fn notify(&mut self, ev: EventSet) {
        if self.state == State::Killed {
            return;
        }
        if ev.contains(EventSet::ERROR) {
            self.kill();
            return;
        }
        if ev.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            if !self.tx_buf.is_empty() {
                // the host will never read it
                self.kill();
                return;
            }
        }
        if ev.contains(EventSet::IN) && self.may_read() {
            self.pending |= pending::RW;
        }
        if ev.contains(EventSet::OUT) && !self.tx_buf.is_empty() {
            if let Err(e) = self.flush() {
                tracing::debug!(error = %e, port = self.local_port, "vsock: host socket write failed");
                self.kill();
                return;
            }
            self.after_tx_progress();
            if self.peer_needs_credit_update() {
                self.pending |= pending::CREDIT_UPDATE;
            }
        }
    }

    /// Housekeeping after any change: a host that hung up gets its remaining data drained
    /// without epoll (reads no longer block), then the guest is told.
    pub fn settle(&mut self) {
        if !self.host_hup || self.state != State::Established {
            return;
        }
        if self.may_read() {
            if self.peer_credit() > 0 {
                self.pending |= pending::RW;
            }
        } else if !self.full_shutdown_sent {
            self.full_shutdown_sent = true;
            self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
            self.pending |= pending::SHUTDOWN;
            self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
        }
    }

    /// What the socket should be polled for; `None`: not at all (a hung-up or dead socket).
    /// An empty set still reports EPOLLHUP / EPOLLERR.
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.state == State::Killed || self.host_hup {
            return None;
        }
        let mut ev = EventSet::empty();
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        // Not while an RW indication waits for an RX buffer: level-triggered input would spin.
        if self.may_read() && self.peer_credit() > 0 && self.pending & pending::RW == 0 {
            ev |= EventSet::IN;
        }
        Some(ev)
    }

    /// The guest's half-close reaches the host once its data has; both directions done → RST.
    fn after_tx_progress(&mut self) {
        if self.peer_shut_send && self.tx_buf.is_empty() && !self.stream_wr_shut {
            self.stream_wr_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.state == State::Established
            && self.peer_shut_send
            && self.tx_buf.is_empty()
            && (self.peer_shut_rcv || self.local_eof)
        {
            self.kill();
        }
    }

    fn write_stream(&mut self, data: &[u8]) -> std::io::Result<usize> {
        write_nosignal(&self.stream, data)
    }

    /// Guest data for the host: written at once if possible, else buffered (bounded).
    fn send_bytes(&mut self, data: &[u8]) -> std::io::Result<()> {
        let written = if self.tx_buf.is_empty() {
            self.write_stream(data)?
        } else {
            0
        };
        self.fwd_cnt += Wrapping(written as u32);
        let rest = &data[written..];
        if self.tx_buf.len() + rest.len() > TX_BUF_SIZE as usize {
            return Err(std::io::Error::other("the guest overran its credit"));
        }
        self.tx_buf.extend(rest);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_nosignal(&self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        if self.tx_buf.is_empty() {
            self.tx_buf.shrink_to(4096);
        }
        Ok(())
    }
}

/// Writes to a host socket without blocking and without SIGPIPE; `Ok(0)` if it is full.
fn write_nosignal(stream: &UnixStream, data: &[u8]) -> std::io::Result<usize> {
    loop {
        match send(
            stream.as_raw_fd(),
            data,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}
