//! virtio-blk (virtio 1.1 §5.2): one request queue over a raw image file on the host.
//!
//! * Features: `VIRTIO_BLK_F_FLUSH`, `VIRTIO_BLK_F_SEG_MAX`, `VIRTIO_BLK_F_BLK_SIZE`, and
//!   `VIRTIO_BLK_F_RO` for a device built read-only. No EVENT_IDX, no indirect descriptors
//!   offered, no discard / write-zeroes.
//! * Requests (§5.2.6): the device-readable part of a chain is the 16-byte header (type,
//!   reserved, sector) followed by the data of a write; the device-writable part is the data of a
//!   read (or the id of GET_ID) followed by the status byte, its last byte. The chain is read as
//!   two byte streams ([`virtio_queue::Reader`] / [`virtio_queue::Writer`]), so any descriptor
//!   layout works (Linux puts header, data and status in separate descriptors).
//! * Media can be attached, swapped and detached while the VM runs ([`Block::set_media`]):
//!   containers arrive after boot. The guest is told through a config-change interrupt and
//!   re-reads `capacity`. Requests on an empty device fail with `S_IOERR`.
//! * Requests are served synchronously in [`VirtioDevice::queue_notify`], on the vCPU thread
//!   that wrote QueueNotify, with `pread`/`pwrite` through a bounce buffer.
//!
//! Malformed chains never panic and never touch memory outside the guest's: a chain without a
//! writable status byte is returned with used length 0; one whose status byte is reachable gets
//! `S_IOERR`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type, read_config_bytes,
};

/// The unit of `capacity` and of request sectors.
pub const SECTOR_SIZE: u64 = 512;
/// The maximum size of the request queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// `seg_max` in the config space: data segments per request (the queue size minus the header
/// and status descriptors, as no indirect descriptors are offered).
pub const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;
/// The length of the GET_ID serial.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The request header: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: usize = 16;
/// Size of the bounce buffer between guest memory and the file.
const BOUNCE_LEN: usize = 128 * 1024;
/// `virtio_blk_config` up to `blk_size` (the fields we fill; the rest reads as zeros).
const CONFIG_LEN: usize = 24;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Opens a raw image for [`Block::new`] / [`Block::set_media`]: read-only, or read-write.
pub fn open_image(path: &Path, read_only: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(!read_only).open(path)
}

/// The backing file of a device with media.
#[derive(Debug)]
struct Media {
    file: File,
    read_only: bool,
    /// Capacity in 512-byte sectors (a trailing partial sector is not exposed).
    sectors: u64,
}

impl Media {
    fn new(file: File, read_only: bool) -> io::Result<Media> {
        // seek rather than metadata: a block device's metadata has length 0
        let size = (&file).seek(SeekFrom::End(0))?;
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                size,
                "virtio-blk image is not a multiple of 512 bytes: the last partial sector is hidden"
            );
        }
        Ok(Media {
            file,
            read_only,
            sectors: size / SECTOR_SIZE,
        })
    }
}

/// What the device owns between DRIVER_OK and reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-blk device: one request queue, a raw image file (or no media yet).
pub struct Block {
    serial: [u8; ID_BYTES],
    offer_ro: bool,
    media: Option<Media>,
    acked_features: u64,
    active: Option<Active>,
    bounce: Vec<u8>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("serial", &String::from_utf8_lossy(self.serial()))
            .field("offer_ro", &self.offer_ro)
            .field("media", &self.media)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    fn build(id: &str, offer_ro: bool, media: Option<Media>) -> Block {
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Block {
            serial,
            offer_ro,
            media,
            acked_features: 0,
            active: None,
            bounce: vec![0; BOUNCE_LEN],
        }
    }

    /// A device over `file`. `id` is the GET_ID serial (truncated to 20 bytes); `read_only`
    /// refuses writes and offers `VIRTIO_BLK_F_RO` to the guest.
    pub fn new(id: &str, file: File, read_only: bool) -> io::Result<Block> {
        Ok(Block::build(
            id,
            read_only,
            Some(Media::new(file, read_only)?),
        ))
    }

    /// A device over the image at `path` (see [`open_image`]).
    pub fn open(id: &str, path: &Path, read_only: bool) -> io::Result<Block> {
        Block::new(id, open_image(path, read_only)?, read_only)
    }

    /// A device without media (capacity 0) that does not offer `VIRTIO_BLK_F_RO`: media of
    /// either kind may be attached later with [`Block::set_media`] (read-only media then refuse
    /// writes with `S_IOERR`, the guest not knowing in advance).
    pub fn empty(id: &str) -> Block {
        Block::build(id, false, None)
    }

    /// A device without media that offers `VIRTIO_BLK_F_RO`, for read-only media attached later
    /// (the guest then marks the disk read-only itself).
    pub fn empty_read_only(id: &str) -> Block {
        Block::build(id, true, None)
    }

    /// Attaches (`Some((file, read_only))`), swaps or detaches (`None`) the backing file. The
    /// capacity changes at once and an activated device raises a config-change interrupt; the
    /// guest should have stopped using the old media (requests already queued are served on
    /// the new one). On error (the size of `file` cannot be found) the media is unchanged.
    pub fn set_media(&mut self, media: Option<(File, bool)>) -> io::Result<()> {
        self.media = match media {
            Some((file, read_only)) => Some(Media::new(file, read_only)?),
            None => None,
        };
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// The capacity in 512-byte sectors (0 without media).
    pub fn capacity(&self) -> u64 {
        self.media.as_ref().map_or(0, |m| m.sectors)
    }

    /// Whether media is attached.
    pub fn has_media(&self) -> bool {
        self.media.is_some()
    }

    /// Whether the current media refuses writes (`false` without media).
    pub fn is_read_only(&self) -> bool {
        self.media.as_ref().is_some_and(|m| m.read_only)
    }

    /// The GET_ID serial, without its NUL padding.
    pub fn serial(&self) -> &[u8] {
        let end = self.serial.iter().position(|b| *b == 0).unwrap_or(ID_BYTES);
        &self.serial[..end]
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        // capacity @0, size_max @8 (not offered), seg_max @12, geometry @16 (not offered),
        // blk_size @20
        c[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Serves every available request, then interrupts the guest if it wants it.
    fn process_queue(&mut self) {
        let Block {
            serial,
            media,
            active,
            bounce,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut completed = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = serve(media.as_ref(), serial, bounce, mem, chain);
            if let Err(e) = active.queue.add_used(mem, head, used) {
                tracing::debug!(error = %e, head, "virtio-blk: cannot return a chain");
                continue;
            }
            completed = true;
        }
        if completed {
            match active.queue.needs_notification(mem) {
                Ok(false) => {}
                Ok(true) => active.interrupt.signal_used_queue(),
                Err(e) => {
                    tracing::debug!(error = %e, "virtio-blk: needs_notification");
                    active.interrupt.signal_used_queue();
                }
            }
        }
    }
}

/// Serves one chain; returns the used length (bytes written into device-writable buffers,
/// status byte included), 0 when the chain has no writable status byte.
fn serve(
    media: Option<&Media>,
    serial: &[u8; ID_BYTES],
    bounce: &mut [u8],
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let mut data_out = match Writer::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "virtio-blk: bad writable descriptors");
            return 0;
        }
    };
    let Some(data_len) = data_out.available_bytes().checked_sub(1) else {
        tracing::debug!("virtio-blk: request without a status byte");
        return 0;
    };
    let Ok(mut status_out) = data_out.split_at(data_len) else {
        return 0;
    };
    let status = match Reader::new(mem, chain) {
        Ok(mut data_in) => request(media, serial, bounce, &mut data_in, &mut data_out),
        Err(e) => {
            tracing::debug!(error = %e, "virtio-blk: bad readable descriptors");
            S_IOERR
        }
    };
    if status_out.write_all(&[status]).is_err() {
        return 0;
    }
    u32::try_from(data_out.bytes_written() + 1).unwrap_or(u32::MAX)
}

/// Executes the request whose header starts `data_in`; returns its status.
fn request(
    media: Option<&Media>,
    serial: &[u8; ID_BYTES],
    bounce: &mut [u8],
    data_in: &mut Reader<'_>,
    data_out: &mut Writer<'_>,
) -> u8 {
    let mut header = [0u8; HEADER_LEN];
    if data_in.read_exact(&mut header).is_err() {
        tracing::debug!("virtio-blk: short request header");
        return S_IOERR;
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

    let result = match kind {
        VIRTIO_BLK_T_IN => {
            let Some(media) = media else {
                return S_IOERR;
            };
            if data_in.available_bytes() != 0 {
                tracing::debug!("virtio-blk: read with device-readable data");
                return S_IOERR;
            }
            let len = data_out.available_bytes();
            let Some(offset) = byte_range(sector, len, media.sectors) else {
                return S_IOERR;
            };
            read_to_guest(&media.file, offset, len, bounce, data_out)
        }
        VIRTIO_BLK_T_OUT => {
            let Some(media) = media else {
                return S_IOERR;
            };
            if media.read_only {
                return S_IOERR;
            }
            if data_out.available_bytes() != 0 {
                tracing::debug!("virtio-blk: write with device-writable data");
                return S_IOERR;
            }
            let len = data_in.available_bytes();
            let Some(offset) = byte_range(sector, len, media.sectors) else {
                return S_IOERR;
            };
            write_from_guest(&media.file, offset, len, bounce, data_in)
        }
        VIRTIO_BLK_T_FLUSH => match media {
            None => return S_IOERR,
            Some(m) if m.read_only => Ok(()),
            Some(m) => m.file.sync_data(),
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = data_out.available_bytes().min(ID_BYTES);
            data_out.write_all(&serial[..n])
        }
        _ => return S_UNSUPP,
    };
    match result {
        Ok(()) => S_OK,
        Err(e) => {
            tracing::debug!(error = %e, kind, sector, "virtio-blk: request failed");
            S_IOERR
        }
    }
}

/// The byte offset of `len` bytes at `sector` if they are whole sectors within `sectors`.
fn byte_range(sector: u64, len: usize, sectors: u64) -> Option<u64> {
    let len = u64::try_from(len).ok()?;
    if len % SECTOR_SIZE != 0 {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= sectors.checked_mul(SECTOR_SIZE)?).then_some(offset)
}

fn read_to_guest(
    file: &File,
    offset: u64,
    len: usize,
    bounce: &mut [u8],
    out: &mut Writer<'_>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(bounce.len());
        let buf = &mut bounce[..n];
        file.read_exact_at(buf, offset + done as u64)?;
        out.write_all(buf)?;
        done += n;
    }
    Ok(())
}

fn write_from_guest(
    file: &File,
    offset: u64,
    len: usize,
    bounce: &mut [u8],
    input: &mut Reader<'_>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(bounce.len());
        let buf = &mut bounce[..n];
        input.read_exact(buf)?;
        file.write_all_at(buf, offset + done as u64)?;
        done += n;
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.offer_ro {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // nothing is writable without VIRTIO_BLK_F_CONFIG_WCE
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [queue] = <[Queue; 1]>::try_from(queues).map_err(|q| {
            ActivateError::BadQueues(format!("virtio-blk has 1 queue, got {}", q.len()))
        })?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::{INT_CONFIG, INT_VRING};

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const QSIZE: u16 = 16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A file of `sectors` sectors, sector `i` filled with byte `i + seed`.
    fn image(sectors: u8, seed: u8) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for i in 0..sectors {
            f.write_all(&[i.wrapping_add(seed); 512]).unwrap();
        }
        f.flush().unwrap();
        f
    }

    fn rw(f: &tempfile::NamedTempFile) -> File {
        open_image(f.path(), false).unwrap()
    }

    /// (address, length, device-writable)
    type D = (u64, u32, bool);

    /// Writes a chain at descriptor-table `offset` and makes it available.
    fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, offset: u16, descs: &[D]) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i == descs.len() - 1;
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { offset + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        vq.add_desc_chains(&raw, offset).unwrap();
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// The (id, len) of used ring entry `i`.
    fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn activate(
        dev: &mut Block,
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
    ) -> Arc<Interrupt> {
        let irq = Interrupt::detached().unwrap();
        dev.activate(mem.clone(), vec![vq.create_queue().unwrap()], irq.clone())
            .unwrap();
        irq
    }

    fn capacity_in_config(dev: &Block) -> u64 {
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        u64::from_le_bytes(b)
    }

    /// A request whose status byte sits in its own descriptor, like Linux's.
    fn simple(data: Option<(u32, bool)>) -> Vec<D> {
        let mut d = vec![(HDR, 16, false)];
        if let Some((len, w)) = data {
            d.push((DATA, len, w));
        }
        d.push((STATUS, 1, true));
        d
    }

    #[test]
    fn features_config_and_type() {
        let img = image(8, 0);
        let dev = Block::new("disk0", rw(&img), false).unwrap();
        assert_eq!(dev.device_type(), 2);
        assert_eq!(dev.queue_max_sizes(), &[256]);
        let f = dev.avail_features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_BLK_SIZE), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << 29), 0, "no EVENT_IDX");
        assert_eq!(capacity_in_config(&dev), 8);
        let mut w = [0u8; 4];
        dev.read_config(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), SEG_MAX);
        dev.read_config(20, &mut w);
        assert_eq!(u32::from_le_bytes(w), 512);
        // 32-bit halves, as virtio-mmio drivers read them
        dev.read_config(0, &mut w);
        assert_eq!(u32::from_le_bytes(w), 8);
        dev.read_config(4, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0);
        dev.read_config(0x200, &mut w);
        assert_eq!(w, [0; 4]);
        assert_eq!(dev.serial(), b"disk0");
    }

    #[test]
    fn read_returns_file_data() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(8, 0x40);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        let irq = activate(&mut dev, &mem, &vq);

        header(&mem, VIRTIO_BLK_T_IN, 2);
        add_chain(&vq, 0, &simple(Some((1024, true))));
        dev.queue_notify(0);

        assert_eq!(status(&mem), S_OK);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got[..512], &[0x42; 512]);
        assert_eq!(&got[512..], &[0x43; 512]);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(used(&vq, 0), (0, 1025));
        assert_ne!(irq.status.load(Ordering::Acquire) & INT_VRING, 0);
        assert_eq!(irq.irqfd.read().unwrap(), 1);
    }

    #[test]
    fn read_into_several_descriptors_and_one_with_status() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(8, 0);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        activate(&mut dev, &mem, &vq);

        // sectors 5 and 6 into two 512-byte buffers; then sector 7 with data and status in one
        // 513-byte writable descriptor (any layout is allowed)
        header(&mem, VIRTIO_BLK_T_IN, 5);
        add_chain(
            &vq,
            0,
            &[
                (HDR, 16, false),
                (DATA + 0x1000, 512, true),
                (DATA, 512, true),
                (STATUS, 1, true),
            ],
        );
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(used(&vq, 0), (0, 1025));
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, [5; 512]);
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, [6; 512]);

        header(&mem, VIRTIO_BLK_T_IN, 7);
        add_chain(&vq, 4, &[(HDR, 16, false), (DATA + 0x4000, 513, true)]);
        dev.queue_notify(0);
        assert_eq!(used(&vq, 1), (4, 513));
        let mut got = [0u8; 513];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x4000))
            .unwrap();
        assert_eq!(&got[..512], &[7; 512]);
        assert_eq!(got[512], S_OK);
    }

    #[test]
    fn write_lands_in_file_and_flush() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(8, 0);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        activate(&mut dev, &mem, &vq);

        header(&mem, VIRTIO_BLK_T_OUT, 3);
        mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
        add_chain(&vq, 0, &simple(Some((1024, false))));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(used(&vq, 0), (0, 1));
        let content = std::fs::read(img.path()).unwrap();
        assert_eq!(content.len(), 8 * 512);
        assert_eq!(&content[2 * 512..3 * 512], &[2; 512]);
        assert_eq!(&content[3 * 512..5 * 512], &[0xab; 1024]);
        assert_eq!(&content[5 * 512..6 * 512], &[5; 512]);

        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&vq, 3, &simple(None));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(used(&vq, 1), (3, 1));
    }

    #[test]
    fn read_only_refuses_writes() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(4, 0);
        let mut dev = Block::open("ro", img.path(), true).unwrap();
        assert_ne!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert!(dev.is_read_only());
        activate(&mut dev, &mem, &vq);

        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
        add_chain(&vq, 0, &simple(Some((512, false))));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_IOERR);
        assert_eq!(used(&vq, 0), (0, 1));
        assert_eq!(&std::fs::read(img.path()).unwrap()[..512], &[0; 512]);

        // reads and flushes still work
        header(&mem, VIRTIO_BLK_T_IN, 3);
        add_chain(&vq, 3, &simple(Some((512, true))));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 3);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&vq, 6, &simple(None));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(vq.used().idx().load(), 3);
    }

    #[test]
    fn get_id_returns_serial() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut dev = Block::empty("a-serial-longer-than-twenty-bytes");
        activate(&mut dev, &mem, &vq);
        mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        add_chain(&vq, 0, &simple(Some((20, true))));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(used(&vq, 0), (0, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"a-serial-longer-than");

        let mut dev = Block::empty("short");
        let vq = MockSplitQueue::new(&mem, QSIZE);
        activate(&mut dev, &mem, &vq);
        mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
        add_chain(&vq, 0, &simple(Some((20, true))));
        dev.queue_notify(0);
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..6], b"short\0");
        assert_eq!(&id[5..], &[0; 15]);
    }

    #[test]
    fn out_of_range_and_unsupported() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(4, 0);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        activate(&mut dev, &mem, &vq);

        let mut off = 0;
        let mut n = 0;
        let mut run = |kind: u32, sector: u64, data: Option<(u32, bool)>| {
            mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            header(&mem, kind, sector);
            let d = simple(data);
            if usize::from(off) + d.len() > usize::from(QSIZE) {
                off = 0; // the device returned the earlier chains
            }
            add_chain(&vq, off, &d);
            off += d.len() as u16;
            dev.queue_notify(0);
            n += 1;
            assert_eq!(vq.used().idx().load(), n);
            (status(&mem), used(&vq, usize::from(n - 1)).1)
        };
        // the last sector reads; one past does not, nor a read straddling the end
        assert_eq!(run(VIRTIO_BLK_T_IN, 3, Some((512, true))), (S_OK, 513));
        assert_eq!(run(VIRTIO_BLK_T_IN, 4, Some((512, true))), (S_IOERR, 1));
        assert_eq!(run(VIRTIO_BLK_T_IN, 3, Some((1024, true))), (S_IOERR, 1));
        assert_eq!(run(VIRTIO_BLK_T_OUT, 4, Some((512, false))), (S_IOERR, 1));
        // sector * 512 overflows
        assert_eq!(
            run(VIRTIO_BLK_T_IN, u64::MAX / 4, Some((512, true))),
            (S_IOERR, 1)
        );
        // not whole sectors
        assert_eq!(run(VIRTIO_BLK_T_IN, 0, Some((100, true))), (S_IOERR, 1));
        // discard, write-zeroes (not offered) and nonsense
        assert_eq!(run(11, 0, Some((16, false))), (S_UNSUPP, 1));
        assert_eq!(run(13, 0, Some((16, false))), (S_UNSUPP, 1));
        assert_eq!(run(0xdead, 0, None), (S_UNSUPP, 1));
        assert_eq!(std::fs::read(img.path()).unwrap().len(), 4 * 512);
    }

    #[test]
    fn malformed_chains_do_not_panic() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(4, 0);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        let irq = activate(&mut dev, &mem, &vq);
        header(&mem, VIRTIO_BLK_T_IN, 0);

        // 0: no status descriptor (everything readable)
        add_chain(&vq, 0, &[(HDR, 16, false), (DATA, 512, false)]);
        // 2: data in the wrong direction for a read: status reachable -> IOERR
        add_chain(
            &vq,
            2,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        // 5: header short
        add_chain(&vq, 5, &[(HDR, 8, false), (STATUS, 1, true)]);
        // 7: header writable (no readable part at all)
        add_chain(&vq, 7, &[(HDR, 16, true), (STATUS, 1, true)]);
        // 9: writable data outside guest memory
        add_chain(
            &vq,
            9,
            &[
                (HDR, 16, false),
                (0x4000_0000, 512, true),
                (STATUS, 1, true),
            ],
        );
        // 12: readable header outside guest memory
        add_chain(&vq, 12, &[(0xffff_ffff_f000, 16, false), (STATUS, 1, true)]);
        // 14: a zero-length status descriptor
        add_chain(&vq, 14, &[(HDR, 16, false), (STATUS, 0, true)]);
        dev.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 7);
        let lens: Vec<(u32, u32)> = (0..7).map(|i| used(&vq, i)).collect();
        assert_eq!(
            lens,
            vec![(0, 0), (2, 1), (5, 1), (7, 1), (9, 0), (12, 1), (14, 0)]
        );
        assert_ne!(irq.status.load(Ordering::Acquire) & INT_VRING, 0);

        // a head index past the queue (the chain has no descriptors) and a write with
        // device-writable data; then a good request still works
        let vq2 = MockSplitQueue::new(&mem, QSIZE);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        activate(&mut dev, &mem, &vq2);
        // make avail[0] point to descriptor 200
        add_chain(&vq2, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
        vq2.avail().ring().ref_at(0).unwrap().store(200);
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        add_chain(
            &vq2,
            2,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        dev.queue_notify(0);
        // descriptor 200 cannot be returned (add_used refuses it); the write is refused
        assert_eq!(vq2.used().idx().load(), 1);
        assert_eq!(used(&vq2, 0), (2, 1));
        assert_eq!(status(&mem), S_IOERR);
        header(&mem, VIRTIO_BLK_T_IN, 1);
        add_chain(&vq2, 5, &simple(Some((512, true))));
        dev.queue_notify(0);
        assert_eq!(status(&mem), S_OK);
        assert_eq!(used(&vq2, 1), (5, 513));
    }

    #[test]
    fn empty_device_and_media_swap() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut dev = Block::empty("slot");
        assert_eq!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert!(!dev.has_media());
        assert_eq!(capacity_in_config(&dev), 0);
        let irq = activate(&mut dev, &mem, &vq);

        let mut off = 0u16;
        let mut read = |dev: &mut Block, kind: u32, sector: u64, data: Option<(u32, bool)>| {
            mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            header(&mem, kind, sector);
            let d = simple(data);
            if usize::from(off) + d.len() > usize::from(QSIZE) {
                off = 0; // the device returned the earlier chains
            }
            add_chain(&vq, off, &d);
            off += d.len() as u16;
            dev.queue_notify(0);
            status(&mem)
        };
        assert_eq!(
            read(&mut dev, VIRTIO_BLK_T_IN, 0, Some((512, true))),
            S_IOERR
        );
        assert_eq!(read(&mut dev, VIRTIO_BLK_T_FLUSH, 0, None), S_IOERR);
        assert_eq!(irq.status.load(Ordering::Acquire) & INT_CONFIG, 0);

        // attach A (read-write, 4 sectors)
        let a = image(4, 0x10);
        dev.set_media(Some((rw(&a), false))).unwrap();
        assert_eq!(capacity_in_config(&dev), 4);
        assert_ne!(irq.status.swap(0, Ordering::AcqRel) & INT_CONFIG, 0);
        assert_eq!(read(&mut dev, VIRTIO_BLK_T_IN, 3, Some((512, true))), S_OK);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x13);

        // swap to B (read-only, 9 sectors and a partial one)
        let mut b = image(9, 0x20);
        b.write_all(&[1; 100]).unwrap();
        b.flush().unwrap();
        dev.set_media(Some((open_image(b.path(), true).unwrap(), true)))
            .unwrap();
        assert_eq!(capacity_in_config(&dev), 9);
        assert!(dev.is_read_only());
        assert_ne!(irq.status.swap(0, Ordering::AcqRel) & INT_CONFIG, 0);
        assert_eq!(read(&mut dev, VIRTIO_BLK_T_IN, 8, Some((512, true))), S_OK);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x28);
        assert_eq!(
            read(&mut dev, VIRTIO_BLK_T_IN, 9, Some((512, true))),
            S_IOERR
        );
        assert_eq!(
            read(&mut dev, VIRTIO_BLK_T_OUT, 0, Some((512, false))),
            S_IOERR
        );

        // detach
        dev.set_media(None).unwrap();
        assert_eq!(capacity_in_config(&dev), 0);
        assert!(!dev.has_media());
        assert_ne!(irq.status.load(Ordering::Acquire) & INT_CONFIG, 0);
        assert_eq!(
            read(&mut dev, VIRTIO_BLK_T_IN, 0, Some((512, true))),
            S_IOERR
        );
        assert_eq!(vq.used().idx().load(), 7);
    }

    #[test]
    fn media_before_activation_raises_nothing() {
        let mut dev = Block::empty_read_only("ro-slot");
        assert_ne!(dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        let a = image(2, 0);
        dev.set_media(Some((open_image(a.path(), true).unwrap(), true)))
            .unwrap();
        assert_eq!(dev.capacity(), 2);
    }

    #[test]
    fn activate_checks_queues_and_reset_drops_them() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let img = image(2, 0);
        let mut dev = Block::new("d", rw(&img), false).unwrap();
        let irq = Interrupt::detached().unwrap();
        assert!(dev.activate(mem.clone(), vec![], irq.clone()).is_err());
        let two = vec![vq.create_queue().unwrap(), vq.create_queue().unwrap()];
        assert!(dev.activate(mem.clone(), two, irq.clone()).is_err());

        dev.ack_features(u64::MAX);
        assert_eq!(dev.acked_features(), dev.avail_features());
        activate(&mut dev, &mem, &vq);
        assert!(dev.reset());
        assert_eq!(dev.acked_features(), 0);
        // no queue any more: a notification does nothing
        header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&vq, 0, &simple(Some((512, true))));
        dev.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 0);
        // and it can be activated again
        activate(&mut dev, &mem, &vq);
        dev.queue_notify(1); // no such queue
        assert_eq!(vq.used().idx().load(), 0);
        dev.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 1);
    }
}
