//! The direct map of guest RAM at `PHYSMAP_BASE`, set up by the VMM's boot page tables.

use shared_mm::boot_info::PHYSMAP_BASE;

/// Virtual address of physical address `phys` in the direct map.
pub fn virt(phys: u64) -> u64 {
    PHYSMAP_BASE + phys
}

/// A read-only byte slice over physical memory `[phys, phys + len)` through the direct map.
///
/// # Safety
/// The range must be guest RAM that nothing writes while the slice lives (for example the
/// boot-info page: the VMM writes it before any CPU starts, and it is marked reserved).
pub unsafe fn slice(phys: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller guarantees the range is RAM, direct-mapped and not written.
    unsafe { core::slice::from_raw_parts(virt(phys) as *const u8, len) }
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

/// Reads entry `index` of the page table in physical frame `table`.
///
/// Page-table frames come from the frame allocator and belong to one `PageDirectory`, which is
/// the only caller; the direct map covers all RAM.
pub fn read_entry(table: u64, index: usize) -> u64 {
    debug_assert!(index < 512 && table.is_multiple_of(4096));
    // SAFETY: `table` is a page-aligned RAM frame (see above) and `index < 512`, so the address
    // is inside it and 8-byte aligned. Volatile: the CPU's page walker reads these too.
    unsafe { core::ptr::read_volatile((virt(table) as *const u64).add(index)) }
}

/// Writes entry `index` of the page table in physical frame `table`.
pub fn write_entry(table: u64, index: usize, value: u64) {
    debug_assert!(index < 512 && table.is_multiple_of(4096));
    // SAFETY: as in `read_entry`; the owning PageDirectory serializes all writes.
    unsafe { core::ptr::write_volatile((virt(table) as *mut u64).add(index), value) }
}

/// Fills the 4 KiB frame at `frame` with zeros.
pub fn zero_frame(frame: u64) {
    debug_assert!(frame.is_multiple_of(4096));
    // SAFETY: `frame` is a RAM frame the caller owns (just taken from the frame allocator);
    // `rep stosq` writes exactly 512 quadwords from its start. One string instruction rather
    // than a store loop: ring-0 code is emulated instruction by instruction on this host.
    unsafe {
        core::arch::asm!(
            "rep stosq",
            inout("rdi") virt(frame) => _,
            inout("rcx") 512u64 => _,
            in("rax") 0u64,
            options(nostack, preserves_flags)
        )
    }
}

/// Copies `bytes` into the frame at `frame`, starting at `offset`.
pub fn write_bytes(frame: u64, offset: usize, bytes: &[u8]) {
    assert!(frame.is_multiple_of(4096) && offset + bytes.len() <= 4096);
    // SAFETY: the destination lies inside one RAM frame the caller owns.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (virt(frame) as *mut u8).add(offset),
            bytes.len(),
        )
    }
}

/// Copies bytes of the frame at `frame`, from `offset`, into `buf`.
pub fn read_bytes(frame: u64, offset: usize, buf: &mut [u8]) {
    assert!(frame.is_multiple_of(4096) && offset + buf.len() <= 4096);
    // SAFETY: the source lies inside one RAM frame, which the direct map covers.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (virt(frame) as *const u8).add(offset),
            buf.as_mut_ptr(),
            buf.len(),
        )
    }
}

/// Copies the 4 KiB frame at `from` over the frame at `to`.
pub fn copy_frame(from: u64, to: u64) {
    assert!(from.is_multiple_of(4096) && to.is_multiple_of(4096) && from != to);
    // SAFETY: both are whole, distinct RAM frames (so they do not overlap) that the caller owns;
    // `rep movsq` copies exactly 512 quadwords. One string instruction, as in `zero_frame`.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rsi") virt(from) => _,
            inout("rdi") virt(to) => _,
            inout("rcx") 512u64 => _,
            options(nostack, preserves_flags)
        )
    }
}
