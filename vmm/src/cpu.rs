//! vCPU set-up: CPUID, MSRs, FPU, LAPIC LINT pins and the registers of each entry mode.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::boot::{EntryMode, gdt};
use crate::error::VmmError;
use crate::host::KvmFlavor;
use crate::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// The CPUID a guest with `vcpus` vCPUs gets: KVM's supported set, APIC ids per vCPU, and on PVM
/// the host's hypervisor leaves (0x4000_0000..) unchanged (the guest finds PVM there).
pub fn cpuid(kvm: &Kvm, flavor: KvmFlavor) -> Result<CpuId, VmmError> {
    let mut c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    if flavor == KvmFlavor::Pvm {
        let max = host_cpuid(0x4000_0000).eax.clamp(0x4000_0000, 0x4000_00ff);
        let entries = c.as_mut_slice();
        for e in entries.iter_mut() {
            if (0x4000_0000..=max).contains(&e.function) {
                let h = host_cpuid(e.function);
                (e.eax, e.ebx, e.ecx, e.edx) = (h.eax, h.ebx, h.ecx, h.edx);
            }
        }
    }
    Ok(c)
}

fn host_cpuid(leaf: u32) -> std::arch::x86_64::CpuidResult {
    std::arch::x86_64::__cpuid_count(leaf, 0)
}

/// Sets one vCPU's CPUID (APIC id = `id`).
pub fn set_cpuid(vcpu: &VcpuFd, base: &CpuId, id: u8, vcpus: u8) -> Result<(), VmmError> {
    let mut c = base.clone();
    for e in c.as_mut_slice().iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(vcpus) << 16);
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&c)
        .map_err(VmmError::ioctl("KVM_SET_CPUID2"))
}

/// The MSRs Firecracker sets at boot.
pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(0x174, 0),             // IA32_SYSENTER_CS
        entry(0x175, 0),             // IA32_SYSENTER_ESP
        entry(0x176, 0),             // IA32_SYSENTER_EIP
        entry(0xc000_0081, 0),       // STAR
        entry(0xc000_0083, 0),       // CSTAR
        entry(0xc000_0102, 0),       // KERNEL_GS_BASE
        entry(0xc000_0084, 0),       // SYSCALL_MASK
        entry(0xc000_0082, 0),       // LSTAR
        entry(0x10, 0),              // IA32_TSC
        entry(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        entry(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| VmmError::Config(format!("msr list: {e:?}")))?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(VmmError::ioctl("KVM_SET_MSRS"))?;
    if n != entries.len() {
        tracing::debug!(
            set = n,
            of = entries.len(),
            "not every boot MSR was accepted"
        );
    }
    Ok(())
}

/// x87/SSE defaults.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(VmmError::ioctl("KVM_SET_FPU"))
}

/// LINT0 = ExtINT, LINT1 = NMI (what a BIOS leaves for the kernel).
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_NMI: u32 = 0x4;
    const MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic().map_err(VmmError::ioctl("KVM_GET_LAPIC"))?;
    let mut set = |reg: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[reg + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *x as _;
        }
    };
    set(APIC_LVT0, MODE_EXTINT);
    set(APIC_LVT1, MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(VmmError::ioctl("KVM_SET_LAPIC"))
}

fn segment(entry: u64, index: u16) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let l = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (l << 12) | 0xfff
            } else {
                l
            }
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Registers for entering at `entry` in `mode`.
pub fn set_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), VmmError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(VmmError::ioctl("KVM_GET_SREGS"))?;
    let table = gdt(mode);
    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    let tss = segment(table[3], 3);
    sregs.gdt.base = BOOT_GDT_OFFSET;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_OFFSET;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = PVH_INFO_START;
        }
        EntryMode::Long64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(VmmError::ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs)
        .map_err(VmmError::ioctl("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_gdt_entries() {
        let s = segment(0x00af_9b00_0000_ffff, 1);
        assert_eq!(
            (s.l, s.db, s.g, s.type_, s.present, s.s),
            (1, 0, 1, 0xb, 1, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.selector, 8);
        let d = segment(0x00cf_9300_0000_ffff, 2);
        assert_eq!((d.l, d.db, d.type_), (0, 1, 3));
    }
}
