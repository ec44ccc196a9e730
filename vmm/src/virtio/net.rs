//! virtio-net (virtio 1.1 §5.1) on a tap device: one RX/TX queue pair, a MAC address, an
//! optional MTU, no offloads.
//!
//! * TX (queue 1) runs on the vCPU thread that wrote QueueNotify: each chain is a 12-byte
//!   `virtio_net_hdr_v1` and a frame, copied out of guest memory and written to the tap in one
//!   `write` (the tap takes the same header in front). No offloads were offered, so the header
//!   goes out zeroed whatever the guest put in it.
//! * RX (queue 0) runs on a thread started by `activate`: it polls the tap, a kick eventfd
//!   (QueueNotify 0: new RX buffers) and a stop eventfd (reset, drop). A frame read from the tap
//!   goes into the next RX chain with a header of zeros and `num_buffers` 1. With no RX buffer
//!   the thread keeps the frame it holds and stops reading the tap until the guest posts some,
//!   so the tap's own queue holds the rest. A frame larger than the next RX chain is dropped
//!   (counted) and the chain returned with used length 0 (as Firecracker does; the driver counts
//!   a length error and reposts it), so a small chain cannot block the queue.
//!
//! The RX thread owns the RX queue outright and never takes the device lock, so `reset` (and
//! drop) can stop and join it while the transport holds that lock.

pub mod tap;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::{PollContext, WatchingEvents};

pub use tap::{Tap, VNET_HDR_LEN};

use super::{ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

/// The RX queue's index.
pub const RX_QUEUE: usize = 0;
/// The TX queue's index.
pub const TX_QUEUE: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// The largest buffer moved either way: a vnet header and a 64 KiB frame with an Ethernet
/// header and a VLAN tag (Firecracker's `MAX_BUFFER_SIZE`).
pub const MAX_BUFFER_SIZE: usize = 65562;
/// Ethernet header length: a shorter TX frame is malformed.
const ETH_HLEN: usize = 14;
/// The smallest MTU a driver accepts (IPv4's minimum); a smaller one is not offered.
const MIN_MTU: u16 = 68;
/// `virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// Counters of a net device (a snapshot, see [`Net::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without the vnet header).
    pub rx_bytes: u64,
    /// Frames from the tap dropped: larger than the guest's RX chain, or the chain was bad.
    pub rx_dropped: u64,
    /// Frames the guest sent that the tap took.
    pub tx_frames: u64,
    /// Bytes of those frames (without the vnet header).
    pub tx_bytes: u64,
    /// Frames the guest sent that were dropped: malformed chains (too short for the header and
    /// an Ethernet header, too long, device-writable or out-of-memory descriptors) or the tap
    /// refused them.
    pub tx_dropped: u64,
    /// RX or TX chains the device could not use (included in the drop counts for TX).
    pub bad_chains: u64,
}

#[derive(Debug, Default)]
struct Counters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    bad_chains: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> NetMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetMetrics {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            bad_chains: get(&self.bad_chains),
        }
    }
}

/// A virtio-net device on a tap.
pub struct Net {
    tap: Arc<Tap>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    counters: Arc<Counters>,
    active: Option<Active>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// What an activated device holds: the TX side and the RX thread.
struct Active {
    mem: GuestMemoryMmap,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    tx_buf: Vec<u8>,
    rx: RxThread,
}

/// The RX thread; dropping it stops and joins the thread.
struct RxThread {
    kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RxThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "cannot stop the virtio-net RX thread");
            return;
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the virtio-net RX thread panicked");
        }
    }
}

impl Net {
    /// A device on `tap` with the MAC address `mac`, offering `mtu` to the guest if given (and
    /// at least 68).
    pub fn new(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> Net {
        let mtu = mtu.filter(|m| {
            let ok = *m >= MIN_MTU;
            if !ok {
                tracing::warn!(mtu = m, "virtio-net MTU below 68 not offered");
            }
            ok
        });
        let mut avail_features = VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MAC);
        if mtu.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MTU;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        Net {
            tap: Arc::new(tap),
            avail_features,
            acked_features: 0,
            config,
            counters: Arc::new(Counters::default()),
            active: None,
        }
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> NetMetrics {
        self.counters.snapshot()
    }

    /// The name of the RX thread of a device on the tap `tap_name` (at most 15 bytes, the
    /// kernel's limit, so it shows in `/proc/<pid>/task/*/comm`).
    pub fn rx_thread_name(tap_name: &str) -> String {
        let mut name = format!("rx-{tap_name}");
        while name.len() > 15 {
            name.pop();
        }
        name
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            if let Err(e) = a.tx.disable_notification(&a.mem) {
                tracing::warn!(error = %e, "virtio-net TX queue");
                break;
            }
            let mut popped = 0usize;
            while let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) {
                popped += 1;
                let head = chain.head_index();
                match gather_tx(&a.mem, chain, &mut a.tx_buf) {
                    Some(len) => send_frame(&self.tap, &mut a.tx_buf[..len], &self.counters),
                    None => {
                        bump(&self.counters.bad_chains, 1);
                        bump(&self.counters.tx_dropped, 1);
                    }
                }
                if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                    tracing::warn!(error = %e, "virtio-net TX used ring");
                }
                used = true;
            }
            // More chains arrived while notifications were off; a broken avail ring (nothing
            // popped) must not spin the vCPU.
            match a.tx.enable_notification(&a.mem) {
                Ok(true) if popped > 0 => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-net TX queue");
                    break;
                }
            }
        }
        if used && a.tx.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }
}

/// Copies a TX chain into `buf`; its length, or `None` if the chain is malformed.
fn gather_tx(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    buf.clear();
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let len = desc.len() as usize;
        let start = buf.len();
        let end = start.checked_add(len).filter(|e| *e <= MAX_BUFFER_SIZE)?;
        buf.resize(end, 0);
        mem.read_slice(&mut buf[start..end], desc.addr()).ok()?;
    }
    (buf.len() >= VNET_HDR_LEN + ETH_HLEN).then_some(buf.len())
}

/// Writes a gathered TX frame (header first) to the tap.
fn send_frame(tap: &Tap, frame: &mut [u8], counters: &Counters) {
    // Nothing was negotiated that the header could ask for (checksum, GSO): zero it so the
    // host never acts on guest-chosen offload fields.
    frame[..VNET_HDR_LEN].fill(0);
    loop {
        match tap.write_frame(frame) {
            Ok(n) if n == frame.len() => {
                bump(&counters.tx_frames, 1);
                bump(&counters.tx_bytes, (n - VNET_HDR_LEN) as u64);
            }
            Ok(_) => bump(&counters.tx_dropped, 1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, tap = tap.name(), "tap refused a frame");
                bump(&counters.tx_dropped, 1);
            }
        }
        return;
    }
}

/// What became of a frame offered to the RX queue.
enum Delivery {
    /// Written to a chain.
    Delivered,
    /// The chain is too small for it: the frame is dropped, the chain returned empty.
    TooBig,
    /// The chain at the head is unusable: it was returned empty, the frame dropped.
    BadChain,
    /// No RX chain is available.
    NoBuffers,
}

/// Puts `frame` (vnet header first) into the next RX chain.
fn deliver_rx(mem: &GuestMemoryMmap, queue: &mut Queue, frame: &[u8]) -> Delivery {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return Delivery::NoBuffers;
    };
    let head = chain.head_index();
    let give_back_empty = |queue: &mut Queue, why: Delivery| {
        if let Err(e) = queue.add_used(mem, head, 0) {
            tracing::warn!(error = %e, "virtio-net RX used ring");
        }
        why
    };
    let mut capacity = 0usize;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return give_back_empty(queue, Delivery::BadChain);
        }
        capacity = capacity.saturating_add(desc.len() as usize);
    }
    if capacity < VNET_HDR_LEN {
        return give_back_empty(queue, Delivery::BadChain);
    }
    if capacity < frame.len() {
        return give_back_empty(queue, Delivery::TooBig);
    }
    let mut off = 0usize;
    for desc in chain {
        if off == frame.len() {
            break;
        }
        let n = (desc.len() as usize).min(frame.len() - off);
        if mem.write_slice(&frame[off..off + n], desc.addr()).is_err() {
            return give_back_empty(queue, Delivery::BadChain);
        }
        off += n;
    }
    // `frame.len()` <= MAX_BUFFER_SIZE fits in u32.
    if let Err(e) = queue.add_used(mem, head, frame.len() as u32) {
        tracing::warn!(error = %e, "virtio-net RX used ring");
    }
    Delivery::Delivered
}

/// Frames the RX thread moves between two looks at its eventfds.
const RX_BATCH: usize = 256;

const TOKEN_STOP: u32 = 0;
const TOKEN_KICK: u32 = 1;
const TOKEN_TAP: u32 = 2;

/// The RX thread's state.
struct Rx {
    tap: Arc<Tap>,
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    counters: Arc<Counters>,
    kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    poll: PollContext<u32>,
}

impl Rx {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_BUFFER_SIZE];
        // A frame read from the tap that waits for an RX buffer.
        let mut pending: Option<usize> = None;
        // Whether the tap is in the poll set, and with read interest.
        let mut tap_registered = true;
        let mut tap_watched = true;
        let mut tap_dead = false;
        loop {
            let mut used = false;
            // A bounded batch, so a flood cannot delay a stop (or the interrupt) for long.
            for _ in 0..RX_BATCH {
                let len = match pending.take() {
                    Some(len) => len,
                    None if tap_dead => break,
                    None => match self.tap.read_frame(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(error = %e, tap = self.tap.name(), "tap read failed; no more RX");
                            tap_dead = true;
                            break;
                        }
                    },
                };
                if len < VNET_HDR_LEN {
                    bump(&self.counters.rx_dropped, 1);
                    continue;
                }
                // No offloads: flags, GSO and checksum fields zero, one buffer.
                buf[..VNET_HDR_LEN].fill(0);
                buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                match deliver_rx(&self.mem, &mut self.queue, &buf[..len]) {
                    Delivery::Delivered => {
                        used = true;
                        bump(&self.counters.rx_frames, 1);
                        bump(&self.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    }
                    Delivery::TooBig => {
                        used = true;
                        bump(&self.counters.rx_dropped, 1);
                    }
                    Delivery::BadChain => {
                        used = true;
                        bump(&self.counters.rx_dropped, 1);
                        bump(&self.counters.bad_chains, 1);
                    }
                    Delivery::NoBuffers => {
                        pending = Some(len);
                        break;
                    }
                }
            }
            if used && self.queue.needs_notification(&self.mem).unwrap_or(true) {
                self.interrupt.signal_used_queue();
            }
            // Read the tap only when there is somewhere to put a frame; a dead tap leaves the
            // poll set (epoll reports its errors whatever the interest).
            let want_tap = pending.is_none() && !tap_dead;
            if tap_dead && tap_registered {
                if let Err(e) = self.poll.delete(&*self.tap) {
                    tracing::error!(error = %e, "virtio-net RX poll");
                    return;
                }
                tap_registered = false;
            } else if tap_registered && want_tap != tap_watched {
                let events = if want_tap {
                    WatchingEvents::empty().set_read()
                } else {
                    WatchingEvents::empty()
                };
                if let Err(e) = self.poll.modify(&*self.tap, events, TOKEN_TAP) {
                    tracing::error!(error = %e, "virtio-net RX poll");
                    return;
                }
                tap_watched = want_tap;
            }
            let mut stop = false;
            let mut tap_error = false;
            match self.poll.wait() {
                Ok(events) => {
                    for ev in events.iter() {
                        match ev.token() {
                            TOKEN_STOP => stop = true,
                            TOKEN_KICK => {
                                // Non-blocking: EAGAIN if a previous pass drained it.
                                let _ = self.kick.read();
                            }
                            _ => tap_error |= ev.hungup() || ev.has_error(),
                        }
                    }
                }
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => {
                    tracing::error!(error = %e, "virtio-net RX poll");
                    return;
                }
            }
            if stop {
                let _ = self.stop.read();
                return;
            }
            if tap_error && !tap_dead {
                tracing::error!(tap = self.tap.name(), "tap hung up; no more RX");
                tap_dead = true;
            }
        }
    }
}

fn host_err(what: &str, e: impl std::fmt::Display) -> ActivateError {
    ActivateError::Host(format!("virtio-net {what}: {e}"))
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR; nothing else is writable.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let Ok([rx_queue, tx_queue]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::BadQueues("virtio-net needs 2 queues".into()));
        };
        // A second activation without a reset: stop the old thread first.
        self.active = None;
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| host_err("eventfd", e))?);
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| host_err("eventfd", e))?);
        let poll = PollContext::new().map_err(|e| host_err("epoll", e))?;
        poll.add(&*stop, TOKEN_STOP)
            .and_then(|()| poll.add(&*kick, TOKEN_KICK))
            .and_then(|()| poll.add(&*self.tap, TOKEN_TAP))
            .map_err(|e| host_err("epoll", e))?;
        let rx = Rx {
            tap: self.tap.clone(),
            mem: mem.clone(),
            queue: rx_queue,
            interrupt: interrupt.clone(),
            counters: self.counters.clone(),
            kick: kick.clone(),
            stop: stop.clone(),
            poll,
        };
        let thread = std::thread::Builder::new()
            .name(Net::rx_thread_name(self.tap.name()))
            .spawn(move || rx.run())
            .map_err(|e| host_err("RX thread", e))?;
        self.active = Some(Active {
            mem,
            tx: tx_queue,
            interrupt,
            tx_buf: Vec::with_capacity(MAX_BUFFER_SIZE),
            rx: RxThread {
                kick,
                stop,
                thread: Some(thread),
            },
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX_QUEUE => {
                if let Some(a) = &self.active
                    && let Err(e) = a.rx.kick.write(1)
                {
                    tracing::warn!(error = %e, "cannot kick the virtio-net RX thread");
                }
            }
            TX_QUEUE => self.process_tx(),
            _ => {}
        }
    }

    fn reset(&mut self) -> bool {
        // Dropping the RX side stops and joins its thread.
        self.active = None;
        self.acked_features = 0;
        true
    }
}
