//! The virtio-mmio transport (virtio 1.1 §4.2.2, version 2): the register file of one device.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};

/// "virt".
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id ("UNIC").
pub const VENDOR_ID: u32 = 0x4349_4e55;
/// Each device's window.
pub const MMIO_LEN: u64 = 0x1000;

/// Device status bits.
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u32 = 1;
    /// DRIVER.
    pub const DRIVER: u32 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u32 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u32 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u32 = 64;
    /// FAILED.
    pub const FAILED: u32 = 128;
}

/// One device's MMIO registers and queues.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

fn lock<'a>(
    d: &'a Mutex<dyn VirtioDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MmioTransport {
    /// A transport for `device`, raising `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> MmioTransport {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Tells the driver the config space changed (e.g. new media).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// A read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            lock(&self.device).read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let q = self.queues.get(self.queue_select as usize);
        let v: u32 = match offset {
            0x000 => MMIO_MAGIC,
            0x004 => MMIO_VERSION,
            0x008 => lock(&self.device).device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let f = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self
                .interrupt
                .status
                .load(std::sync::atomic::Ordering::Acquire),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            lock(&self.device).write_config(offset - 0x100, data);
            return;
        }
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(b);
        let may_setup = self.status & status::DRIVER_OK == 0;
        match offset {
            0x014 => self.device_features_select = v,
            0x020 if may_setup => match self.driver_features_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_select = v,
            0x030 => self.queue_select = v,
            0x038 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x044 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x050 if self.activated => lock(&self.device).queue_notify(v as usize),
            0x064 => {
                self.interrupt
                    .status
                    .fetch_and(!v, std::sync::atomic::Ordering::AcqRel);
            }
            0x070 => self.set_status(v),
            0x080 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_desc_table_address(Some(v), None);
                }
            }
            0x084 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_desc_table_address(None, Some(v));
                }
            }
            0x090 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_avail_ring_address(Some(v), None);
                }
            }
            0x094 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_avail_ring_address(None, Some(v));
                }
            }
            0x0a0 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_used_ring_address(Some(v), None);
                }
            }
            0x0a4 if may_setup => {
                if let Some(q) = self.queue() {
                    q.set_used_ring_address(None, Some(v));
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // features the device never offered, or a legacy driver: refuse FEATURES_OK
                self.status = v & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).ack_features(self.driver_features);
        }
        if v & status::DRIVER_OK != 0 && !self.activated {
            let queues = std::mem::take(&mut self.queues);
            let valid = queues.iter().all(|q| q.is_valid(&self.mem));
            let result = if valid {
                lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone())
            } else {
                Err(super::ActivateError::BadQueues(
                    "a queue is not valid for guest memory".into(),
                ))
            };
            match result {
                Ok(()) => self.activated = true,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio device activation failed");
                    self.status = v | status::NEEDS_RESET;
                    self.interrupt.signal_config_change();
                    return;
                }
            }
        }
        self.status = v;
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            self.status |= status::NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt
            .status
            .store(0, std::sync::atomic::Ordering::Release);
        self.queues = lock(&self.device)
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .collect();
    }
}
