//! Guest physical memory layout (x86_64), Firecracker's.

/// Where the GDT goes.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// Where the IDT goes.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list.
pub const MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack of the 64-bit boot.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables of the 64-bit boot: PML4, PDPTE, PDE.
pub const PML4_START: u64 = 0x9000;
/// PDPTE.
pub const PDPTE_START: u64 = 0xa000;
/// PDE.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA (end of low RAM).
pub const EBDA_START: u64 = 0x9fc00;
/// High memory: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x0010_0000;
/// The 32-bit MMIO gap (devices) starts here; RAM above it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// KVM's TSS (three pages below 4 GiB, inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// RAM ranges of a guest with `mem` bytes: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    if mem <= MMIO_GAP_START {
        vec![(0, mem)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
