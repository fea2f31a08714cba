//! Builds x86_64 page tables in guest memory: the guest's boot tables, and fixtures for the
//! walker's tests and benches.
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

use shared_mm::pte::{
    is_canonical, PageLevel, PageTableEntry, PageTableFlags, ENTRIES_PER_TABLE, TABLE_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{entry_addr, read_entry, ENTRY_SIZE};

/// Why page tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The pool given for tables is used up.
    OutOfTables,
    /// Guest memory at this address could not be read or written.
    Memory {
        /// The guest-physical address.
        addr: u64,
    },
    /// The table pool does not start on a 4 KiB boundary.
    PoolMisaligned {
        /// The start of the pool.
        start: u64,
    },
    /// An address or length is not a multiple of the page size, or the length is zero.
    Misaligned {
        /// The virtual address asked for.
        va: u64,
        /// The physical address asked for.
        phys: u64,
        /// The length asked for.
        len: u64,
    },
    /// The range is not inside one canonical half.
    NonCanonical {
        /// The virtual address asked for.
        va: u64,
    },
    /// A page of this level cannot be a leaf (the PML4).
    NotALeafLevel,
    /// A huge page is mapped where a table is needed.
    HugePageInTheWay {
        /// The virtual address being mapped or updated.
        va: u64,
        /// The level of the huge entry.
        level: PageLevel,
    },
    /// No table exists on the path to the entry to update.
    NotMapped {
        /// The virtual address being updated.
        va: u64,
        /// The level of the missing entry.
        level: PageLevel,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfTables => f.write_str("the page-table pool is used up"),
            Self::Memory { addr } => write!(f, "guest memory at {addr:#x} is not accessible"),
            Self::PoolMisaligned { start } => {
                write!(f, "the page-table pool at {start:#x} is not 4 KiB aligned")
            }
            Self::Misaligned { va, phys, len } => write!(
                f,
                "mapping {len:#x} bytes at {va:#x} to {phys:#x} is not page-aligned"
            ),
            Self::NonCanonical { va } => {
                write!(f, "range at {va:#x} is not inside one canonical half")
            }
            Self::NotALeafLevel => f.write_str("a PML4 entry cannot map a page"),
            Self::HugePageInTheWay { va, level } => {
                write!(
                    f,
                    "a huge {level:?} page maps {va:#x} where a table is needed"
                )
            }
            Self::NotMapped { va, level } => {
                write!(f, "no {level:?} table on the path of {va:#x}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Writes 4-level page tables into guest memory, taking table frames from a pool.
///
/// Intermediate entries it creates are `PRESENT | WRITABLE | USER` (or the flags given to
/// [`Self::with_table_flags`]), so a leaf's effective permissions are its own until
/// [`Self::update`] narrows an upper level.
pub struct PageTableBuilder<'m, M: ?Sized> {
    mem: &'m M,
    root: u64,
    pool: Range<u64>,
    table_flags: PageTableFlags,
}

impl<'m, M: GuestMemory + ?Sized> PageTableBuilder<'m, M> {
    /// Starts empty tables whose frames come from the guest-physical `pool`; the PML4 is its first.
    pub fn new(mem: &'m M, pool: Range<u64>) -> Result<Self, BuildError> {
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::USER;
        Self::with_table_flags(mem, pool, flags)
    }

    /// As [`Self::new`], with `flags` in the intermediate entries it creates.
    pub fn with_table_flags(
        mem: &'m M,
        pool: Range<u64>,
        flags: PageTableFlags,
    ) -> Result<Self, BuildError> {
        if !pool.start.is_multiple_of(TABLE_SIZE as u64) {
            return Err(BuildError::PoolMisaligned { start: pool.start });
        }
        let mut builder = Self {
            mem,
            root: 0,
            pool,
            table_flags: flags | PageTableFlags::PRESENT,
        };
        builder.root = builder.alloc_table()?;
        Ok(builder)
    }

    /// The CR3 value that selects these tables.
    pub fn cr3(&self) -> u64 {
        self.root
    }

    /// Maps `va..va + len` to `phys..phys + len` with pages the size of a `level` entry.
    ///
    /// `PRESENT` (and `HUGE_PAGE` above `Pt`) are added to `flags`. Existing leaves are replaced.
    pub fn map(
        &mut self,
        va: u64,
        phys: u64,
        len: u64,
        level: PageLevel,
        flags: PageTableFlags,
    ) -> Result<(), BuildError> {
        let span = level.entry_span();
        let misaligned = BuildError::Misaligned { va, phys, len };
        if level == PageLevel::Pml4 {
            return Err(BuildError::NotALeafLevel);
        }
        if len == 0 || !(va | phys | len).is_multiple_of(span) {
            return Err(misaligned);
        }
        let last = va.checked_add(len - 1).ok_or(misaligned)?;
        if !is_canonical(va) || !is_canonical(last) || (va ^ last) >> 63 != 0 {
            return Err(BuildError::NonCanonical { va });
        }
        let mut leaf_flags = flags | PageTableFlags::PRESENT;
        if level != PageLevel::Pt {
            leaf_flags |= PageTableFlags::HUGE_PAGE;
        }
        let mut done = 0;
        while done < len {
            let page = va + done;
            let table = self.table_of(page, level, true)?;
            let first = level.index(page);
            let count = ((len - done) / span).min((ENTRIES_PER_TABLE - first) as u64) as usize;
            let mut bytes = [0; TABLE_SIZE];
            self.read(&mut bytes, GuestAddress(table))?;
            let slots = &mut bytes.as_chunks_mut::<ENTRY_SIZE>().0[first..first + count];
            for (k, slot) in (0..).zip(slots) {
                *slot = PageTableEntry::new(phys + done + k * span, leaf_flags).to_le_bytes();
            }
            self.write(&bytes, GuestAddress(table))?;
            done += count as u64 * span;
        }
        Ok(())
    }

    /// Replaces the `level` entry on the path of `va` with `f(entry)`; the path must exist.
    pub fn update(
        &mut self,
        va: u64,
        level: PageLevel,
        f: impl FnOnce(PageTableEntry) -> PageTableEntry,
    ) -> Result<(), BuildError> {
        let addr = entry_addr(self.table_of(va, level, false)?, level, va);
        let entry = self.read_entry(addr)?;
        self.write(&f(entry).to_le_bytes(), addr)
    }

    /// The table holding `va`'s entry of `level`, creating missing tables above it if `create`.
    fn table_of(&mut self, va: u64, level: PageLevel, create: bool) -> Result<u64, BuildError> {
        let mut table = self.root;
        let mut current = PageLevel::Pml4;
        while current != level {
            let addr = entry_addr(table, current, va);
            let entry = self.read_entry(addr)?;
            let lower = current.lower().ok_or(BuildError::NotALeafLevel)?;
            table = if !entry.is_present() {
                if !create {
                    return Err(BuildError::NotMapped { va, level: lower });
                }
                let new = self.alloc_table()?;
                let entry = PageTableEntry::new(new, self.table_flags);
                self.write(&entry.to_le_bytes(), addr)?;
                new
            } else if entry.is_leaf(current) {
                return Err(BuildError::HugePageInTheWay { va, level: current });
            } else {
                entry.frame()
            };
            current = lower;
        }
        Ok(table)
    }

    fn alloc_table(&mut self) -> Result<u64, BuildError> {
        let table = self.pool.start;
        let next = table + TABLE_SIZE as u64;
        if next > self.pool.end {
            return Err(BuildError::OutOfTables);
        }
        self.write(&[0; TABLE_SIZE], GuestAddress(table))?;
        self.pool.start = next;
        Ok(table)
    }

    fn read_entry(&self, addr: GuestAddress) -> Result<PageTableEntry, BuildError> {
        read_entry(self.mem, addr).map_err(|_| BuildError::Memory { addr: addr.0 })
    }

    fn read(&self, buf: &mut [u8], addr: GuestAddress) -> Result<(), BuildError> {
        self.mem
            .read_slice(buf, addr)
            .map_err(|_| BuildError::Memory { addr: addr.0 })
    }

    fn write(&self, buf: &[u8], addr: GuestAddress) -> Result<(), BuildError> {
        self.mem
            .write_slice(buf, addr)
            .map_err(|_| BuildError::Memory { addr: addr.0 })
    }
}
