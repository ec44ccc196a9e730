//! virtio-blk behind the virtio-mmio transport, programmed like a guest driver would (no KVM:
//! the registers are called directly and guest memory is an anonymous mapping).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use unicri_vmm::virtio::block::{Block, open_image};
use unicri_vmm::virtio::mmio::{MMIO_MAGIC, MMIO_VERSION, MmioTransport, status};
use unicri_vmm::virtio::{INT_CONFIG, INT_VRING, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_BASE: u64 = 0x1000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const QSIZE: u16 = 64;

fn r32(t: &MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn capacity(t: &MmioTransport) -> u64 {
    // virtio-mmio drivers read a 64-bit field as two 32-bit halves
    u64::from(r32(t, 0x100)) | u64::from(r32(t, 0x104)) << 32
}

fn image(sectors: u8, seed: u8) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..sectors {
        f.write_all(&[i.wrapping_add(seed); 512]).unwrap();
    }
    f.flush().unwrap();
    f
}

/// Header, one 512-byte data descriptor, status; at descriptor-table `offset`.
fn request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    offset: u16,
    kind: u32,
    sector: u64,
) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let data_flags = if kind == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        SplitDescriptor::new(HDR, 16, next, offset + 1),
        SplitDescriptor::new(DATA, 512, data_flags | next, offset + 2),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ]
    .map(RawDescriptor::from);
    vq.add_desc_chains(&descs, offset).unwrap();
}

#[test]
fn block_through_mmio_transport() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    // the driver's rings (the mock only lays them out; the transport makes the queue)
    let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), QSIZE);

    let img = image(16, 0x30);
    let block = Arc::new(Mutex::new(Block::empty("mmio-disk")));
    let irq = Interrupt::detached().unwrap();
    let mut t = MmioTransport::new(block.clone(), mem.clone(), irq.clone());

    // probe
    assert_eq!(r32(&t, 0x000), MMIO_MAGIC);
    assert_eq!(r32(&t, 0x004), MMIO_VERSION);
    assert_eq!(r32(&t, 0x008), 2);
    assert_eq!(capacity(&t), 0);

    // reset, ACKNOWLEDGE, DRIVER
    w32(&mut t, 0x070, 0);
    w32(&mut t, 0x070, status::ACKNOWLEDGE);
    w32(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);

    // features
    w32(&mut t, 0x014, 0);
    let lo = r32(&t, 0x010);
    w32(&mut t, 0x014, 1);
    let hi = r32(&t, 0x010);
    let offered = u64::from(hi) << 32 | u64::from(lo);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    assert_ne!(offered & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(offered & 1 << VIRTIO_BLK_F_RO, 0);
    let wanted = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
    w32(&mut t, 0x024, 0);
    w32(&mut t, 0x020, wanted as u32);
    w32(&mut t, 0x024, 1);
    w32(&mut t, 0x020, (wanted >> 32) as u32);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w32(&mut t, 0x070, s);
    assert_ne!(r32(&t, 0x070) & status::FEATURES_OK, 0);
    assert_eq!(block.lock().unwrap().acked_features(), wanted);

    // queue 0
    w32(&mut t, 0x030, 0);
    assert_eq!(r32(&t, 0x034), 256);
    assert_eq!(r32(&t, 0x044), 0);
    w32(&mut t, 0x038, u32::from(QSIZE));
    let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    let (l, h) = split(vq.desc_table_addr());
    w32(&mut t, 0x080, l);
    w32(&mut t, 0x084, h);
    let (l, h) = split(vq.avail_addr());
    w32(&mut t, 0x090, l);
    w32(&mut t, 0x094, h);
    let (l, h) = split(vq.used_addr());
    w32(&mut t, 0x0a0, l);
    w32(&mut t, 0x0a4, h);
    w32(&mut t, 0x044, 1);
    assert_eq!(r32(&t, 0x044), 1);

    // DRIVER_OK: the device is activated
    w32(&mut t, 0x070, s | status::DRIVER_OK);
    assert_eq!(r32(&t, 0x070), s | status::DRIVER_OK);
    assert_eq!(r32(&t, 0x070) & status::NEEDS_RESET, 0);

    // no media yet: a read fails
    request(&mem, &vq, 0, VIRTIO_BLK_T_IN, 0);
    w32(&mut t, 0x050, 0);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 1);
    assert_eq!(r32(&t, 0x060) & INT_VRING, INT_VRING);
    w32(&mut t, 0x064, INT_VRING);
    assert_eq!(r32(&t, 0x060), 0);

    // the container arrives: attach media, the guest sees INT_CONFIG and the new capacity
    block
        .lock()
        .unwrap()
        .set_media(Some((open_image(img.path(), false).unwrap(), false)))
        .unwrap();
    assert_eq!(r32(&t, 0x060) & INT_CONFIG, INT_CONFIG);
    w32(&mut t, 0x064, INT_CONFIG);
    assert_eq!(capacity(&t), 16);
    let mut seg_max = [0u8; 4];
    t.read(0x100 + 12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);

    // read sector 9
    request(&mem, &vq, 3, VIRTIO_BLK_T_IN, 9);
    w32(&mut t, 0x050, 0);
    assert_eq!(vq.used().idx().load(), 2);
    let e = vq.used().ring().ref_at(1).unwrap().load();
    assert_eq!((e.id(), e.len()), (3, 513));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let mut got = [0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0x39; 512]);
    assert_eq!(r32(&t, 0x060), INT_VRING);
    w32(&mut t, 0x064, INT_VRING);

    // write sector 1
    mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    request(&mem, &vq, 6, VIRTIO_BLK_T_OUT, 1);
    w32(&mut t, 0x050, 0);
    assert_eq!(vq.used().idx().load(), 3);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    let content = std::fs::read(img.path()).unwrap();
    assert_eq!(&content[512..1024], &[0x77; 512]);
    assert_eq!(&content[1024..1536], &[0x32; 512]);

    // after DRIVER_OK the queue cannot be reprogrammed
    w32(&mut t, 0x038, 8);
    w32(&mut t, 0x080, 0x8000);

    // detach
    block.lock().unwrap().set_media(None).unwrap();
    assert_eq!(r32(&t, 0x060) & INT_CONFIG, INT_CONFIG);
    assert_eq!(capacity(&t), 0);

    // driver reset: the device drops its queue; QueueNotify is ignored until DRIVER_OK again
    w32(&mut t, 0x070, 0);
    assert_eq!(r32(&t, 0x070), 0);
    assert_eq!(r32(&t, 0x060), 0);
    assert_eq!(r32(&t, 0x034), 256);
    request(&mem, &vq, 9, VIRTIO_BLK_T_IN, 0);
    w32(&mut t, 0x050, 0);
    assert_eq!(vq.used().idx().load(), 3);
    assert!(block.lock().unwrap().reset());
}

#[test]
fn read_only_disk_through_mmio_refuses_rogue_features() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let img = image(4, 0);
    let block = Block::open("ro", img.path(), true).unwrap();
    assert_ne!(block.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
    let block: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let mut t = MmioTransport::new(block, mem, Interrupt::detached().unwrap());
    w32(&mut t, 0x014, 0);
    assert_ne!(r32(&t, 0x010) & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(capacity(&t), 4);
    // a feature never offered (EVENT_IDX, bit 29): FEATURES_OK is refused
    w32(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    w32(&mut t, 0x024, 0);
    w32(&mut t, 0x020, 1 << 29);
    w32(&mut t, 0x024, 1);
    w32(&mut t, 0x020, 1);
    w32(
        &mut t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r32(&t, 0x070) & status::FEATURES_OK, 0);
}
