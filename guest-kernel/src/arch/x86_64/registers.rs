//! Control registers and TLB maintenance.

use core::arch::asm;

/// The faulting address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// The current page-table root.
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Switches to the page tables rooted at physical `pml4`.
///
/// # Safety
/// `pml4` must be a valid PML4 whose kernel half maps the running kernel, its stacks and data.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: the caller guarantees the new tables map everything the kernel touches next.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) }
}

/// Drops the TLB entry for the page containing `va` (in the current address space).
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a TLB entry is always safe; at worst it costs a page walk.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}
