//! A PageDirectory: one x86_64 4-level page-table tree (a PML4 and the tables below it).
//!
//! The kernel's directory populates, at boot, every upper-half PML4 slot a kernel region spans;
//! every user directory copies the upper half, so kernel mappings added later (always at lower
//! levels, inside those regions) are shared.

use super::frame_allocator::FrameAllocator;
use super::{MmError, PhysicalFrame};
use crate::arch::x86_64::physmap::{read_entry, write_entry, zero_frame};
use shared_mm::pte::{PageLevel, PageTableEntry, PageTableFlags, ENTRIES_PER_TABLE};

/// First PML4 slot of the kernel half.
pub const KERNEL_HALF_FIRST_SLOT: usize = 256;

pub struct PageDirectory {
    pml4: PhysicalFrame,
}

fn new_table(frames: &mut FrameAllocator) -> Result<PhysicalFrame, MmError> {
    let frame = frames.allocate()?;
    zero_frame(frame.0);
    Ok(frame)
}

impl PageDirectory {
    /// The kernel's directory: the boot tables' kernel half, plus a PDPT for each of
    /// `kernel_slots` (the PML4 slots the kernel regions span) that the boot tables lack.
    pub fn new_kernel(
        boot_pml4: u64,
        kernel_slots: impl IntoIterator<Item = usize>,
        frames: &mut FrameAllocator,
    ) -> Result<Self, MmError> {
        let pml4 = new_table(frames)?;
        for slot in KERNEL_HALF_FIRST_SLOT..ENTRIES_PER_TABLE {
            write_entry(pml4.0, slot, read_entry(boot_pml4, slot));
        }
        for slot in kernel_slots {
            assert!((KERNEL_HALF_FIRST_SLOT..ENTRIES_PER_TABLE).contains(&slot));
            if read_entry(pml4.0, slot) & PageTableFlags::PRESENT.bits() == 0 {
                let pdpt = new_table(frames)?;
                let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
                write_entry(pml4.0, slot, PageTableEntry::new(pdpt.0, flags).raw());
            }
        }
        Ok(PageDirectory { pml4 })
    }

    /// A user directory sharing `kernel`'s upper half.
    pub fn new_user(kernel: &PageDirectory, frames: &mut FrameAllocator) -> Result<Self, MmError> {
        let pml4 = new_table(frames)?;
        for slot in KERNEL_HALF_FIRST_SLOT..ENTRIES_PER_TABLE {
            write_entry(pml4.0, slot, read_entry(kernel.pml4.0, slot));
        }
        Ok(PageDirectory { pml4 })
    }

    /// The value to load into CR3.
    pub fn cr3(&self) -> u64 {
        self.pml4.0
    }

    /// Walks to the PT covering `va`, creating missing tables when `frames` is given.
    fn leaf_table(
        &self,
        va: u64,
        frames: Option<&mut FrameAllocator>,
    ) -> Result<Option<u64>, MmError> {
        self.table_at(
            va,
            &[PageLevel::Pml4, PageLevel::Pdpt, PageLevel::Pd],
            frames,
        )
    }

    /// Walks down `levels` from the PML4 to the table below the last of them, creating missing
    /// tables when `frames` is given.
    fn table_at(
        &self,
        va: u64,
        levels: &[PageLevel],
        mut frames: Option<&mut FrameAllocator>,
    ) -> Result<Option<u64>, MmError> {
        let mut table = self.pml4.0;
        let user = va < 0x0000_8000_0000_0000;
        for &level in levels {
            let index = level.index(va);
            let entry = PageTableEntry::from_raw(read_entry(table, index));
            if entry.contains(PageTableFlags::PRESENT) {
                if entry.contains(PageTableFlags::HUGE_PAGE) {
                    // A 2 MiB/1 GiB kernel mapping: there is no 4 KiB leaf to find, and asking
                    // for one to be created there is a kernel bug.
                    assert!(
                        frames.is_none(),
                        "4 KiB mapping requested inside a huge page at {va:#x}"
                    );
                    return Ok(None);
                }
                table = entry.frame();
                continue;
            }
            let Some(frames) = frames.as_deref_mut() else {
                return Ok(None);
            };
            let next = new_table(frames)?;
            let mut flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            if user {
                flags |= PageTableFlags::USER;
            }
            write_entry(table, index, PageTableEntry::new(next.0, flags).raw());
            table = next.0;
        }
        Ok(Some(table))
    }

    /// Maps the 4 KiB page at `va` to `frame` with `flags` (PRESENT is added).
    pub fn map(
        &mut self,
        va: u64,
        frame: PhysicalFrame,
        flags: PageTableFlags,
        frames: &mut FrameAllocator,
    ) -> Result<(), MmError> {
        let pt = self
            .leaf_table(va, Some(frames))?
            .expect("tables were created");
        write_entry(
            pt,
            PageLevel::Pt.index(va),
            PageTableEntry::new(frame.0, flags | PageTableFlags::PRESENT).raw(),
        );
        Ok(())
    }

    /// Maps the 2 MiB page at `va` (2 MiB-aligned) to the block at `frame` with `flags`.
    pub fn map_2m(
        &mut self,
        va: u64,
        frame: PhysicalFrame,
        flags: PageTableFlags,
        frames: &mut FrameAllocator,
    ) -> Result<(), MmError> {
        let pd = self
            .table_at(va, &[PageLevel::Pml4, PageLevel::Pdpt], Some(frames))?
            .expect("tables were created");
        let flags = flags | PageTableFlags::PRESENT | PageTableFlags::HUGE_PAGE;
        write_entry(
            pd,
            PageLevel::Pd.index(va),
            PageTableEntry::new(frame.0, flags).raw(),
        );
        Ok(())
    }

    /// Clears the PTE of `va`; returns the frame it mapped. The caller flushes the TLB.
    pub fn unmap(&mut self, va: u64) -> Option<PhysicalFrame> {
        let pt = self.leaf_table(va, None).ok()??;
        let index = PageLevel::Pt.index(va);
        let entry = PageTableEntry::from_raw(read_entry(pt, index));
        if !entry.contains(PageTableFlags::PRESENT) {
            return None;
        }
        write_entry(pt, index, 0);
        Some(PhysicalFrame(entry.frame()))
    }

    /// The frame and flags `va` maps to, if present.
    pub fn translate(&self, va: u64) -> Option<(PhysicalFrame, PageTableFlags)> {
        let pt = self.leaf_table(va, None).ok()??;
        let entry = PageTableEntry::from_raw(read_entry(pt, PageLevel::Pt.index(va)));
        entry
            .contains(PageTableFlags::PRESENT)
            .then(|| (PhysicalFrame(entry.frame()), entry.flags()))
    }

    /// Frees every user-half table and the PML4. The leaf frames must already be released.
    pub fn destroy_user(self, frames: &mut FrameAllocator) {
        fn free_below(table: u64, level: PageLevel, frames: &mut FrameAllocator) {
            let Some(lower) = level.lower() else { return };
            for index in 0..ENTRIES_PER_TABLE {
                let entry = PageTableEntry::from_raw(read_entry(table, index));
                if entry.contains(PageTableFlags::PRESENT)
                    && !entry.contains(PageTableFlags::HUGE_PAGE)
                {
                    free_below(entry.frame(), lower, frames);
                    frames
                        .free(PhysicalFrame(entry.frame()))
                        .expect("page table frame was allocated");
                }
            }
        }
        for slot in 0..KERNEL_HALF_FIRST_SLOT {
            let entry = PageTableEntry::from_raw(read_entry(self.pml4.0, slot));
            if entry.contains(PageTableFlags::PRESENT) {
                free_below(entry.frame(), PageLevel::Pdpt, frames);
                frames
                    .free(PhysicalFrame(entry.frame()))
                    .expect("page table frame was allocated");
            }
        }
        frames.free(self.pml4).expect("PML4 frame was allocated");
    }
}
