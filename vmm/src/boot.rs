//! Guest memory and the kernel: loading an ELF `vmlinux` (entered through PVH when it has the PVH
//! note, else in 64-bit long mode) or a bzImage (64-bit boot protocol), and writing what the
//! entry expects: `hvm_start_info` + memory map (PVH) or the zero page with its e820 map (Linux
//! boot protocol), the command line, an initramfs, GDT and identity page tables.

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, load_cmdline};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::VmmError;
use crate::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// How the vCPUs enter the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode with identity page tables, `rsi` = zero page.
    Long64,
}

/// Where and how to enter the loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry address.
    pub addr: GuestAddress,
    /// The mode.
    pub mode: EntryMode,
}

/// Makes guest RAM of `mem` bytes (anonymous, private, skipping the MMIO gap).
pub fn guest_memory(mem: u64) -> Result<GuestMemoryMmap, VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem)
        .into_iter()
        .map(|(a, l)| (GuestAddress(a), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::Memory(e.to_string()))
}

fn mem_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Memory(e.to_string())
}

/// Loads the kernel at `path` (ELF or bzImage) and returns its entry.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<(Entry, u64), VmmError> {
    let kerr = |message: String| VmmError::Kernel {
        path: path.display().to_string(),
        message,
    };
    let mut f = File::open(path).map_err(|e| kerr(e.to_string()))?;
    let mut magic = [0u8; 4];
    let is_elf = std::io::Read::read_exact(&mut f, &mut magic).is_ok() && magic == *b"\x7fELF";
    let himem = Some(GuestAddress(HIMEM_START));
    if is_elf {
        let r = Elf::load(mem, None, &mut f, himem).map_err(|e| kerr(e.to_string()))?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Entry {
                addr,
                mode: EntryMode::Pvh,
            },
            _ => Entry {
                addr: r.kernel_load,
                mode: EntryMode::Long64,
            },
        };
        return Ok((entry, r.kernel_end));
    }
    let r = BzImage::load(mem, None, &mut f, himem)
        .map_err(|e| kerr(format!("neither ELF nor bzImage ({e})")))?;
    // the 64-bit entry of a bzImage is 0x200 past its protected-mode code
    Ok((
        Entry {
            addr: r.kernel_load.unchecked_add(0x200),
            mode: EntryMode::Long64,
        },
        r.kernel_end,
    ))
}

/// Loads an initramfs at the top of low RAM (page aligned); returns (address, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path) -> Result<(u64, u64), VmmError> {
    let data = std::fs::read(path).map_err(|source| VmmError::Io {
        what: format!("read initrd {}", path.display()),
        source,
    })?;
    let low_end = mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    let size = data.len() as u64;
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a > HIMEM_START)
        .ok_or_else(|| VmmError::Config(format!("initrd of {size} bytes does not fit")))?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(mem_err)?;
    Ok((addr, size))
}

/// Writes the command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), VmmError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| VmmError::Config(e.to_string()))?;
    if !cmdline.is_empty() {
        c.insert_str(cmdline)
            .map_err(|e| VmmError::Config(format!("command line: {e}")))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c).map_err(mem_err)
}

/// The e820 map of `mem`: low RAM, the EBDA..1 MiB hole, high RAM (split around the MMIO gap).
fn e820(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut out = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    let end = mem.last_addr().raw_value() + 1;
    let low_end = end.min(MMIO_GAP_START);
    out.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    if end > MMIO_GAP_END {
        out.push((MMIO_GAP_END, end - MMIO_GAP_END, E820_RAM));
    }
    out
}

/// Writes `hvm_start_info`, its memory map and the initrd module (PVH entry).
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), VmmError> {
    let map = e820(mem);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len > 0 { CMDLINE_START } else { 0 },
        memmap_paddr: MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..hvm_start_info::default()
    };
    if let Some((addr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr: addr,
            size,
            ..hvm_modlist_entry::default()
        };
        mem.write_obj(m, GuestAddress(MODLIST_START))
            .map_err(mem_err)?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
    }
    for (i, (addr, size, kind)) in map.into_iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        };
        let at = MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(e, GuestAddress(at)).map_err(mem_err)?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(mem_err)
}

/// Writes the zero page (Linux 64-bit boot protocol), keeping a bzImage's setup header.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    setup_header: Option<linux_loader::bootparam::setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), VmmError> {
    let mut p = boot_params::default();
    if let Some(h) = setup_header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let map = e820(mem);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    p.e820_entries = map.len() as u8;
    mem.write_obj(p, GuestAddress(ZERO_PAGE_START))
        .map_err(mem_err)
}

/// GDT entries: null, code, data, TSS (Firecracker's), for `mode`.
pub fn gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        // 32-bit: G, D/B, P, S, type 0xb
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
        // 64-bit: G, L, P, S, type 0xb
        EntryMode::Long64 => gdt_entry(0xa09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// A GDT entry from flags (access byte + flags nibble), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), VmmError> {
    for (i, e) in gdt(mode).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_OFFSET + (i as u64) * 8))
            .map_err(mem_err)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_OFFSET))
        .map_err(mem_err)
}

/// Identity-maps the first GiB with 2 MiB pages (64-bit entry).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(mem_err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(mem_err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(mem_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_firecracker() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn e820_has_the_low_hole_and_skips_the_gap() {
        let mem = guest_memory(64 << 20).expect("mem");
        let map = e820(&mem);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(map[2], (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(map.len(), 3);
    }
}
