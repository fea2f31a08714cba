//! The direct map of guest RAM at `PHYSMAP_BASE`, set up by the VMM's boot page tables.

use shared_mm::boot_info::PHYSMAP_BASE;

/// Virtual address of physical address `phys` in the direct map.
pub fn virt(phys: u64) -> u64 {
    PHYSMAP_BASE + phys
}

/// A byte slice over physical memory `[phys, phys + len)` through the direct map.
///
/// # Safety
/// The range must be guest RAM that nothing else accesses while the slice lives, and that no
/// allocator hands out (for example the mailbox or the boot-info page, both marked reserved).
pub unsafe fn slice_mut(phys: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: the caller guarantees the range is RAM, direct-mapped and not aliased.
    unsafe { core::slice::from_raw_parts_mut(virt(phys) as *mut u8, len) }
}
