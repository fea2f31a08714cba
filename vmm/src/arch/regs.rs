//! Special and general registers for 64-bit entry at the kernel's ELF entry point.

use super::gdt::segment_from_entry;
use crate::error::VmmError;
use guest_boot::gdt::{ENTRY_GDT, KERNEL_CS, KERNEL_DS};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use shared_mm::boot_info::{BOOT_GDT_ADDR, BOOT_INFO_ADDR, PHYSMAP_BASE};
use shared_mm::smp::ap_stack_top;

const CR0_ENTRY: u64 = 0x8005_0033; // PG, WP, NE, ET, MP, PE
const CR4_PAE: u64 = 1 << 5;
const EFER_LME_LMA: u64 = 0x500;
const EFER_NXE: u64 = 1 << 11;

/// Puts vCPU `cpu` in 64-bit mode with paging on `cr3`, about to run `entry` with
/// `rdi` = the boot info and `rsi` = `cpu`; an AP (`cpu` > 0) also gets `rsp` at the top of its
/// kernel stack, in the direct map (`shared_mm::smp`). CPU 0 sets up its own stack.
pub fn setup_long_mode(vcpu: &VcpuFd, cr3: u64, entry: u64, cpu: u32) -> Result<(), VmmError> {
    let kvm = |what| move |source| VmmError::Kvm { what, source };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (ENTRY_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment_from_entry(KERNEL_CS, ENTRY_GDT[1]);
    let data = segment_from_entry(KERNEL_DS, ENTRY_GDT[2]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = CR0_ENTRY;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME_LMA | EFER_NXE;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry,
        rdi: BOOT_INFO_ADDR,
        rsi: cpu.into(),
        rsp: if cpu == 0 {
            0
        } else {
            PHYSMAP_BASE + ap_stack_top(cpu)
        },
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// A readable dump of the vCPU's registers, for fault reports.
pub fn dump(vcpu: &VcpuFd) -> String {
    let (regs, sregs) = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => return format!("  (registers unavailable: {e})"),
    };
    format!(
        "  rip={:#018x} rsp={:#018x} rflags={:#x}\n  \
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  \
         rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  \
         cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n  \
         cs={:#x} (dpl {}) ss={:#x} idt={:#x}/{:#x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rbp,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.cs.selector,
        sregs.cs.dpl,
        sregs.ss.selector,
        sregs.idt.base,
        sregs.idt.limit
    )
}
