//! A PageDirectory: one x86_64 4-level page-table tree (a PML4 and the tables below it).
//!
//! The kernel's directory populates, at boot, every upper-half PML4 slot a kernel region spans;
//! every user directory copies the upper half, so kernel mappings added later (always at lower
//! levels, inside those regions) are shared. Only [`PageDirectory::new_kernel`] and
//! [`PageDirectory::new_user`] make directories, so every directory maps the kernel and may be
//! activated.

use crate::hardware::Hardware;
use crate::machine::{Machine, PteSlot};
use crate::seeded_bugs::{Bug, SeededBugs};
use crate::{MmError, PhysicalFrame};
use alloc::vec::Vec;
use shared_mm::pte::{sign_extend, PageLevel, PageTableEntry, PageTableFlags, ENTRIES_PER_TABLE};

/// First PML4 slot of the kernel half.
pub const KERNEL_HALF_FIRST_SLOT: usize = 256;

/// The levels walked from the PML4 to reach a 4 KiB leaf's table, and a 2 MiB leaf's table.
const TO_PT: &[PageLevel] = &[PageLevel::Pml4, PageLevel::Pdpt, PageLevel::Pd];
const TO_PD: &[PageLevel] = &[PageLevel::Pml4, PageLevel::Pdpt];

/// The first virtual address PML4 slot `slot` maps.
fn slot_va(slot: usize) -> u64 {
    sign_extend((slot as u64) << 39)
}

pub struct PageDirectory {
    pml4: PhysicalFrame,
    /// Every table below the PML4 this directory allocated, in order: what it owns, and frees.
    tables: Vec<PhysicalFrame>,
}

impl PageDirectory {
    /// The kernel's directory: the kernel half of the boot tables at `boot_pml4`, plus a PDPT
    /// for each of `kernel_slots` (the PML4 slots the kernel regions span) that they lack.
    pub fn new_kernel<M: Machine>(
        boot_pml4: PhysicalFrame,
        kernel_slots: impl IntoIterator<Item = usize>,
        hw: &mut Hardware<'_, M>,
    ) -> Result<Self, MmError> {
        let mut directory = PageDirectory {
            pml4: hw.zeroed_frame()?,
            tables: Vec::new(),
        };
        directory.copy_kernel_half(boot_pml4, 0, hw);
        for slot in kernel_slots {
            assert!((KERNEL_HALF_FIRST_SLOT..ENTRIES_PER_TABLE).contains(&slot));
            let entry = PageTableEntry::from_raw(hw.machine().read_pte(directory.pml4, slot));
            if !entry.contains(PageTableFlags::PRESENT) {
                let pdpt = hw.zeroed_frame()?;
                directory.tables.push(pdpt);
                let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
                let slot = directory.slot(directory.pml4, PageLevel::Pml4, slot, slot_va(slot));
                hw.machine()
                    .write_pte(slot, PageTableEntry::new(pdpt.0, flags).raw());
            }
        }
        Ok(directory)
    }

    /// A user directory sharing `kernel`'s upper half.
    pub fn new_user<M: Machine>(
        kernel: &PageDirectory,
        bugs: SeededBugs,
        hw: &mut Hardware<'_, M>,
    ) -> Result<Self, MmError> {
        let directory = PageDirectory {
            pml4: hw.zeroed_frame()?,
            tables: Vec::new(),
        };
        // Seeded bug otherwise: the copies get the user bit the user half's tables have.
        let user = bugs.has(Bug::KernelHalfUser) as u64 * PageTableFlags::USER.bits();
        directory.copy_kernel_half(kernel.pml4, user, hw);
        Ok(directory)
    }

    /// Copies the present kernel-half entries of `from` into this (zeroed) PML4, with the
    /// flag bits `added` (none but for a seeded bug). The half is read in one access, not
    /// entry by entry: most of it is empty, and every space and fork pays for this.
    fn copy_kernel_half<M: Machine>(
        &self,
        from: PhysicalFrame,
        added: u64,
        hw: &mut Hardware<'_, M>,
    ) {
        let mut half = [0u8; (ENTRIES_PER_TABLE - KERNEL_HALF_FIRST_SLOT) * 8];
        hw.machine()
            .read_frame(from, KERNEL_HALF_FIRST_SLOT * 8, &mut half);
        let entries = half
            .chunks_exact(8)
            .map(|raw| u64::from_le_bytes(raw.try_into().expect("chunks of 8 bytes")));
        for (index, value) in (KERNEL_HALF_FIRST_SLOT..).zip(entries) {
            if value != 0 {
                let slot = self.slot(self.pml4, PageLevel::Pml4, index, slot_va(index));
                hw.machine().write_pte(slot, value | added);
            }
        }
    }

    /// The root of the tables: the value to load into CR3.
    pub fn root(&self) -> PhysicalFrame {
        self.pml4
    }

    /// The value to load into CR3.
    pub fn cr3(&self) -> u64 {
        self.pml4.0
    }

    fn slot(&self, table: PhysicalFrame, level: PageLevel, index: usize, va: u64) -> PteSlot {
        PteSlot {
            directory: self.pml4,
            table,
            index,
            level,
            va,
        }
    }

    /// The slot of `va`'s entry at `level` in `table`.
    fn slot_of(&self, table: PhysicalFrame, level: PageLevel, va: u64) -> PteSlot {
        let index = level.index(va);
        let span_mask = !(level.entry_span() - 1);
        self.slot(table, level, index, va & span_mask)
    }

    /// Walks `levels` from the PML4 to the table below the last of them; `None` where a table
    /// is missing or a huge page covers `va`.
    fn find_table<M: Machine>(
        &self,
        machine: &M,
        va: u64,
        levels: &[PageLevel],
    ) -> Option<PhysicalFrame> {
        let mut table = self.pml4;
        for &level in levels {
            let entry = PageTableEntry::from_raw(machine.read_pte(table, level.index(va)));
            if !entry.contains(PageTableFlags::PRESENT) || entry.contains(PageTableFlags::HUGE_PAGE)
            {
                return None;
            }
            table = PhysicalFrame(entry.frame());
        }
        Some(table)
    }

    /// Walks `levels` from the PML4 to the table below the last of them, creating missing
    /// tables (user tables are user-accessible; the leaf decides the access).
    fn make_table<M: Machine>(
        &mut self,
        hw: &mut Hardware<'_, M>,
        va: u64,
        levels: &[PageLevel],
    ) -> Result<PhysicalFrame, MmError> {
        let mut table = self.pml4;
        for &level in levels {
            let entry = PageTableEntry::from_raw(hw.machine().read_pte(table, level.index(va)));
            if entry.contains(PageTableFlags::PRESENT) {
                // A 2 MiB/1 GiB kernel mapping holds no table to map into: asking for one
                // there is a kernel bug.
                assert!(
                    !entry.contains(PageTableFlags::HUGE_PAGE),
                    "mapping requested inside a huge page at {va:#x}"
                );
                table = PhysicalFrame(entry.frame());
                continue;
            }
            let next = hw.zeroed_frame()?;
            self.tables.push(next);
            let mut flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            if va < 0x0000_8000_0000_0000 {
                flags |= PageTableFlags::USER;
            }
            let slot = self.slot_of(table, level, va);
            hw.machine()
                .write_pte(slot, PageTableEntry::new(next.0, flags).raw());
            table = next;
        }
        Ok(table)
    }

    /// How many tables mapping every 4 KiB page of `[first, last]` would add: each missing PT,
    /// PD and PDPT on the way, once.
    pub fn tables_missing<M: Machine>(&self, first: u64, last: u64, machine: &M) -> usize {
        let (mut counted_pd, mut counted_pdpt) = (None, None);
        let mut missing = 0;
        let mut area = first & !(PageLevel::Pd.entry_span() - 1);
        while area <= last {
            let depth = [TO_PT, TO_PD, &TO_PD[..1]]
                .iter()
                .position(|levels| self.find_table(machine, area, levels).is_some())
                .unwrap_or(3);
            // depth 0: the PT exists; 1: the PD; 2: the PDPT; 3: nothing below the PML4.
            missing += usize::from(depth >= 1);
            let (pd, pdpt) = (area >> 30, area >> 39);
            if depth >= 2 && counted_pd != Some(pd) {
                missing += 1;
                counted_pd = Some(pd);
            }
            if depth >= 3 && counted_pdpt != Some(pdpt) {
                missing += 1;
                counted_pdpt = Some(pdpt);
            }
            match area.checked_add(PageLevel::Pd.entry_span()) {
                Some(next) => area = next,
                None => break,
            }
        }
        missing
    }

    /// Maps the 4 KiB page at `va` to `frame` with `flags` (PRESENT is added).
    pub fn map<M: Machine>(
        &mut self,
        va: u64,
        frame: PhysicalFrame,
        flags: PageTableFlags,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let pt = self.make_table(hw, va, TO_PT)?;
        let entry = PageTableEntry::new(frame.0, flags | PageTableFlags::PRESENT);
        hw.machine()
            .write_pte(self.slot_of(pt, PageLevel::Pt, va), entry.raw());
        Ok(())
    }

    /// Maps the 2 MiB page at `va` (2 MiB-aligned) to the block at `frame` with `flags`.
    pub fn map_2m<M: Machine>(
        &mut self,
        va: u64,
        frame: PhysicalFrame,
        flags: PageTableFlags,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let pd = self.make_table(hw, va, TO_PD)?;
        let flags = flags | PageTableFlags::PRESENT | PageTableFlags::HUGE_PAGE;
        let entry = PageTableEntry::new(frame.0, flags);
        hw.machine()
            .write_pte(self.slot_of(pd, PageLevel::Pd, va), entry.raw());
        Ok(())
    }

    /// Clears the PTE of `va`; returns the frame it mapped. The caller flushes the TLB.
    pub fn unmap<M: Machine>(
        &mut self,
        va: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Option<PhysicalFrame> {
        let pt = self.find_table(hw.machine_ref(), va, TO_PT)?;
        let slot = self.slot_of(pt, PageLevel::Pt, va);
        let entry = PageTableEntry::from_raw(hw.machine().read_pte(pt, slot.index));
        if !entry.contains(PageTableFlags::PRESENT) {
            return None;
        }
        hw.machine().write_pte(slot, 0);
        Some(PhysicalFrame(entry.frame()))
    }

    /// The frame and flags `va` maps to, if present.
    pub fn translate<M: Machine>(
        &self,
        va: u64,
        machine: &M,
    ) -> Option<(PhysicalFrame, PageTableFlags)> {
        let pt = self.find_table(machine, va, TO_PT)?;
        let entry = PageTableEntry::from_raw(machine.read_pte(pt, PageLevel::Pt.index(va)));
        entry
            .contains(PageTableFlags::PRESENT)
            .then(|| (PhysicalFrame(entry.frame()), entry.flags()))
    }

    /// The frames this directory owns: its PML4, then every table it allocated.
    pub fn frames(&self) -> impl Iterator<Item = PhysicalFrame> + '_ {
        core::iter::once(self.pml4).chain(self.tables.iter().copied())
    }

    /// Frees every table this directory allocated, and the PML4, once no CPU may cache them
    /// (after the operation's shootdown). The leaf frames must already be released.
    pub fn destroy_user<M: Machine>(&mut self, hw: &mut Hardware<'_, M>) {
        for table in core::mem::take(&mut self.tables) {
            hw.free_table_after_shootdown(table);
        }
        hw.free_table_after_shootdown(self.pml4);
    }
}
