//! Boot page tables: the direct map of all RAM at `PHYSMAP_BASE` and the kernel image at
//! `KERNEL_VIRT_BASE + phys`, both with 2 MiB pages, built with the same [`PageTableBuilder`]
//! the walker's tests use. The user half stays empty.

use shared_mm::boot_info::{BOOT_PML4_ADDR, KERNEL_VIRT_BASE, PHYSMAP_BASE};
use shared_mm::pte::{PageLevel, PageTableFlags};
use shared_mm::trace::TRACE_ADDR;
use std::fmt;
use vm_memory::GuestMemoryMmap;
use x86_paging::page_walk::{BuildError, PageTableBuilder};

const TWO_MIB: u64 = 2 << 20;
const ONE_GIB: u64 = 1 << 30;

/// Why the boot tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTablesError {
    /// The kernel image ends past the first GiB, which the kernel window covers.
    KernelPastWindow { end: u64 },
    /// The tables do not fit their area (up to the flush trace), or memory failed.
    Build(BuildError),
}

impl fmt::Display for BootTablesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootTablesError::KernelPastWindow { end } => {
                write!(
                    f,
                    "kernel image ends at {end:#x}, past the 1 GiB kernel window"
                )
            }
            BootTablesError::Build(BuildError::OutOfTables) => {
                f.write_str("the boot tables overran their area, up to the flush trace")
            }
            BootTablesError::Build(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BootTablesError {}

impl From<BuildError> for BootTablesError {
    fn from(e: BuildError) -> Self {
        BootTablesError::Build(e)
    }
}

/// The 2 MiB-aligned physical span the kernel window maps for an image at `[start, end)`.
pub fn kernel_window(start: u64, end: u64) -> (u64, u64) {
    (start & !(TWO_MIB - 1), end.next_multiple_of(TWO_MIB))
}

/// Writes the boot tables for `ram_size` bytes of RAM and a kernel image at physical
/// `[kernel_start, kernel_end)`, from `BOOT_PML4_ADDR` up to the flush trace; returns CR3.
pub fn build_boot_page_tables(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel_start: u64,
    kernel_end: u64,
) -> Result<u64, BootTablesError> {
    let (window_start, window_end) = kernel_window(kernel_start, kernel_end);
    if window_end > ONE_GIB.min(ram_size.next_multiple_of(TWO_MIB)) {
        return Err(BootTablesError::KernelPastWindow { end: kernel_end });
    }
    let table_flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let mut tables =
        PageTableBuilder::with_table_flags(mem, BOOT_PML4_ADDR..TRACE_ADDR, table_flags)?;
    let leaf_flags = PageTableFlags::WRITABLE | PageTableFlags::GLOBAL;
    // The direct map is data only; the kernel window holds code.
    let data_flags = leaf_flags | PageTableFlags::NO_EXECUTE;
    let ram = ram_size.next_multiple_of(TWO_MIB);
    tables.map(PHYSMAP_BASE, 0, ram, PageLevel::Pd, data_flags)?;
    let window = window_end - window_start;
    let window_va = KERNEL_VIRT_BASE + window_start;
    tables.map(window_va, window_start, window, PageLevel::Pd, leaf_flags)?;
    Ok(tables.cr3())
}
