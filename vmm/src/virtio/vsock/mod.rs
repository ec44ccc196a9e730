//! virtio-vsock toward host unix sockets (there is no vhost-vsock on our hosts): Firecracker's
//! scheme (its `docs/vsock.md`), stream sockets only.
//!
//! * **guest → host**: the guest connects to CID 2 (the host) port P; the device connects to the
//!   unix socket `<uds_path>_P` and answers OP_RESPONSE, or OP_RST if nobody listens there.
//! * **host → guest**: a host process connects to `<uds_path>` and writes `CONNECT <port>\n`; the
//!   device sends the guest an OP_REQUEST to that port from an ephemeral host port (≥ 1<<30) and,
//!   when the guest answers OP_RESPONSE, writes `OK <host port>\n` to the host socket (on OP_RST
//!   the host socket is closed). Bytes the host wrote after the `CONNECT` line are data.
//! * Then OP_RW both ways with credit-based flow control, half-close through OP_SHUTDOWN, and
//!   OP_RST when both directions are done or anything goes wrong (see [`conn`]).
//!
//! Queues: 0 = RX (device → guest), 1 = TX (guest → device), 2 = event (unused: no migration).
//! TX chains are processed on the vCPU thread that notified queue 1. RX buffers are filled
//! whenever there is something for the guest: after TX processing, on an RX notification, and
//! from the device's host thread ("vsock-<cid>", started by `activate`), which waits in epoll on
//! the listener and every host socket and takes the device's internal lock for each batch.
//! Host sockets with data are not polled while their data waits for an RX buffer or guest credit,
//! so a guest that stops taking data costs no CPU.
//!
//! Writes to host sockets use `MSG_NOSIGNAL` (no SIGPIPE). The host thread's syscalls: epoll_wait,
//! epoll_ctl, accept4, read, sendto, shutdown, ioctl(FIONBIO), close, socket/connect (guest
//! connections are opened on the vCPU thread), eventfd read/write (for a seccomp filter).

mod conn;
mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use self::muxer::{Muxer, WAKE_TOKEN};
use self::packet::{HDR_SIZE, Header};
use super::{ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

pub use self::conn::TX_BUF_SIZE;
pub use self::muxer::MAX_CONNECTIONS;

/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// The RX queue.
pub const RX_QUEUE: usize = 0;
/// The TX queue.
pub const TX_QUEUE: usize = 1;
/// The event queue.
pub const EVENT_QUEUE: usize = 2;
/// The largest packet data the device reads from a TX chain or puts in an RX buffer.
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// A virtio-vsock device bridging guest vsock stream sockets to host unix sockets.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    acked_features: u64,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

/// What an activated device runs.
struct Worker {
    inner: Arc<Mutex<Inner>>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Stops and joins the host thread; the connections close when `inner` goes.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            tracing::warn!(error = %e, "vsock: cannot wake the host thread");
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("vsock: the host thread panicked");
        }
    }
}

/// The activated device's state, shared by queue notifications and the host thread.
struct Inner {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    _evq: Queue,
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    wake: Arc<EventFd>,
    /// TX processing paused because the guest is not taking RX packets.
    tx_stalled: bool,
    /// Packet data on its way between guest memory and host sockets.
    buf: Vec<u8>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Processes TX (if `tx`) and fills RX, resuming TX if it was paused, then interrupts.
    fn run(&mut self, tx: bool) {
        let mut used = false;
        if tx {
            used |= self.process_tx();
        }
        loop {
            used |= self.process_rx();
            if self.tx_stalled && !self.muxer.rx_backlog_full() {
                self.tx_stalled = false;
                used |= self.process_tx();
            } else {
                break;
            }
        }
        if self.muxer.take_expiry_armed()
            && let Err(e) = self.wake.write(1)
        {
            tracing::warn!(error = %e, "vsock: cannot wake the host thread");
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Hands the guest's TX packets to the muxer; `true` if chains were used.
    fn process_tx(&mut self) -> bool {
        let mut used = false;
        loop {
            if self.muxer.rx_backlog_full() {
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match chain.reader(&self.mem) {
                Ok(mut r) => {
                    let mut hb = [0u8; HDR_SIZE];
                    if r.read_exact(&mut hb).is_ok() {
                        let hdr = Header::from_bytes(&hb);
                        let len = hdr.len as usize;
                        if len > MAX_PKT_DATA || len > r.available_bytes() {
                            tracing::debug!(?hdr, "vsock: TX packet data past its buffers");
                            self.muxer.bad_pkt(&hdr);
                        } else if r.read_exact(&mut self.buf[..len]).is_ok() {
                            self.muxer.send_pkt(&hdr, &self.buf[..len]);
                        } else {
                            self.muxer.bad_pkt(&hdr);
                        }
                    } else {
                        tracing::debug!("vsock: TX chain shorter than a header");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "vsock: bad TX chain"),
            }
            if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                tracing::warn!(error = %e, "vsock: cannot return a TX chain");
            }
            used = true;
        }
        used
    }

    /// Fills the guest's RX buffers with what the muxer has; `true` if chains were used.
    fn process_rx(&mut self) -> bool {
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match chain.writer(&self.mem) {
                Ok(mut w) if w.available_bytes() >= HDR_SIZE => {
                    let room = (w.available_bytes() - HDR_SIZE).min(MAX_PKT_DATA);
                    let Some((hdr, n)) = self.muxer.recv_pkt(&mut self.buf[..room]) else {
                        // nothing fits (or nothing after all): the buffer waits
                        self.rxq.go_to_previous_position();
                        break;
                    };
                    if let Err(e) = w
                        .write_all(&hdr.to_bytes())
                        .and_then(|()| w.write_all(&self.buf[..n]))
                    {
                        tracing::warn!(error = %e, "vsock: cannot write an RX packet");
                    }
                    (HDR_SIZE + n) as u32
                }
                Ok(_) => {
                    tracing::debug!("vsock: RX buffer smaller than a header");
                    0
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: bad RX chain");
                    0
                }
            };
            if let Err(e) = self.rxq.add_used(&self.mem, head, len) {
                tracing::warn!(error = %e, "vsock: cannot return an RX chain");
            }
            used = true;
        }
        used
    }
}

/// The host thread: epoll on the listener and host sockets, one locked batch per wake-up.
fn host_loop(inner: Arc<Mutex<Inner>>, epoll: Arc<Epoll>, stop: Arc<AtomicBool>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let timeout = lock(&inner).muxer.next_timeout_ms(Instant::now());
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "vsock: epoll_wait failed, host thread exits");
                return;
            }
        };
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut g = lock(&inner);
        for ev in events.iter().take(n) {
            if ev.data() == WAKE_TOKEN {
                let _ = g.wake.read();
            } else {
                let set = EventSet::from_bits_truncate(ev.events());
                g.muxer.handle_event(ev.data(), set);
            }
        }
        g.muxer.sweep(Instant::now());
        g.run(false);
    }
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening for host connections on the unix
    /// socket `uds_path` (created now, removed when the device is dropped; it must not exist).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> std::io::Result<Vsock> {
        // 0-2 are reserved, and guests keep CIDs in 32 bits (u32::MAX is VMADDR_CID_ANY)
        if guest_cid <= 2 || guest_cid >= u64::from(u32::MAX) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid guest CID {guest_cid}"),
            ));
        }
        let listener = UnixListener::bind(&uds_path)?;
        if let Err(e) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(&uds_path);
            return Err(e);
        }
        Ok(Vsock {
            cid: guest_cid,
            uds_path,
            listener,
            acked_features: 0,
            worker: None,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host listener's path (guest connections to port P go to `<path>_P`).
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Stops the host thread and closes every connection; host connections not yet accepted
    /// are refused.
    fn deactivate(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        while self.listener.accept().is_ok() {}
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [rxq, txq, evq]: [Queue; 3] = queues.try_into().map_err(|q: Vec<Queue>| {
            ActivateError::BadQueues(format!("vsock needs 3 queues, got {}", q.len()))
        })?;
        self.deactivate();
        let host = |e: std::io::Error| ActivateError::Host(format!("vsock: {e}"));
        let epoll = Arc::new(Epoll::new().map_err(host)?);
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(host)?);
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, WAKE_TOKEN),
            )
            .map_err(host)?;
        let listener = self.listener.try_clone().map_err(host)?;
        let muxer =
            Muxer::new(self.cid, self.uds_path.clone(), epoll.clone(), listener).map_err(host)?;
        let inner = Arc::new(Mutex::new(Inner {
            mem,
            rxq,
            txq,
            _evq: evq,
            interrupt,
            muxer,
            wake: wake.clone(),
            tx_stalled: false,
            buf: vec![0; MAX_PKT_DATA],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("vsock-{}", self.cid))
                .spawn(move || host_loop(inner, epoll, stop))
                .map_err(host)?
        };
        self.worker = Some(Worker {
            inner,
            wake,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        let Some(w) = &self.worker else {
            return;
        };
        match index {
            RX_QUEUE => lock(&w.inner).run(false),
            TX_QUEUE => lock(&w.inner).run(true),
            _ => {}
        }
    }

    fn reset(&mut self) -> bool {
        self.deactivate();
        self.acked_features = 0;
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.deactivate();
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            tracing::debug!(error = %e, path = %self.uds_path.display(), "vsock: cannot remove the socket");
        }
    }
}
