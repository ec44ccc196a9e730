//! virtio devices over virtio-mmio (virtio 1.1, MMIO transport version 2).
//!
//! * [`VirtioDevice`]: what a device implements (type, features, config space, activation with
//!   its queues, queue notifications, reset).
//! * [`mmio::MmioTransport`]: the register file the guest driver programs; it activates the
//!   device at DRIVER_OK and forwards QueueNotify writes, on the vCPU thread that trapped them.
//! * [`Interrupt`]: the device's interrupt line (an irqfd) and the MMIO interrupt status.
//! * Devices: [`block`], [`net`], [`vsock`].
//!
//! Queue processing runs on the vCPU thread that wrote QueueNotify; a device with input from the
//! host (a tap, host sockets) runs its own thread from `activate` and takes the device lock for
//! each batch.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device ids (virtio 1.1 §5).
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
}

/// `VIRTIO_F_VERSION_1`: every device offers it (modern virtio-mmio).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bit: a used buffer was added.
pub const INT_VRING: u32 = 0x1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 0x2;

/// A device's interrupt: an irqfd registered with KVM for its GSI, and the MMIO
/// InterruptStatus it reports.
#[derive(Debug)]
pub struct Interrupt {
    /// Written to raise the line.
    pub irqfd: EventFd,
    /// InterruptStatus (INT_VRING | INT_CONFIG), cleared by the driver's InterruptACK.
    pub status: AtomicU32,
}

impl Interrupt {
    /// A line on `irqfd`.
    pub fn new(irqfd: EventFd) -> Arc<Interrupt> {
        Arc::new(Interrupt {
            irqfd,
            status: AtomicU32::new(0),
        })
    }

    /// A line whose eventfd nobody listens to (unit tests read `status` and the eventfd).
    pub fn detached() -> std::io::Result<Arc<Interrupt>> {
        Ok(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    /// Raises the line with `bit` set in InterruptStatus.
    pub fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    /// A used buffer is ready.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// The config space changed (e.g. a new disk capacity).
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the wrong number of queues or invalid ones.
    #[error("bad queues: {0}")]
    BadQueues(String),
    /// A host resource failed (tap, socket, file, thread).
    #[error("{0}")]
    Host(String),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// `device_type::*`.
    fn device_type(&self) -> u32;
    /// The maximum size of each of its queues (their number is the length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits it offers (with [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of [`VirtioDevice::avail_features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads its config space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its config space at `offset` (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver is ready (DRIVER_OK): the device owns `queues` from now on.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index`: process what it made available.
    fn queue_notify(&mut self, index: usize);
    /// The driver reset the device: drop queues and threads; `false` if it cannot.
    fn reset(&mut self) -> bool;
}

/// Copies `src` into `data` from `offset` of a config space (reads past the end give zeros).
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let end = (start + data.len()).min(src.len());
    data[..end - start].copy_from_slice(&src[start..end]);
}
