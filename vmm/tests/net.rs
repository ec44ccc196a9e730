//! virtio-net on a real tap device: frames from "guest" TX chains reach the host (an
//! `AF_PACKET` socket bound to the tap), frames sent on the tap reach "guest" RX chains (also
//! when the guest posts its buffers late), config space, malformed chains, and the RX thread's
//! end on reset and drop. The queues are virtio-queue's `MockSplitQueue`s in a
//! `GuestMemoryMmap`.
//!
//! Needs root and `/dev/net/tun` (and `ip`); skips loudly otherwise. Every tap is named
//! `u<pid>_<n>`, made here and gone at the end (a tap dies with its last descriptor; a guard
//! deletes it anyway).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use unicri_vmm::virtio::net::{MAX_BUFFER_SIZE, Net, NetMetrics, Tap, VNET_HDR_LEN};
use unicri_vmm::virtio::{INT_VRING, Interrupt, VirtioDevice, device_type};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MAC: [u8; 6] = [0x02, 0x75, 0x6e, 0x69, 0x63, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0x75, 0x6e, 0x69, 0x63, 0x02];
/// IEEE 802 local experimental ethertype: nothing on the host answers or sends it.
const ETHERTYPE: u16 = 0x88b5;
const WAIT: Duration = Duration::from_secs(5);

const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x40_0000;
const MEM_SIZE: usize = 0x100_0000;

/// AF_PACKET sockets: the host's side of the tap.
#[allow(unsafe_code)]
mod packet {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A raw packet socket bound to one interface, all protocols.
    pub struct PacketSocket(OwnedFd);

    fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    impl PacketSocket {
        pub fn bind(ifname: &str) -> io::Result<PacketSocket> {
            let cname = CString::new(ifname).map_err(io::Error::other)?;
            // SAFETY: `cname` is a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the descriptor is owned right below.
            let fd = check(unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::c_int::from(proto),
                )
            })?;
            // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
            let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
            // SAFETY: `sockaddr_ll` is plain old data; all-zero bytes are a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            // SAFETY: `addr` is a valid `sockaddr_ll` of the given length, alive for the call.
            check(unsafe {
                libc::bind(
                    sock.0.as_raw_fd(),
                    (&raw const addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            })?;
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            // SAFETY: SO_RCVTIMEO reads a `timeval` of the given length, alive for the call.
            check(unsafe {
                libc::setsockopt(
                    sock.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast::<libc::c_void>(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
            Ok(sock)
        }

        /// Sends one frame out of the interface.
        pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
            // SAFETY: the pointer and length describe `frame`, alive for the call.
            let n = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    frame.as_ptr().cast::<libc::c_void>(),
                    frame.len(),
                    0,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        }

        /// Receives one frame; `WouldBlock` after 200 ms without one.
        pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            // SAFETY: the pointer and length describe `buf`, alive and writable for the call.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    0,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        }
    }
}

use packet::PacketSocket;

/// Whether taps can be made here; prints why not.
fn can_tap() -> bool {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED: no /dev/net/tun");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: no `ip` command");
        return false;
    }
    true
}

fn next_tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "u{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn tap_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes the tap at the end if it is still there.
struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        if tap_exists(&self.0) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
}

/// A fresh tap, up, IPv6 off (so the host sends nothing on its own); `None` (skip) if taps
/// cannot be made here.
fn new_tap() -> Option<(Tap, TapGuard)> {
    if !can_tap() {
        return None;
    }
    let name = next_tap_name();
    let tap = match Tap::open(&name) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: cannot create tap {name}: {e}");
            return None;
        }
    };
    let guard = TapGuard(name.clone());
    assert_eq!(tap.name(), name);
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let ok = Command::new("ip")
        .args(["link", "set", &name, "up"])
        .status()
        .expect("ip link set up")
        .success();
    assert!(ok, "ip link set {name} up failed");
    Some((tap, guard))
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// An Ethernet frame of `len` bytes carrying `tag`.
fn frame(dst: [u8; 6], src: [u8; 6], tag: &[u8], len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(tag);
    f.resize(len.max(f.len()), 0xa5);
    f
}

/// Puts a chain of `(addr, len, device-writable)` buffers at descriptor `first` and makes it
/// available.
fn add_chain(q: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, bufs: &[(u64, u32, bool)]) {
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, (addr, len, write))| {
            let mut flags = if *write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            RawDescriptor::from(SplitDescriptor::new(
                *addr,
                *len,
                flags as u16,
                first + i as u16 + 1,
            ))
        })
        .collect();
    q.add_desc_chains(&descs, first).expect("add chain");
}

/// The used ring's entries so far: (descriptor head, length).
fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let e = q.used().ring().ref_at(usize::from(i)).expect("used").load();
            (e.id(), e.len())
        })
        .collect()
}

/// Polls `cond` for up to 5 s.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A thread's user + system CPU time in clock ticks.
fn cpu_ticks(tid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Guest<'a> {
        Guest {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), 256),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), 256),
            interrupt: Interrupt::detached().expect("interrupt"),
        }
    }

    fn activate(&self, net: &mut Net) {
        let queues: Vec<Queue> = vec![
            self.rx.create_queue().expect("rx queue"),
            self.tx.create_queue().expect("tx queue"),
        ];
        net.activate(self.mem.clone(), queues, self.interrupt.clone())
            .expect("activate");
    }

    /// Posts RX chain `i`: a 12-byte header buffer and a 2 KiB buffer.
    fn post_rx(&self, i: u16) {
        let base = RX_BUFS + u64::from(i) * 0x1000;
        add_chain(
            &self.rx,
            i * 2,
            &[
                (base, VNET_HDR_LEN as u32, true),
                (base + 0x100, 2048, true),
            ],
        );
    }

    /// The bytes RX chain `i` (as posted by `post_rx`) received, `len` of them.
    fn rx_bytes(&self, i: u16, len: usize) -> Vec<u8> {
        let base = RX_BUFS + u64::from(i) * 0x1000;
        let mut out = vec![0u8; VNET_HDR_LEN];
        self.mem
            .read_slice(&mut out, GuestAddress(base))
            .expect("read header");
        let mut body = vec![0u8; len.saturating_sub(VNET_HDR_LEN)];
        self.mem
            .read_slice(&mut body, GuestAddress(base + 0x100))
            .expect("read body");
        out.extend_from_slice(&body);
        out
    }

    fn vring_raised(&self) -> bool {
        self.interrupt.status.load(Ordering::Acquire) & INT_VRING != 0
            && self.interrupt.irqfd.read().is_ok_and(|n| n > 0)
    }

    /// Waits for an RX chain holding `f` (with a header of zeros and num_buffers 1, used
    /// length right); its used-ring position.
    fn wait_rx_frame(&self, f: &[u8]) -> Option<usize> {
        let mut found = None;
        wait_for(|| {
            for (pos, (id, len)) in used(&self.rx).into_iter().enumerate() {
                let chain = (id / 2) as u16;
                if len as usize == VNET_HDR_LEN + f.len() {
                    let got = self.rx_bytes(chain, len as usize);
                    if &got[VNET_HDR_LEN..] == f {
                        let mut hdr = [0u8; VNET_HDR_LEN];
                        hdr[10] = 1;
                        assert_eq!(got[..VNET_HDR_LEN], hdr, "RX vnet header");
                        found = Some(pos);
                        return true;
                    }
                }
            }
            false
        });
        found
    }
}

/// Receives on `sock` until `f` arrives (other frames are skipped) or 5 s pass.
fn wait_host_frame(sock: &PacketSocket, f: &[u8]) -> bool {
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while start.elapsed() < WAIT {
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == *f => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("packet socket: {e}"),
        }
    }
    false
}

#[test]
fn config_space_and_features() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let net = Net::new(tap, MAC, Some(1400));
    assert_eq!(net.device_type(), device_type::NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.avail_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0, "MAC");
    assert_ne!(f & (1 << VIRTIO_NET_F_MTU), 0, "MTU");
    let offloads = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 11) | (1 << 15);
    assert_eq!(
        f & offloads,
        0,
        "no offloads (CSUM, GUEST_CSUM, TSO, HOST_TSO, MRG_RXBUF)"
    );

    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1400);
    let mut pairs = [0u8; 2];
    net.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 1);
    let mut past = [0xffu8; 4];
    net.read_config(64, &mut past);
    assert_eq!(past, [0; 4]);
    // byte-wise reads, as a driver does for the MAC
    let mut b = [0u8; 1];
    net.read_config(5, &mut b);
    assert_eq!(b[0], MAC[5]);
    drop(net);

    let Some((tap, _guard2)) = new_tap() else {
        return;
    };
    let net = Net::new(tap, MAC, None);
    assert_eq!(net.avail_features() & (1 << VIRTIO_NET_F_MTU), 0);
    drop(net);

    let Some((tap, _guard3)) = new_tap() else {
        return;
    };
    let net = Net::new(tap, MAC, Some(20));
    assert_eq!(
        net.avail_features() & (1 << VIRTIO_NET_F_MTU),
        0,
        "an MTU below 68 is not offered"
    );
}

#[test]
fn tap_from_fd() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let dup = tap.as_fd().try_clone_to_owned().expect("dup");
    let again = Tap::from_fd(dup).expect("from_fd on a tap");
    assert_eq!(again.name(), tap.name());

    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    assert!(Tap::from_fd(null.into()).is_err(), "not a tap");
    assert!(Tap::open("").is_err());
    assert!(Tap::open("name-much-too-long-for-ifnamsiz").is_err());
}

#[test]
fn tap_frames_out() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(&name).expect("packet socket");
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, Some(1500));
    guest.activate(&mut net);

    // chain 0: header and frame in two descriptors; chain 1: one descriptor
    let f0 = frame(HOST_MAC, MAC, b"out-0", 60);
    let f1 = frame(HOST_MAC, MAC, b"out-1", 1514);
    let hdr = [0u8; VNET_HDR_LEN];
    mem.write_slice(&hdr, GuestAddress(TX_BUFS)).expect("w");
    mem.write_slice(&f0, GuestAddress(TX_BUFS + 0x100))
        .expect("w");
    add_chain(
        &guest.tx,
        0,
        &[
            (TX_BUFS, VNET_HDR_LEN as u32, false),
            (TX_BUFS + 0x100, f0.len() as u32, false),
        ],
    );
    // garbage in the header (offload requests never negotiated) goes out zeroed
    let mut buf1 = vec![0xffu8; VNET_HDR_LEN];
    buf1.extend_from_slice(&f1);
    mem.write_slice(&buf1, GuestAddress(TX_BUFS + 0x1000))
        .expect("w");
    add_chain(
        &guest.tx,
        2,
        &[(TX_BUFS + 0x1000, buf1.len() as u32, false)],
    );
    net.queue_notify(1);

    assert!(wait_host_frame(&sock, &f0), "first frame on the host");
    assert!(wait_host_frame(&sock, &f1), "second frame on the host");
    assert_eq!(used(&guest.tx), vec![(0, 0), (2, 0)], "TX used length 0");
    assert!(guest.vring_raised());
    let m = net.metrics();
    assert_eq!((m.tx_frames, m.tx_dropped, m.bad_chains), (2, 0, 0));
    assert_eq!(m.tx_bytes, (f0.len() + f1.len()) as u64);
}

#[test]
fn malformed_tx_chains_do_not_panic() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(&name).expect("packet socket");
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, None);
    // before activation, and unknown queues: ignored
    net.queue_notify(1);
    net.queue_notify(0);
    guest.activate(&mut net);
    net.queue_notify(7);

    // too short for the header
    add_chain(&guest.tx, 0, &[(TX_BUFS, 5, false)]);
    // a header and nothing else
    add_chain(&guest.tx, 1, &[(TX_BUFS, VNET_HDR_LEN as u32, false)]);
    // a device-writable descriptor in a TX chain
    add_chain(
        &guest.tx,
        2,
        &[(TX_BUFS, VNET_HDR_LEN as u32, false), (TX_BUFS, 60, true)],
    );
    // outside guest memory
    add_chain(&guest.tx, 4, &[(MEM_SIZE as u64 + 0x1000, 100, false)]);
    // longer than any frame
    add_chain(
        &guest.tx,
        5,
        &[(TX_BUFS, (MAX_BUFFER_SIZE + 1) as u32, false)],
    );
    // a good one after them
    let f = frame(HOST_MAC, MAC, b"after-bad", 64);
    let mut good = vec![0u8; VNET_HDR_LEN];
    good.extend_from_slice(&f);
    mem.write_slice(&good, GuestAddress(TX_BUFS + 0x2_0000))
        .expect("w");
    add_chain(
        &guest.tx,
        6,
        &[(TX_BUFS + 0x2_0000, good.len() as u32, false)],
    );
    net.queue_notify(1);

    assert!(wait_host_frame(&sock, &f), "the good frame still goes out");
    let heads: Vec<u32> = used(&guest.tx).iter().map(|(id, _)| *id).collect();
    assert_eq!(heads, vec![0, 1, 2, 4, 5, 6], "every chain returned");
    let m = net.metrics();
    assert_eq!(
        (m.tx_frames, m.tx_dropped, m.bad_chains),
        (1, 5, 5),
        "{m:?}"
    );

    // an avail index far ahead of the ring: no spin, no panic
    guest.tx.avail().idx().store(60000);
    net.queue_notify(1);
}

#[test]
fn tap_frames_in() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(&name).expect("packet socket");
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, None);
    guest.activate(&mut net);
    for i in 0..8 {
        guest.post_rx(i);
    }
    net.queue_notify(0);

    let f = frame(MAC, HOST_MAC, b"in-0", 98);
    sock.send(&f).expect("send");
    assert!(guest.wait_rx_frame(&f).is_some(), "frame in an RX chain");
    assert!(guest.vring_raised(), "INT_VRING");
    let m = net.metrics();
    assert!(m.rx_frames >= 1 && m.rx_bytes >= f.len() as u64, "{m:?}");
    assert_eq!(m.rx_dropped, 0);
}

#[test]
fn rx_waits_for_buffers() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(&name).expect("packet socket");
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, None);
    guest.activate(&mut net);

    // no RX buffers yet: the frames wait (one in the device, the rest in the tap)
    let f0 = frame(MAC, HOST_MAC, b"late-0", 60);
    let f1 = frame(MAC, HOST_MAC, b"late-1", 200);
    sock.send(&f0).expect("send");
    sock.send(&f1).expect("send");

    // While it waits, the RX thread sleeps (a busy loop would burn ~1 s of CPU here).
    let thread = Net::rx_thread_name(&name);
    assert!(
        wait_for(|| threads_named(&thread).len() == 1),
        "one RX thread"
    );
    let tids = threads_named(&thread);
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_ticks(&tids[0]);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(&tids[0]).saturating_sub(before);
    assert!(spent <= 5, "RX thread busy while waiting: {spent} ticks");
    assert!(used(&guest.rx).is_empty());

    for i in 0..4 {
        guest.post_rx(i);
    }
    net.queue_notify(0);
    let p0 = guest.wait_rx_frame(&f0).expect("first frame after buffers");
    let p1 = guest
        .wait_rx_frame(&f1)
        .expect("second frame after buffers");
    assert!(p0 < p1, "in order");
    assert!(guest.vring_raised());
    assert_eq!(net.metrics().rx_dropped, 0, "nothing dropped while waiting");
}

#[test]
fn rx_frame_larger_than_chain_is_dropped() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let sock = PacketSocket::bind(&name).expect("packet socket");
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, None);
    guest.activate(&mut net);

    // chain 0: 40 bytes (room for a header and 28 bytes, less than any real frame)
    add_chain(&guest.rx, 0, &[(RX_BUFS + 0x8_0000, 40, true)]);
    net.queue_notify(0);
    let big = frame(MAC, HOST_MAC, b"too-big", 100);
    sock.send(&big).expect("send");
    assert!(
        wait_for(|| net.metrics().rx_dropped >= 1),
        "frame dropped: {:?}",
        net.metrics()
    );
    assert_eq!(
        used(&guest.rx),
        vec![(0, 0)],
        "the small chain comes back empty"
    );

    // then a normal chain gets the next frame
    guest.post_rx(1);
    net.queue_notify(0);
    let f = frame(MAC, HOST_MAC, b"fits", 100);
    sock.send(&f).expect("send");
    assert!(guest.wait_rx_frame(&f).is_some());

    // RX chains the device cannot use: a read-only one, one too short for the header
    add_chain(&guest.rx, 10, &[(RX_BUFS + 0x9_0000, 2048, false)]);
    add_chain(&guest.rx, 11, &[(RX_BUFS + 0x9_0000, 4, true)]);
    net.queue_notify(0);
    sock.send(&frame(MAC, HOST_MAC, b"bad-chain-0", 80))
        .expect("send");
    sock.send(&frame(MAC, HOST_MAC, b"bad-chain-1", 80))
        .expect("send");
    assert!(
        wait_for(|| net.metrics().bad_chains >= 2),
        "{:?}",
        net.metrics()
    );
    let used_now = used(&guest.rx);
    assert!(used_now.contains(&(10, 0)) && used_now.contains(&(11, 0)));
}

#[test]
fn reset_and_drop_stop_the_rx_thread() {
    let Some((tap, _guard)) = new_tap() else {
        return;
    };
    let name = tap.name().to_owned();
    let thread = Net::rx_thread_name(&name);
    let mem = guest_memory();
    let guest = Guest::new(&mem);
    let mut net = Net::new(tap, MAC, None);
    assert!(threads_named(&thread).is_empty());

    guest.activate(&mut net);
    assert!(
        wait_for(|| threads_named(&thread).len() == 1),
        "RX thread runs"
    );
    assert!(net.reset());
    assert!(
        wait_for(|| threads_named(&thread).is_empty()),
        "RX thread gone after reset"
    );
    // TX after reset: ignored
    net.queue_notify(1);

    // activate again (fresh rings), and it works
    let mem2 = guest_memory();
    let guest2 = Guest::new(&mem2);
    guest2.activate(&mut net);
    assert!(
        wait_for(|| threads_named(&thread).len() == 1),
        "RX thread runs again"
    );
    let sock = PacketSocket::bind(&name).expect("packet socket");
    guest2.post_rx(0);
    net.queue_notify(0);
    let f = frame(MAC, HOST_MAC, b"again", 70);
    sock.send(&f).expect("send");
    assert!(guest2.wait_rx_frame(&f).is_some());

    let before: NetMetrics = net.metrics();
    assert!(before.rx_frames >= 1);
    drop(net);
    assert!(
        wait_for(|| threads_named(&thread).is_empty()),
        "RX thread gone after drop"
    );
    assert!(
        wait_for(|| !tap_exists(&name)),
        "the tap went away with its last descriptor"
    );
}
