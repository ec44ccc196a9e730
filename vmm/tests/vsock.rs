//! The virtio-vsock device driven through its queues the way a guest driver would (no KVM):
//! split virtqueues laid out in a `GuestMemoryMmap` (in the style of virtio-queue's
//! `MockSplitQueue`, whose used-ring placement overlaps the avail ring past half the queue),
//! packets written into TX chains, RX buffers posted and read back from the used ring, against
//! real host unix sockets on both ends of Firecracker's scheme.

#![allow(clippy::unwrap_used)] // test helpers, not #[test] functions

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use unicri_vmm::virtio::vsock::packet::{
    HDR_SIZE, HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op,
};
use unicri_vmm::virtio::vsock::{MAX_CONNECTIONS, MAX_PKT_DATA, TX_BUF_SIZE, Vsock};
use unicri_vmm::virtio::{
    ActivateError, INT_VRING, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
/// A Linux-sized RX buffer: header + 4 KiB.
const RX_BUF: u32 = HDR_SIZE as u32 + 4096;
const RX_SLOT: u64 = 0x2000;
const RX_BASE: u64 = 0x10_0000;
const TX_SLOT: u64 = 0x1_1000;
const TX_SLOTS: u16 = 16;
const TX_BASE: u64 = 0x40_0000;
const MEM_SIZE: usize = 8 << 20;
const WAIT: Duration = Duration::from_secs(5);
const GUEST_PORT: u32 = 5555;

/// One split virtqueue, driver side.
struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    used_seen: u16,
}

impl Vq {
    fn new(base: u64, size: u16) -> Vq {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Vq {
            size,
            desc: base,
            avail,
            used,
            next_avail: 0,
            used_seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u32,
        next: u16,
    ) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
        mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
            .unwrap();
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        let i: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        fence(Ordering::SeqCst);
        i
    }

    /// The next used element (descriptor id, length), if the device returned one.
    fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        Some((id, len))
    }
}

/// The guest: memory, its three queues, the device.
struct Guest {
    mem: GuestMemoryMmap,
    rx: Vq,
    tx: Vq,
    _ev: Vq,
    cid: u64,
    /// Whether a consumed RX buffer is posted again (as Linux does).
    refill: bool,
    dev: Vsock,
    irq: Arc<Interrupt>,
    _dir: tempfile::TempDir,
    uds: PathBuf,
}

fn hdr(cid: u64, op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

impl Guest {
    /// A device for `cid`, activated, with `rx_bufs` RX buffers posted.
    fn new(cid: u64, rx_bufs: u16) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(cid, uds.clone()).unwrap();
        let mut g = Guest::with_device(dev, cid, dir, uds);
        g.add_rx(rx_bufs);
        g
    }

    fn with_device(mut dev: Vsock, cid: u64, dir: tempfile::TempDir, uds: PathBuf) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, tx, ev) = (
            Vq::new(0, QSIZE),
            Vq::new(0x4000, QSIZE),
            Vq::new(0x8000, QSIZE),
        );
        let irq = Interrupt::detached().unwrap();
        dev.activate(
            mem.clone(),
            vec![rx.queue(), tx.queue(), ev.queue()],
            irq.clone(),
        )
        .unwrap();
        Guest {
            mem,
            rx,
            tx,
            _ev: ev,
            cid,
            refill: true,
            dev,
            irq,
            _dir: dir,
            uds,
        }
    }

    fn port_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.uds.display()))
    }

    /// Posts `n` RX buffers of `RX_BUF` bytes and notifies.
    fn add_rx(&mut self, n: u16) {
        self.add_rx_sized(n, RX_BUF);
    }

    fn add_rx_sized(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let idx = self.rx.next_avail % QSIZE;
            let addr = RX_BASE + u64::from(idx) * RX_SLOT;
            self.rx
                .set_desc(&self.mem, idx, addr, len, VRING_DESC_F_WRITE, 0);
            self.rx.publish(&self.mem, idx);
        }
        self.dev.queue_notify(0);
    }

    /// Puts one TX chain (header descriptor, then data descriptor) and notifies; the device
    /// processes TX synchronously.
    fn send(&mut self, h: Header, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        self.send_raw(&bytes, true);
    }

    /// Puts `bytes` in a TX chain: split after the header if `split`, else one descriptor.
    fn send_raw(&mut self, bytes: &[u8], split: bool) {
        let slot = self.tx.next_avail % TX_SLOTS;
        let addr = TX_BASE + u64::from(slot) * TX_SLOT;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let head = slot * 2;
        if split && bytes.len() > HDR_SIZE {
            self.tx.set_desc(
                &self.mem,
                head,
                addr,
                HDR_SIZE as u32,
                VRING_DESC_F_NEXT,
                head + 1,
            );
            let rest = (bytes.len() - HDR_SIZE) as u32;
            self.tx
                .set_desc(&self.mem, head + 1, addr + HDR_SIZE as u64, rest, 0, 0);
        } else {
            self.tx
                .set_desc(&self.mem, head, addr, bytes.len() as u32, 0, 0);
        }
        self.send_desc(head);
    }

    fn send_desc(&mut self, head: u16) {
        self.tx.publish(&self.mem, head);
        self.dev.queue_notify(1);
        assert_eq!(
            self.tx.used_idx(&self.mem),
            self.tx.next_avail,
            "TX chains are used synchronously"
        );
        while self.tx.pop_used(&self.mem).is_some() {}
    }

    /// The next RX used element, raw: (descriptor id, length).
    fn try_recv_raw(&mut self) -> Option<(u32, u32)> {
        self.rx.pop_used(&self.mem)
    }

    /// The next packet for the guest, if any; its buffer is posted again.
    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let (id, len) = self.try_recv_raw()?;
        assert!(len as usize >= HDR_SIZE, "RX packet of {len} bytes");
        let mut b = vec![0u8; len as usize];
        let addr = RX_BASE + u64::from(id) * RX_SLOT;
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        let mut hb = [0u8; HDR_SIZE];
        hb.copy_from_slice(&b[..HDR_SIZE]);
        let h = Header::from_bytes(&hb);
        assert_eq!(h.len as usize, b.len() - HDR_SIZE, "{h:?}");
        assert_eq!(h.type_, TYPE_STREAM, "{h:?}");
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, self.cid), "{h:?}");
        if self.refill {
            self.add_rx(1);
        }
        Some((h, b.split_off(HDR_SIZE)))
    }

    /// Waits (up to 5 s) for the next packet.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no RX packet within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn recv_op(&mut self, op: u16) -> (Header, Vec<u8>) {
        let p = self.recv();
        assert_eq!(p.0.op, op, "unexpected packet {p:?}");
        p
    }

    /// Asserts nothing arrives for a little while (nothing is expected, so no timing matters).
    fn expect_quiet(&mut self) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(p) = self.try_recv() {
            panic!("unexpected packet {p:?}");
        }
    }

    /// Connects guest port `GUEST_PORT` to host `port` (where `l` listens); the host end.
    fn connect_to_host(&mut self, l: &UnixListener, port: u32) -> UnixStream {
        self.send(hdr(self.cid, op::REQUEST, GUEST_PORT, port), &[]);
        let s = accept(l);
        let (h, _) = self.recv_op(op::RESPONSE);
        assert_eq!((h.src_port, h.dst_port), (port, GUEST_PORT));
        assert_eq!(h.buf_alloc, TX_BUF_SIZE);
        s
    }
}

/// Accepts (the device connects synchronously in the TX notification, so this does not wait).
fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let (s, _) = l
        .accept()
        .expect("the device connected to the host listener");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).unwrap();
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

fn assert_eof(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

fn host_connect(uds: &Path, line: &[u8]) -> UnixStream {
    let mut h = UnixStream::connect(uds).unwrap();
    h.set_read_timeout(Some(WAIT)).unwrap();
    h.write_all(line).unwrap();
    h
}

fn thread_running(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let p = t.unwrap().path().join("comm");
        std::fs::read_to_string(p).is_ok_and(|c| c.trim_end() == name)
    })
}

/// Waits (up to 5 s) for a joined thread to leave /proc.
fn thread_gone(name: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while thread_running(name) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// CPU ticks (user + system) used so far by this process's thread called `name`.
fn thread_ticks(name: &str) -> u64 {
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == name) {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after_comm.split_whitespace().collect();
            // fields 14 and 15 of stat, counted from field 3 here
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread {name}");
}

#[test]
fn device_identity_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut dev = Vsock::new(0x1000_0000, uds.clone()).unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);
    let mut b = [0xffu8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1000_0000);
    let mut b = [0xffu8; 4];
    dev.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    dev.read_config(8, &mut b);
    assert_eq!(b, [0; 4]);
    assert!(uds.exists());

    // the path is taken; reserved CIDs
    assert!(Vsock::new(3, uds.clone()).is_err());
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(Vsock::new(cid, dir.path().join(format!("c{cid}"))).is_err());
    }

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let two = vec![Vq::new(0, 16).queue(), Vq::new(0x1000, 16).queue()];
    let r = dev.activate(mem, two, Interrupt::detached().unwrap());
    assert!(matches!(r, Err(ActivateError::BadQueues(_))), "{r:?}");
    dev.queue_notify(1); // not active: ignored
    assert!(dev.reset());
    drop(dev);
    assert!(
        !uds.exists(),
        "the listener's socket file is removed on drop"
    );
}

#[test]
fn guest_to_host_echo_and_half_close() {
    let mut g = Guest::new(10, 32);
    let l = UnixListener::bind(g.port_path(1234)).unwrap();
    let mut s = g.connect_to_host(&l, 1234);
    assert_ne!(g.irq.status.load(Ordering::Acquire) & INT_VRING, 0);

    g.send(hdr(10, op::RW, GUEST_PORT, 1234), b"ping");
    assert_eq!(read_n(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    let (h, data) = g.recv_op(op::RW);
    assert_eq!((h.src_port, h.dst_port), (1234, GUEST_PORT));
    assert_eq!(data, b"pong");

    // the guest stops sending: the host sees EOF but can still talk
    let mut sd = hdr(10, op::SHUTDOWN, GUEST_PORT, 1234);
    sd.flags = SHUTDOWN_SEND;
    g.send(sd, &[]);
    assert_eof(&mut s);
    s.write_all(b"late").unwrap();
    assert_eq!(g.recv_op(op::RW).1, b"late");

    // then the host closes: SHUTDOWN (both), and the connection is done: RST
    drop(s);
    let (h, _) = g.recv_op(op::SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.recv_op(op::RST);
    g.expect_quiet();

    // the same ports connect again
    let mut s = g.connect_to_host(&l, 1234);
    g.send(hdr(10, op::RW, GUEST_PORT, 1234), b"again");
    assert_eq!(read_n(&mut s, 5), b"again");
}

#[test]
fn guest_full_shutdown_resets_and_host_sees_eof() {
    let mut g = Guest::new(11, 32);
    let l = UnixListener::bind(g.port_path(80)).unwrap();
    let mut s = g.connect_to_host(&l, 80);
    g.send(hdr(11, op::RW, GUEST_PORT, 80), b"bye");
    let mut sd = hdr(11, op::SHUTDOWN, GUEST_PORT, 80);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    g.recv_op(op::RST);
    assert_eq!(read_n(&mut s, 3), b"bye");
    assert_eof(&mut s);
    // the connection is gone: its ports now get RST
    g.send(hdr(11, op::RW, GUEST_PORT, 80), b"x");
    g.recv_op(op::RST);
}

#[test]
fn host_close_then_guest_rst() {
    let mut g = Guest::new(12, 32);
    let l = UnixListener::bind(g.port_path(81)).unwrap();
    let mut s = g.connect_to_host(&l, 81);
    s.write_all(b"last words").unwrap();
    drop(s);
    assert_eq!(g.recv_op(op::RW).1, b"last words");
    let (h, _) = g.recv_op(op::SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.send(hdr(12, op::RST, GUEST_PORT, 81), &[]);
    g.expect_quiet();
}

#[test]
fn host_close_unanswered_is_reset_after_a_while() {
    let mut g = Guest::new(13, 32);
    let l = UnixListener::bind(g.port_path(82)).unwrap();
    let s = g.connect_to_host(&l, 82);
    drop(s);
    g.recv_op(op::SHUTDOWN);
    // the guest never answers: the kill timer (2 s) resets the connection
    g.recv_op(op::RST);
}

#[test]
fn host_to_guest_connect_echo_and_close() {
    let mut g = Guest::new(14, 32);
    let mut h = host_connect(&g.uds, b"CONNECT 5000\nearly");
    let (req, _) = g.recv_op(op::REQUEST);
    assert_eq!(req.dst_port, 5000);
    assert!(req.src_port >= 1 << 30, "{req:?}");
    let hp = req.src_port;

    g.send(hdr(14, op::RESPONSE, 5000, hp), &[]);
    assert_eq!(read_line(&mut h), format!("OK {hp}"));
    // what the host wrote after its CONNECT line is data
    assert_eq!(g.recv_op(op::RW).1, b"early");

    h.write_all(b"hello").unwrap();
    let (rw, data) = g.recv_op(op::RW);
    assert_eq!(
        (rw.src_port, rw.dst_port, data.as_slice()),
        (hp, 5000, &b"hello"[..])
    );
    g.send(hdr(14, op::RW, 5000, hp), b"world");
    assert_eq!(read_n(&mut h, 5), b"world");

    // the host stops sending: SHUTDOWN(SEND) only, the guest can still talk
    h.shutdown(std::net::Shutdown::Write).unwrap();
    let (sd, _) = g.recv_op(op::SHUTDOWN);
    assert_eq!(sd.flags, SHUTDOWN_SEND);
    g.send(hdr(14, op::RW, 5000, hp), b"after");
    assert_eq!(read_n(&mut h, 5), b"after");

    // the guest closes: RST, the host sees EOF
    let mut sd = hdr(14, op::SHUTDOWN, 5000, hp);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(sd, &[]);
    g.recv_op(op::RST);
    assert_eof(&mut h);

    // a second host connection gets another port
    let _h2 = host_connect(&g.uds, b"connect 5000\n");
    let (req2, _) = g.recv_op(op::REQUEST);
    assert_eq!(req2.dst_port, 5000);
    assert_ne!(req2.src_port, hp);
}

#[test]
fn host_connects_refused_or_malformed() {
    let mut g = Guest::new(15, 32);
    // the guest refuses
    let mut h = host_connect(&g.uds, b"CONNECT 6000\n");
    let (req, _) = g.recv_op(op::REQUEST);
    g.send(hdr(15, op::RST, 6000, req.src_port), &[]);
    assert_eof(&mut h);

    // bad CONNECT lines are closed without bothering the guest
    for line in [
        &b"HELLO 6000\n"[..],
        b"CONNECT\n",
        b"CONNECT x\n",
        &[b'7'; 40],
    ] {
        let mut h = host_connect(&g.uds, line);
        assert_eof(&mut h);
    }
    // a host that leaves before its line is complete
    drop(host_connect(&g.uds, b"CONN"));
    g.expect_quiet();

    // the guest never answers: the request times out, the host is closed and the guest reset
    let mut h = host_connect(&g.uds, b"CONNECT 6001\n");
    let (req, _) = g.recv_op(op::REQUEST);
    assert_eof(&mut h);
    let (rst, _) = g.recv_op(op::RST);
    assert_eq!((rst.src_port, rst.dst_port), (req.src_port, 6001));
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let mut g = Guest::new(16, 32);
    g.send(hdr(16, op::REQUEST, GUEST_PORT, 4321), &[]);
    let (h, _) = g.recv_op(op::RST);
    assert_eq!((h.src_port, h.dst_port), (4321, GUEST_PORT));
}

#[test]
fn bad_packets_are_reset_or_dropped_never_panic() {
    let mut g = Guest::new(17, 64);
    let cid = 17;
    // packets for no connection
    g.send(hdr(cid, op::RW, 1, 100), b"data");
    g.send(hdr(cid, op::CREDIT_UPDATE, 2, 100), &[]);
    g.send(hdr(cid, 99, 3, 100), &[]);
    let mut seq = hdr(cid, op::REQUEST, 4, 100);
    seq.type_ = 2; // SEQPACKET
    g.send(seq, &[]);
    for port in 1..=4 {
        let (h, _) = g.recv_op(op::RST);
        assert_eq!((h.src_port, h.dst_port), (100, port));
    }
    // no answer to these
    g.send(hdr(cid, op::RST, 5, 100), &[]);
    let mut other = hdr(cid, op::REQUEST, 6, 100);
    other.dst_cid = 7;
    g.send(other, &[]);
    let mut spoofed = hdr(cid, op::REQUEST, 6, 100);
    spoofed.src_cid = 99;
    g.send(spoofed, &[]);
    g.send_raw(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], false);
    // a data length past the chain, and past what the device accepts
    let mut long = hdr(cid, op::RW, 7, 100);
    long.len = 100;
    let mut bytes = long.to_bytes().to_vec();
    bytes.extend_from_slice(b"four");
    g.send_raw(&bytes, true);
    long.len = MAX_PKT_DATA as u32 + 1;
    g.send_raw(&long.to_bytes(), false);
    // a descriptor outside guest memory, and a descriptor loop
    let slot = g.tx.next_avail % TX_SLOTS * 2;
    g.tx.set_desc(&g.mem, slot, MEM_SIZE as u64 + 0x1000, 64, 0, 0);
    g.send_desc(slot);
    let slot = g.tx.next_avail % TX_SLOTS * 2;
    g.tx.set_desc(&g.mem, slot, TX_BASE, 8, VRING_DESC_F_NEXT, slot + 1);
    g.tx.set_desc(&g.mem, slot + 1, TX_BASE, 8, VRING_DESC_F_NEXT, slot);
    g.send_desc(slot);
    // a TX chain with only a device-writable descriptor
    let slot = g.tx.next_avail % TX_SLOTS * 2;
    g.tx.set_desc(&g.mem, slot, TX_BASE, 64, VRING_DESC_F_WRITE, 0);
    g.send_desc(slot);
    for _ in 0..2 {
        let (h, _) = g.recv_op(op::RST);
        assert_eq!((h.src_port, h.dst_port), (100, 7));
    }
    g.expect_quiet();

    // an established connection reset by nonsense: the host sees EOF
    let l = UnixListener::bind(g.port_path(100)).unwrap();
    for bad in [99, op::REQUEST, op::RESPONSE] {
        let mut s = g.connect_to_host(&l, 100);
        g.send(hdr(cid, bad, GUEST_PORT, 100), &[]);
        g.recv_op(op::RST);
        assert_eof(&mut s);
    }

    // an RX buffer too small for a header is returned empty; the next one gets the packet
    let mut g = Guest::new(18, 0);
    g.add_rx_sized(1, 16);
    g.add_rx(4);
    g.send(hdr(18, op::RW, 1, 100), b"x");
    let deadline = Instant::now() + WAIT;
    let first = loop {
        if let Some(u) = g.try_recv_raw() {
            break u;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(first.1, 0);
    g.recv_op(op::RST);
}

#[test]
fn credit_is_honoured_both_ways() {
    let mut g = Guest::new(19, 32);
    let cid = 19;
    let l = UnixListener::bind(g.port_path(90)).unwrap();
    let mut req = hdr(cid, op::REQUEST, GUEST_PORT, 90);
    req.buf_alloc = 8;
    g.send(req, &[]);
    let mut s = accept(&l);
    g.recv_op(op::RESPONSE);

    s.write_all(b"abcdefghijklmnopqrst").unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    for expect in [&b"abcdefgh"[..], b"ijklmnop"] {
        // no more than the credit (8 - (rx_cnt - fwd_cnt)) before the device asks for more
        loop {
            let (h, data) = g.recv();
            if h.op == op::CREDIT_REQUEST {
                break;
            }
            assert_eq!(h.op, op::RW, "{h:?}");
            got.extend_from_slice(&data);
            assert!(got.len() as u32 - fwd <= 8, "credit overrun: {got:?}");
        }
        assert_eq!(&got[fwd as usize..], expect);
        fwd = got.len() as u32;
        let mut cu = hdr(cid, op::CREDIT_UPDATE, GUEST_PORT, 90);
        cu.buf_alloc = 8;
        cu.fwd_cnt = fwd;
        g.send(cu, &[]);
    }
    let (h, data) = g.recv_op(op::RW);
    assert_eq!(data, b"qrst");
    assert_eq!(h.len, 4);
    g.expect_quiet();

    // the device's own credit: fwd_cnt counts what reached the host socket
    let mut rw = hdr(cid, op::RW, GUEST_PORT, 90);
    rw.buf_alloc = 8;
    rw.fwd_cnt = 20;
    g.send(rw, b"0123456789");
    assert_eq!(read_n(&mut s, 10), b"0123456789");
    let mut cr = hdr(cid, op::CREDIT_REQUEST, GUEST_PORT, 90);
    cr.buf_alloc = 8;
    cr.fwd_cnt = 20;
    g.send(cr, &[]);
    let (h, _) = g.recv_op(op::CREDIT_UPDATE);
    assert_eq!((h.buf_alloc, h.fwd_cnt), (TX_BUF_SIZE, 10));
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut g = Guest::new(20, 32);
    let l = UnixListener::bind(g.port_path(91)).unwrap();
    let _s = g.connect_to_host(&l, 91); // never reads
    let chunk = vec![0x5a; MAX_PKT_DATA];
    for _ in 0..128 {
        g.send(hdr(20, op::RW, GUEST_PORT, 91), &chunk);
        while let Some((h, _)) = g.try_recv() {
            if h.op == op::RST {
                return;
            }
            assert_eq!(h.op, op::CREDIT_UPDATE, "{h:?}");
        }
    }
    panic!("8 MiB past a 64 KiB credit and no RST");
}

#[test]
fn no_rx_buffers_no_busy_loop() {
    let mut g = Guest::new(4242, 1);
    g.refill = false;
    let l = UnixListener::bind(g.port_path(92)).unwrap();
    let mut s = g.connect_to_host(&l, 92); // takes the only RX buffer
    s.write_all(&[7u8; 10_000]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_ticks("vsock-4242");
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_ticks("vsock-4242") - before;
    // a thread spinning on the readable socket would use ~50 ticks (at 100 Hz) here
    assert!(
        spent <= 10,
        "the host thread used {spent} ticks waiting for RX buffers"
    );

    g.refill = true;
    g.add_rx(8);
    let mut got = 0;
    while got < 10_000 {
        let (h, data) = g.recv_op(op::RW);
        assert_eq!(h.len as usize, data.len());
        assert!(data.iter().all(|&b| b == 7));
        got += data.len();
    }
    assert_eq!(got, 10_000);
}

#[test]
fn reset_closes_everything_and_the_device_activates_again() {
    let mut g = Guest::new(4243, 32);
    let l = UnixListener::bind(g.port_path(93)).unwrap();
    let mut s = g.connect_to_host(&l, 93);
    let mut h = host_connect(&g.uds, b"CONNECT 7000\n");
    g.recv_op(op::REQUEST);
    assert!(thread_running("vsock-4243"));

    assert!(g.dev.reset());
    assert!(thread_gone("vsock-4243"), "the host thread is joined");
    assert_eof(&mut s);
    assert_eof(&mut h);

    // a new driver: fresh memory and queues
    let Guest { dev, _dir, uds, .. } = g;
    let mut g = Guest::with_device(dev, 4243, _dir, uds.clone());
    g.add_rx(8);
    let mut s = g.connect_to_host(&l, 93);
    g.send(hdr(4243, op::RW, GUEST_PORT, 93), b"back");
    assert_eq!(read_n(&mut s, 4), b"back");
    let _h = host_connect(&g.uds, b"CONNECT 7000\n");
    g.recv_op(op::REQUEST);

    drop(g);
    assert!(thread_gone("vsock-4243"));
    assert!(!uds.exists());
    assert_eof(&mut s);
}

#[test]
fn connections_past_the_limit_are_refused() {
    let mut g = Guest::new(21, 64);
    let l = UnixListener::bind(g.port_path(94)).unwrap(); // never accepts
    let n = MAX_CONNECTIONS as u32 + 4;
    for port in 0..n {
        g.send(hdr(21, op::REQUEST, 10_000 + port, 94), &[]);
    }
    let (mut responses, mut resets) = (0, 0);
    for _ in 0..n {
        match g.recv().0.op {
            op::RESPONSE => responses += 1,
            op::RST => resets += 1,
            o => panic!("unexpected op {o}"),
        }
    }
    assert_eq!((responses, resets), (MAX_CONNECTIONS, 4));
    drop(l);
}
