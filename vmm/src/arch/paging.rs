//! Boot page tables: the direct map of all RAM at `PHYSMAP_BASE` and the kernel image at
//! `KERNEL_VIRT_BASE + phys`, both with 2 MiB pages. The user half stays empty.

use shared_mm::boot_info::{BOOT_PML4_ADDR, KERNEL_VIRT_BASE, PHYSMAP_BASE};
use shared_mm::pte::{pd_index, pdpt_index, pml4_index, PageTableEntry, PageTableFlags};
use shared_mm::trace::TRACE_ADDR;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TWO_MIB: u64 = 2 << 20;
const ONE_GIB: u64 = 1 << 30;

/// The 2 MiB-aligned physical span the kernel window maps for an image at `[start, end)`.
pub fn kernel_window(start: u64, end: u64) -> (u64, u64) {
    (start & !(TWO_MIB - 1), end.next_multiple_of(TWO_MIB))
}

/// Writes the boot tables for `ram_size` bytes of RAM and a kernel image at physical
/// `[kernel_start, kernel_end)`; returns the CR3 value.
pub fn build_boot_page_tables(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel_start: u64,
    kernel_end: u64,
) -> Result<u64, String> {
    let mut next_table = BOOT_PML4_ADDR + 0x1000;
    let mut alloc_table = || {
        let t = next_table;
        next_table += 0x1000;
        t
    };
    let table_flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let leaf_flags = table_flags | PageTableFlags::HUGE_PAGE | PageTableFlags::GLOBAL;
    // The direct map is data only; the kernel window holds code.
    let data_flags = leaf_flags | PageTableFlags::NO_EXECUTE;
    let write = |addr: u64, index: usize, entry: PageTableEntry| {
        mem.write_obj(entry.raw(), GuestAddress(addr + 8 * index as u64))
            .map_err(|e| format!("writing boot page table at {addr:#x}: {e}"))
    };

    // Direct map: one PDPT under PML4[256], one PD per GiB of RAM.
    let physmap_pdpt = alloc_table();
    write(
        BOOT_PML4_ADDR,
        pml4_index(PHYSMAP_BASE),
        PageTableEntry::new(physmap_pdpt, table_flags),
    )?;
    let gibs = ram_size.div_ceil(ONE_GIB);
    for gib in 0..gibs {
        let pd = alloc_table();
        write(
            physmap_pdpt,
            gib as usize,
            PageTableEntry::new(pd, table_flags),
        )?;
        for i in 0..512u64 {
            let phys = gib * ONE_GIB + i * TWO_MIB;
            if phys >= ram_size {
                break;
            }
            write(pd, i as usize, PageTableEntry::new(phys, data_flags))?;
        }
    }

    // Kernel window: KERNEL_VIRT_BASE + p -> p over the image's 2 MiB pages (inside the first GiB).
    let kernel_pdpt = alloc_table();
    let kernel_pd = alloc_table();
    write(
        BOOT_PML4_ADDR,
        pml4_index(KERNEL_VIRT_BASE),
        PageTableEntry::new(kernel_pdpt, table_flags),
    )?;
    write(
        kernel_pdpt,
        pdpt_index(KERNEL_VIRT_BASE),
        PageTableEntry::new(kernel_pd, table_flags),
    )?;
    let (window_start, window_end) = kernel_window(kernel_start, kernel_end);
    if window_end > ONE_GIB.min(ram_size.next_multiple_of(TWO_MIB)) {
        return Err(format!(
            "kernel image ends at {kernel_end:#x}, past the 1 GiB kernel window"
        ));
    }
    for phys in (window_start..window_end).step_by(TWO_MIB as usize) {
        let index = pd_index(KERNEL_VIRT_BASE + phys);
        write(kernel_pd, index, PageTableEntry::new(phys, leaf_flags))?;
    }
    if next_table > TRACE_ADDR {
        return Err(format!(
            "boot page tables overran their area, up to the flush trace ({next_table:#x})"
        ));
    }
    Ok(BOOT_PML4_ADDR)
}
