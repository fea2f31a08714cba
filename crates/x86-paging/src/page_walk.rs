//! Walks x86_64 guest page tables from a CR3 through vm-memory, caching nothing between calls.
//!
//! The host never trusts the guest's own view of its page tables (README, "The agreement
//! checker"): it reads them itself, stops at PS in a PDPTE or PDE, visits every index up to 511,
//! sign-extends addresses, ANDs U and W down the levels and ORs NX. Every call starts again
//! from CR3, so an unmap is never hidden behind a stale translation (LibVMI's v2p cache bug).
#![forbid(unsafe_code)]

mod builder;

pub use builder::{BuildError, PageTableBuilder};

use std::fmt;
use std::iter::FusedIterator;
use std::ops::RangeInclusive;

use shared_mm::boot_info::MAX_GUEST_RAM;
use shared_mm::pte::{
    is_canonical, sign_extend, PageLevel, PageTableEntry, ADDRESS_MASK, ENTRIES_PER_TABLE,
    LOWER_HALF_LAST, PAGE_SIZE_4K, TABLE_SIZE, UPPER_HALF_FIRST,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError};

/// The canonical lower half, usually the user half of an address space.
pub const LOWER_HALF: RangeInclusive<u64> = 0..=LOWER_HALF_LAST;
/// The canonical upper half, usually the kernel half of an address space.
pub const UPPER_HALF: RangeInclusive<u64> = UPPER_HALF_FIRST..=u64::MAX;

const ENTRY_SIZE: usize = 8;

/// The guest-physical address of `va`'s entry in the `level` table at `table`.
fn entry_addr(table: u64, level: PageLevel, va: u64) -> GuestAddress {
    GuestAddress(table + (level.index(va) * ENTRY_SIZE) as u64)
}

/// Reads the entry at `addr` from guest memory. An entry is 8-aligned, so it never straddles
/// two regions: where `mem` is physical memory it is read from its one region (a lookup and a
/// load, as a hardware walker reads it), not through `read_slice`'s iterator over the regions
/// a range may cross, which cost a walk several times more. Both the walker and the sim's
/// machine read every table entry here.
#[inline]
pub fn read_entry<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
) -> Result<PageTableEntry, GuestMemoryError> {
    let raw: [u8; ENTRY_SIZE] = match mem.physical_memory() {
        Some(physical) => physical.get_slice(addr, ENTRY_SIZE)?.read_obj(0)?,
        None => {
            let mut raw = [0; ENTRY_SIZE];
            mem.read_slice(&mut raw, addr)?;
            raw
        }
    };
    Ok(PageTableEntry::from_le_bytes(raw))
}

/// Why a walk could not follow the guest's page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The input address has bits 48..=63 different from bit 47.
    NonCanonical {
        /// The address given.
        va: u64,
    },
    /// A table (or CR3 itself) points outside guest memory.
    TableOutsideMemory {
        /// The level of the table that could not be read.
        level: PageLevel,
        /// Its guest-physical address.
        table: u64,
        /// A virtual address whose translation goes through it.
        va: u64,
    },
    /// The walk read more tables, or found more leaves, than guest RAM can honestly hold: the
    /// tables alias each other (a PML4 pointing at itself, say). The walk stops.
    BudgetExceeded {
        /// Tables read when it stopped.
        tables: u64,
        /// Leaves found when it stopped.
        leaves: u64,
    },
    /// A present entry has architecturally reserved bits set (the CPU would raise #PF with RSVD).
    ReservedBits {
        /// The level of the entry.
        level: PageLevel,
        /// The first virtual address the entry covers.
        va: u64,
        /// The entry.
        entry: PageTableEntry,
        /// The reserved bits that are set.
        bits: u64,
    },
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonCanonical { va } => write!(f, "virtual address {va:#x} is not canonical"),
            Self::TableOutsideMemory { level, table, va } => write!(
                f,
                "{level:?} table at {table:#x} (walking {va:#x}) is outside guest memory"
            ),
            Self::BudgetExceeded { tables, leaves } => write!(
                f,
                "tables alias: walk budget exceeded after {tables} tables and {leaves} leaves \
                 (more than guest RAM can hold)"
            ),
            Self::ReservedBits {
                level,
                va,
                entry,
                bits,
            } => write!(
                f,
                "{level:?} entry {entry:?} for {va:#x} has reserved bits {bits:#x} set"
            ),
        }
    }
}

impl std::error::Error for WalkError {}

/// The access a translation grants once every level has been taken into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EffectivePerms {
    /// R/W is set at every level.
    pub writable: bool,
    /// U/S is set at every level.
    pub user: bool,
    /// XD is set at some level.
    pub no_execute: bool,
}

impl EffectivePerms {
    /// What is allowed before the first level restricts anything.
    const UNRESTRICTED: Self = Self {
        writable: true,
        user: true,
        no_execute: false,
    };

    /// Narrows these permissions by one more entry on the path.
    fn then(self, entry: PageTableEntry) -> Self {
        Self {
            writable: self.writable && entry.is_writable(),
            user: self.user && entry.is_user(),
            no_execute: self.no_execute || entry.is_no_execute(),
        }
    }

    /// Instruction fetches are allowed.
    pub fn executable(self) -> bool {
        !self.no_execute
    }
}

/// A present page: a leaf entry at some level, with its effective permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first (canonical) virtual address of the page.
    pub va: u64,
    /// The page size: 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    /// The guest-physical address of the page frame, aligned to `size`.
    pub phys: u64,
    /// The leaf entry as stored in the table.
    pub pte: PageTableEntry,
    /// The level of the leaf entry (`Pt`, `Pd` or `Pdpt`).
    pub level: PageLevel,
    /// U and W ANDed, NX ORed over the whole path.
    pub perms: EffectivePerms,
}

/// The translation of one virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The address translated.
    pub va: u64,
    /// The guest-physical address it maps to.
    pub phys: u64,
    /// The page containing it.
    pub leaf: Leaf,
}

/// What a present entry leads to.
enum Step {
    Table {
        table: u64,
        level: PageLevel,
        perms: EffectivePerms,
    },
    Leaf(Leaf),
}

/// Decodes the present `entry` of `level` whose span starts at `va`, below `perms`.
fn step(
    entry: PageTableEntry,
    level: PageLevel,
    va: u64,
    perms: EffectivePerms,
) -> Result<Step, WalkError> {
    let bits = entry.reserved_bits(level);
    if bits != 0 {
        return Err(WalkError::ReservedBits {
            level,
            va,
            entry,
            bits,
        });
    }
    let perms = perms.then(entry);
    Ok(match level.lower() {
        Some(lower) if !entry.is_leaf(level) => Step::Table {
            table: entry.frame(),
            level: lower,
            perms,
        },
        _ => Step::Leaf(Leaf {
            va,
            size: level.entry_span(),
            phys: entry.leaf_frame(level),
            pte: entry,
            level,
            perms,
        }),
    })
}

/// One entry a walk read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    /// The level of the table it is in.
    pub level: PageLevel,
    /// Its guest-physical address.
    pub addr: u64,
    /// What it held.
    pub entry: PageTableEntry,
}

/// Where a walk starts: a table, its level, and the rights the entries above it leave. A CPU's
/// paging-structure caches hold these, so that its walk can skip the levels above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStart {
    /// The table's guest-physical address.
    pub table: u64,
    pub level: PageLevel,
    /// U and W ANDed, NX ORed over the entries above the table.
    pub perms: EffectivePerms,
}

impl WalkStart {
    /// The top of the tables rooted at `cr3` (PCID and cache bits are ignored).
    pub fn root(cr3: u64) -> Self {
        WalkStart {
            table: cr3 & ADDRESS_MASK,
            level: PageLevel::Pml4,
            perms: EffectivePerms::UNRESTRICTED,
        }
    }
}

/// Every entry the translation of one address reads, from the PML4 down, and where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkPath {
    /// The address translated.
    pub va: u64,
    /// Indexed by level, `Pml4` first; `None` below the entry where the walk ended (and above
    /// where it started).
    entries: [Option<PathEntry>; 4],
    /// Indexed by level: each table the walk stepped into below its start, with the rights the
    /// entries above it leave (what a paging-structure cache may keep).
    entered: [Option<WalkStart>; 4],
    /// The translation, or `None` when the last entry read is not present.
    pub translation: Option<Translation>,
}

impl WalkPath {
    /// The entries read, from the PML4 down to the leaf (or the first non-present entry).
    pub fn entries(&self) -> impl Iterator<Item = &PathEntry> {
        self.entries.iter().flatten()
    }

    /// The tables the walk stepped into, from the highest level down.
    pub fn entered(&self) -> impl Iterator<Item = &WalkStart> {
        self.entered.iter().flatten()
    }
}

/// Walks `va` through the tables rooted at `cr3` (PCID and cache bits are ignored), keeping
/// every entry it reads. Reads one entry per level.
pub fn walk<M: GuestMemory + ?Sized>(mem: &M, cr3: u64, va: u64) -> Result<WalkPath, WalkError> {
    walk_from(mem, WalkStart::root(cr3), va)
}

/// Walks `va` from `start` down (the rest of a walk whose upper levels a CPU had cached).
/// Reads one entry per level from `start.level`.
pub fn walk_from<M: GuestMemory + ?Sized>(
    mem: &M,
    start: WalkStart,
    va: u64,
) -> Result<WalkPath, WalkError> {
    if !is_canonical(va) {
        return Err(WalkError::NonCanonical { va });
    }
    let mut path = WalkPath {
        va,
        entries: [None; 4],
        entered: [None; 4],
        translation: None,
    };
    let WalkStart {
        mut table,
        mut level,
        mut perms,
    } = start;
    loop {
        let addr = entry_addr(table, level, va);
        let entry = read_entry(mem, addr).map_err(|_| WalkError::TableOutsideMemory {
            level,
            table,
            va,
        })?;
        path.entries[level as usize] = Some(PathEntry {
            level,
            addr: addr.0,
            entry,
        });
        if !entry.is_present() {
            return Ok(path);
        }
        match step(entry, level, va & !(level.entry_span() - 1), perms)? {
            Step::Table {
                table: next,
                level: lower,
                perms: narrowed,
            } => {
                (table, level, perms) = (next, lower, narrowed);
                path.entered[level as usize] = Some(WalkStart {
                    table,
                    level,
                    perms,
                });
            }
            Step::Leaf(leaf) => {
                let phys = leaf.phys + (va - leaf.va);
                path.translation = Some(Translation { va, phys, leaf });
                return Ok(path);
            }
        }
    }
}

/// Translates `va` through the tables rooted at `cr3` (PCID and cache bits are ignored).
///
/// Returns `Ok(None)` when some entry on the path is not present. Reads one entry per level.
pub fn translate<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    va: u64,
) -> Result<Option<Translation>, WalkError> {
    walk(mem, cr3, va).map(|path| path.translation)
}

/// Every present leaf of the tables rooted at `cr3`, in ascending address order.
pub fn leaves<M: GuestMemory + ?Sized>(mem: &M, cr3: u64) -> Leaves<'_, M> {
    leaves_in(mem, cr3, 0..=u64::MAX)
}

/// The present leaves that intersect `range`, in ascending address order.
///
/// Only the tables covering `range` are read; a huge page straddling an end of the range is
/// yielded whole. Non-canonical parts of the range are ignored.
pub fn leaves_in<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    range: RangeInclusive<u64>,
) -> Leaves<'_, M> {
    let root = Subtree {
        start: WalkStart::root(cr3),
        base: 0,
        last: u64::MAX,
    };
    leaves_from(mem, root, range)
}

/// A table to walk down from, and the addresses it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subtree {
    /// The table, its level, and the rights the entries above it leave.
    pub start: WalkStart,
    /// The first (canonical) address its entry 0 maps (0 for a PML4).
    pub base: u64,
    /// The last address it maps.
    pub last: u64,
}

impl Subtree {
    /// The table below the `level` entry `entry`, whose span starts at `va`, reached with
    /// `perms` above that entry; `None` if the entry is not present or is a leaf.
    pub fn below(
        entry: PageTableEntry,
        level: PageLevel,
        va: u64,
        perms: EffectivePerms,
    ) -> Option<Self> {
        if !entry.is_present() || entry.reserved_bits(level) != 0 {
            return None;
        }
        match step(entry, level, va, perms).ok()? {
            Step::Table {
                table,
                level: lower,
                perms,
            } => Some(Subtree {
                start: WalkStart {
                    table,
                    level: lower,
                    perms,
                },
                base: va,
                last: va + (level.entry_span() - 1),
            }),
            Step::Leaf(_) => None,
        }
    }
}

/// The present leaves below the table `root` that intersect `range`, in ascending address
/// order: the rest of a walk whose upper levels were read before (an incremental check re-walks
/// only the entries that changed). The budget is that of a whole walk.
pub fn leaves_from<M: GuestMemory + ?Sized>(
    mem: &M,
    root: Subtree,
    range: RangeInclusive<u64>,
) -> Leaves<'_, M> {
    let (mut first, mut last) = (*range.start(), *range.end());
    if !is_canonical(first) {
        first = UPPER_HALF_FIRST;
    }
    if !is_canonical(last) {
        last = LOWER_HALF_LAST;
    }
    first = first.max(root.base);
    last = last.min(root.last);
    let top_level = root.start.level as usize;
    let root = (!range.is_empty() && first <= last).then_some(root);
    let budget = WalkBudget::for_memory(mem);
    Leaves {
        mem,
        first,
        last,
        root,
        cursors: Vec::new(),
        top_level,
        depth: 0,
        budget,
        used: WalkBudget::default(),
        tables: None,
    }
}

/// What one walk may read and find, from the guest's RAM size: honest tables are distinct
/// frames, and an honest space has at most about one leaf per frame. Aliasing tables can
/// describe 512^4 leaves; the budget stops them at a few times RAM.
#[derive(Clone, Copy, Debug, Default)]
struct WalkBudget {
    tables: u64,
    leaves: u64,
}

impl WalkBudget {
    fn for_memory<M: GuestMemory + ?Sized>(mem: &M) -> Self {
        let last = mem
            .physical_memory()
            .map_or(MAX_GUEST_RAM - 1, |m| m.last_addr().0);
        let ram_pages = last / PAGE_SIZE_4K + 1;
        WalkBudget {
            tables: ram_pages,
            leaves: ram_pages.saturating_mul(4),
        }
    }
}

/// One table being walked: its entries, read in one go, and the position in it.
struct TableCursor {
    bytes: [u8; TABLE_SIZE],
    level: PageLevel,
    /// The next index to visit.
    next: usize,
    /// One past the last index to visit.
    end: usize,
    /// The virtual address of entry 0 (not sign-extended for the PML4).
    base: u64,
    perms: EffectivePerms,
}

impl TableCursor {
    const EMPTY: Self = Self {
        bytes: [0; TABLE_SIZE],
        level: PageLevel::Pml4,
        next: 0,
        end: 0,
        base: 0,
        perms: EffectivePerms::UNRESTRICTED,
    };

    fn entry(&self, index: usize) -> PageTableEntry {
        PageTableEntry::from_le_bytes(self.bytes.as_chunks::<ENTRY_SIZE>().0[index])
    }

    /// The index of the next present entry at or after `next` (before `end`), or `end`: most
    /// entries of a sparse space's tables are empty, and one tight scan skips them.
    ///
    /// Eight entries at a time: a block with no present entry is passed with one test, and the
    /// test has no branch per entry, so the compiler can do it in a few vector instructions.
    fn next_present(&self) -> usize {
        let start = self.next.min(self.end);
        let entries = &self.bytes.as_chunks::<ENTRY_SIZE>().0[start..self.end];
        let present = |raw: &[u8; ENTRY_SIZE]| PageTableEntry::from_le_bytes(*raw).is_present();
        let (blocks, _) = entries.as_chunks::<8>();
        let skipped = blocks
            .iter()
            .take_while(|block| !block.iter().fold(false, |any, raw| any | present(raw)))
            .count()
            * 8;
        entries[skipped..]
            .iter()
            .position(present)
            .map_or(self.end, |i| start + skipped + i)
    }
}

/// Iterator over present leaves, from [`leaves`], [`leaves_in`] or [`leaves_from`].
///
/// Reads each table once, with a single read of the entries it visits; allocates nothing. An error is reported for
/// the entry that caused it, and the walk goes on with the next entry. Depth is bounded by the
/// four levels, so self-referencing tables terminate.
pub struct Leaves<'m, M: ?Sized> {
    mem: &'m M,
    /// First canonical address of interest.
    first: u64,
    /// Last canonical address of interest.
    last: u64,
    /// The table the walk starts from, until it is read.
    root: Option<Subtree>,
    /// One cursor per level from the root's down, made as the walk first enters the level (an
    /// incremental check walks one last-level table far more often than a whole space, and a
    /// cursor holds a table's 4 KiB).
    cursors: Vec<TableCursor>,
    /// The root's level, as `PageLevel as usize`: cursor `i` is for the level `i` below it.
    top_level: usize,
    /// How many cursors are active.
    depth: usize,
    budget: WalkBudget,
    used: WalkBudget,
    /// Every table entered so far, when asked to record them.
    tables: Option<Vec<EnteredTable>>,
}

/// A table a walk entered: where it is, its level, the first address its entry 0 maps, and
/// the rights the entries above it leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnteredTable {
    pub level: PageLevel,
    pub table: u64,
    pub base: u64,
    pub perms: EffectivePerms,
}

impl<M: GuestMemory + ?Sized> Leaves<'_, M> {
    /// The same walk, recording every table it enters (the root first), for [`Self::tables`].
    pub fn recording_tables(mut self) -> Self {
        self.tables = Some(Vec::new());
        self
    }

    /// The tables entered so far, if recording (see [`Self::recording_tables`]); a table two
    /// entries point to is listed twice.
    pub fn tables(&self) -> &[EnteredTable] {
        self.tables.as_deref().unwrap_or_default()
    }

    /// Reads the `level` table at `table` covering `base..=last` and makes it the innermost cursor.
    fn enter(
        &mut self,
        level: PageLevel,
        table: u64,
        base: u64,
        last: u64,
        perms: EffectivePerms,
    ) -> Result<(), WalkError> {
        self.used.tables += 1;
        if self.used.tables > self.budget.tables {
            return Err(self.stop());
        }
        if let Some(tables) = &mut self.tables {
            tables.push(EnteredTable {
                level,
                table,
                base,
                perms,
            });
        }
        let at = level as usize - self.top_level;
        while self.cursors.len() <= at {
            self.cursors.push(TableCursor::EMPTY);
        }
        let cursor = &mut self.cursors[at];
        let next = if self.first > base {
            level.index(self.first)
        } else {
            0
        };
        let end = if self.last < last {
            level.index(self.last) + 1
        } else {
            ENTRIES_PER_TABLE
        };
        // Only the entries the walk visits are read: a walk of one entry reads eight bytes of
        // each table on its way. A table is a 4 KiB-aligned frame, so it lies in RAM whole or
        // not at all, and the part read fails exactly when the whole would.
        let entries = &mut cursor.bytes[next * ENTRY_SIZE..end * ENTRY_SIZE];
        self.mem
            .read_slice(entries, GuestAddress(table + (next * ENTRY_SIZE) as u64))
            .map_err(|_| WalkError::TableOutsideMemory {
                level,
                table,
                va: base,
            })?;
        cursor.level = level;
        cursor.base = base;
        cursor.perms = perms;
        cursor.next = next;
        cursor.end = end;
        self.depth = at + 1;
        Ok(())
    }
}

impl<M: GuestMemory + ?Sized> Leaves<'_, M> {
    /// Ends the walk: the budget is spent.
    fn stop(&mut self) -> WalkError {
        self.depth = 0;
        self.root = None;
        WalkError::BudgetExceeded {
            tables: self.used.tables,
            leaves: self.used.leaves,
        }
    }

    /// Counts `leaf` against the budget.
    fn found(&mut self, leaf: Leaf) -> Result<Leaf, WalkError> {
        self.used.leaves += 1;
        if self.used.leaves > self.budget.leaves {
            return Err(self.stop());
        }
        Ok(leaf)
    }
}

impl<M: GuestMemory + ?Sized> Iterator for Leaves<'_, M> {
    type Item = Result<Leaf, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            let WalkStart {
                table,
                level,
                perms,
            } = root.start;
            if let Err(e) = self.enter(level, table, root.base, root.last, perms) {
                return Some(Err(e));
            }
        }
        while let Some(top) = self.depth.checked_sub(1) {
            let cursor = &mut self.cursors[top];
            cursor.next = cursor.next_present();
            if cursor.next >= cursor.end {
                self.depth = top;
                continue;
            }
            let index = cursor.next;
            cursor.next += 1;
            let entry = cursor.entry(index);
            let span = cursor.level.entry_span();
            let va = sign_extend(cursor.base + index as u64 * span);
            match step(entry, cursor.level, va, cursor.perms) {
                Ok(Step::Leaf(leaf)) => return Some(self.found(leaf)),
                Ok(Step::Table {
                    table,
                    level,
                    perms,
                }) => {
                    if let Err(e) = self.enter(level, table, va, va + (span - 1), perms) {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

impl<M: GuestMemory + ?Sized> FusedIterator for Leaves<'_, M> {}

/// A run of virtually contiguous pages with equal effective permissions (QEMU's `info mem` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRun {
    /// The first virtual address of the run.
    pub range_base: u64,
    /// Its length in bytes.
    pub size: u64,
    /// User-mode accesses are allowed.
    pub user: bool,
    /// Writes are allowed.
    pub writable: bool,
    /// Instruction fetches are allowed.
    pub executable: bool,
}

impl MappedRun {
    fn extends(&self, leaf: &Leaf) -> bool {
        self.range_base.checked_add(self.size) == Some(leaf.va)
            && self.user == leaf.perms.user
            && self.writable == leaf.perms.writable
            && self.executable == leaf.perms.executable()
    }
}

impl From<Leaf> for MappedRun {
    fn from(leaf: Leaf) -> Self {
        Self {
            range_base: leaf.va,
            size: leaf.size,
            user: leaf.perms.user,
            writable: leaf.perms.writable,
            executable: leaf.perms.executable(),
        }
    }
}

impl fmt::Display for MappedRun {
    /// `base-end size urwx`, with `-` for a missing permission; `end` wraps to 0 at the top.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |on, c| if on { c } else { '-' };
        write!(
            f,
            "{:016x}-{:016x} {:016x} {}r{}{}",
            self.range_base,
            self.range_base.wrapping_add(self.size),
            self.size,
            flag(self.user, 'u'),
            flag(self.writable, 'w'),
            flag(self.executable, 'x'),
        )
    }
}

/// Merges leaves given in ascending address order into runs of contiguous, equally permitted pages.
pub fn coalesce(leaves: impl IntoIterator<Item = Leaf>) -> Vec<MappedRun> {
    let mut runs: Vec<MappedRun> = Vec::new();
    for leaf in leaves {
        match runs.last_mut() {
            Some(run) if run.extends(&leaf) => run.size += leaf.size,
            _ => runs.push(leaf.into()),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_mm::pte::{PageTableFlags as F, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K};
    use vm_memory::GuestMemoryMmap;

    const RAM: usize = 16 << 20;
    /// Tables come from the upper 15 MiB; the first MiB is free for hand-made tables.
    const POOL: std::ops::Range<u64> = (1 << 20)..(RAM as u64);

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
    }

    fn builder(mem: &GuestMemoryMmap) -> PageTableBuilder<'_, GuestMemoryMmap> {
        PageTableBuilder::new(mem, POOL).unwrap()
    }

    fn all_leaves(mem: &GuestMemoryMmap, cr3: u64) -> Vec<Leaf> {
        leaves(mem, cr3).collect::<Result<_, _>>().unwrap()
    }

    fn rwu() -> F {
        F::WRITABLE | F::USER
    }

    #[test]
    fn translates_a_4k_leaf() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0x40_0000, 0x12_3000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        let t = translate(&mem, b.cr3(), 0x40_0123).unwrap().unwrap();
        assert_eq!((t.va, t.phys), (0x40_0123, 0x12_3123));
        assert_eq!(
            (t.leaf.va, t.leaf.size, t.leaf.phys),
            (0x40_0000, PAGE_SIZE_4K, 0x12_3000)
        );
        assert_eq!(t.leaf.level, PageLevel::Pt);
        assert_eq!(
            t.leaf.pte,
            PageTableEntry::new(0x12_3000, F::PRESENT | rwu())
        );
        let perms = t.leaf.perms;
        assert!(perms.writable && perms.user && perms.executable());
        assert_eq!(translate(&mem, b.cr3(), 0x40_1000), Ok(None));
        assert_eq!(all_leaves(&mem, b.cr3()), [t.leaf]);
    }

    #[test]
    fn walk_keeps_every_entry_it_reads() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0x40_0000, 0x12_3000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        let path = walk(&mem, b.cr3(), 0x40_0123).unwrap();
        let levels: Vec<_> = path.entries().map(|e| e.level).collect();
        assert_eq!(levels, PageLevel::ALL);
        let first = path.entries().next().unwrap();
        assert_eq!(
            first.addr,
            b.cr3() + 8 * PageLevel::Pml4.index(0x40_0000) as u64
        );
        assert!(path.entries().all(|e| e.entry.is_present()));
        assert_eq!(path.translation.map(|t| t.phys), Some(0x12_3123));
        // A hole: the walk ends at the first entry that is not present.
        let hole = walk(&mem, b.cr3(), 0x8000_0000).unwrap();
        let last = hole.entries().last().unwrap();
        assert_eq!(last.level, PageLevel::Pdpt);
        assert!(!last.entry.is_present());
        assert_eq!(hole.translation, None);
    }

    #[test]
    fn cr3_low_bits_are_ignored() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0x1000, 0x1000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        // PWT | PCD, or a PCID.
        let cr3 = b.cr3() | 0x18 | 0x7;
        assert!(translate(&mem, cr3, 0x1000).unwrap().is_some());
        assert_eq!(all_leaves(&mem, cr3).len(), 1);
    }

    #[test]
    fn stops_at_2m_and_1g_leaves() {
        let mem = ram();
        let mut b = builder(&mem);
        // Frames far outside RAM: descending into them as tables would be an error.
        b.map(
            0x20_0000,
            0x80_0000_0000,
            PAGE_SIZE_2M,
            PageLevel::Pd,
            rwu(),
        )
        .unwrap();
        b.map(
            0x4000_0000,
            0xC0_0000_0000,
            PAGE_SIZE_1G,
            PageLevel::Pdpt,
            rwu(),
        )
        .unwrap();
        let t = translate(&mem, b.cr3(), 0x2F_F123).unwrap().unwrap();
        assert_eq!(t.phys, 0x80_000F_F123);
        assert_eq!((t.leaf.level, t.leaf.size), (PageLevel::Pd, PAGE_SIZE_2M));
        let t = translate(&mem, b.cr3(), 0x7FFF_FFFF).unwrap().unwrap();
        assert_eq!(t.phys, 0xC0_3FFF_FFFF);
        assert_eq!((t.leaf.level, t.leaf.size), (PageLevel::Pdpt, PAGE_SIZE_1G));
        let found = all_leaves(&mem, b.cr3());
        let sizes: Vec<_> = found.iter().map(|l| (l.va, l.size, l.phys)).collect();
        assert_eq!(
            sizes,
            [
                (0x20_0000, PAGE_SIZE_2M, 0x80_0000_0000),
                (0x4000_0000, PAGE_SIZE_1G, 0xC0_0000_0000)
            ]
        );
    }

    #[test]
    fn pat_bit_of_a_huge_leaf_is_not_address() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0x4000_0000, PAGE_SIZE_2M, PageLevel::Pd, rwu())
            .unwrap();
        b.update(0, PageLevel::Pd, |e| {
            PageTableEntry::from_raw(e.raw() | PAGE_SIZE_4K)
        })
        .unwrap();
        let t = translate(&mem, b.cr3(), 0x1234).unwrap().unwrap();
        assert_eq!(t.phys, 0x4000_1234);
    }

    #[test]
    fn visits_entry_511_at_every_level() {
        let mem = ram();
        let mut b = builder(&mem);
        let top = 0xFFFF_FFFF_FFFF_F000;
        let lower_top = 0x0000_7FFF_FFFF_F000;
        b.map(top, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        b.map(lower_top, 0x6000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        let t = translate(&mem, b.cr3(), u64::MAX).unwrap().unwrap();
        assert_eq!(t.phys, 0x5FFF);
        let found: Vec<_> = all_leaves(&mem, b.cr3())
            .iter()
            .map(|l| (l.va, l.phys))
            .collect();
        assert_eq!(found, [(lower_top, 0x6000), (top, 0x5000)]);
    }

    #[test]
    fn upper_half_addresses_are_sign_extended() {
        let mem = ram();
        let mut b = builder(&mem);
        // PML4 index 256, the first upper-half entry.
        b.map(UPPER_HALF_FIRST, 0x7000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        let found = all_leaves(&mem, b.cr3());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].va, 0xFFFF_8000_0000_0000);
        let t = translate(&mem, b.cr3(), 0xFFFF_8000_0000_0010).unwrap();
        assert_eq!(t.map(|t| t.phys), Some(0x7010));
    }

    #[test]
    fn translate_rejects_non_canonical_addresses() {
        let mem = ram();
        let b = builder(&mem);
        for va in [
            0x0000_8000_0000_0000,
            0xFFFF_7FFF_FFFF_FFFF,
            0x0001_0000_0000_0000,
        ] {
            assert_eq!(
                translate(&mem, b.cr3(), va),
                Err(WalkError::NonCanonical { va })
            );
        }
    }

    /// Every PML4 entry points at one PDPT holding a 1 GiB leaf at index 0.
    fn every_pml4_entry_mapped(mem: &GuestMemoryMmap) -> u64 {
        let mut b = builder(mem);
        b.map(0, 0, PAGE_SIZE_1G, PageLevel::Pdpt, rwu()).unwrap();
        let pml4e = read_entry(mem, GuestAddress(b.cr3())).unwrap();
        for i in 1..ENTRIES_PER_TABLE as u64 {
            let va = sign_extend(i << PageLevel::Pml4.shift());
            mem.write_slice(
                &pml4e.to_le_bytes(),
                entry_addr(b.cr3(), PageLevel::Pml4, va),
            )
            .unwrap();
        }
        b.cr3()
    }

    #[test]
    fn a_pml4_aliasing_itself_ends_the_walk_at_the_budget() {
        // Every entry of the PML4 points at the PML4: 512^4 leaves if walked to the end.
        let mem = ram();
        let pml4 = 0x1000;
        let entry = PageTableEntry::new(pml4, F::PRESENT | F::WRITABLE | F::USER).raw();
        for index in 0..ENTRIES_PER_TABLE as u64 {
            mem.write_obj(entry, GuestAddress(pml4 + 8 * index))
                .unwrap();
        }
        let walk: Vec<_> = leaves(&mem, pml4).collect();
        let budget = WalkBudget::for_memory(&mem);
        assert!(
            walk.len() as u64 <= budget.leaves + 1,
            "{} items",
            walk.len()
        );
        assert!(matches!(
            walk.last(),
            Some(Err(WalkError::BudgetExceeded { .. }))
        ));
        let message = walk.last().unwrap().unwrap_err().to_string();
        assert!(
            message.starts_with("tables alias: walk budget exceeded"),
            "{message}"
        );
    }

    #[test]
    fn iterator_never_yields_the_non_canonical_hole() {
        let mem = ram();
        let cr3 = every_pml4_entry_mapped(&mem);
        let found = all_leaves(&mem, cr3);
        assert_eq!(found.len(), ENTRIES_PER_TABLE);
        assert!(found.iter().all(|l| is_canonical(l.va)));
        assert!(found.windows(2).all(|w| w[0].va < w[1].va));
        assert_eq!(found[255].va, 0x0000_7F80_0000_0000);
        assert_eq!(found[256].va, UPPER_HALF_FIRST);
        assert_eq!(found[511].va, 0xFFFF_FF80_0000_0000);
    }

    #[test]
    fn range_walks_only_what_it_is_asked() {
        let mem = ram();
        let cr3 = every_pml4_entry_mapped(&mem);
        let count = |range| leaves_in(&mem, cr3, range).count();
        assert_eq!(count(LOWER_HALF), 256);
        assert_eq!(count(UPPER_HALF), 256);
        // Entirely inside the hole, and empty.
        assert_eq!(count(0x0000_8000_0000_0000..=0xFFFF_7FFF_FFFF_FFFF), 0);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert_eq!(count(empty), 0);
        // Straddling the hole: the last lower and first upper leaf.
        assert_eq!(count(0x0000_7F80_0000_0000..=0xFFFF_8000_0000_0000), 2);
        // Only PDPT index 0 is mapped, so the last GiB below the hole is empty.
        assert_eq!(count(0x0000_7FFF_C000_0000..=0xFFFF_8000_0000_0000), 1);
        // A range inside one 1 GiB page still yields the page, whole.
        let inside: Vec<_> = leaves_in(&mem, cr3, 0x1000..=0x2000).collect();
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].unwrap().va, 0);
    }

    #[test]
    fn a_subtree_walk_yields_the_leaves_below_its_table() {
        let mem = ram();
        let mut b = builder(&mem);
        for (va, frame) in [
            (0x40_0000, 0x5000),
            (0x40_3000, 0x6000),
            (0x8000_0000, 0x7000),
        ] {
            b.map(va, frame, PAGE_SIZE_4K, PageLevel::Pt, rwu())
                .unwrap();
        }
        let all = all_leaves(&mem, b.cr3());
        let path = walk(&mem, b.cr3(), 0x40_0000).unwrap();
        let pd = path.entries().find(|e| e.level == PageLevel::Pd).unwrap();
        let above = path.entered().find(|s| s.level == PageLevel::Pd).unwrap();
        let pt = Subtree::below(pd.entry, PageLevel::Pd, 0x40_0000, above.perms).unwrap();
        assert_eq!((pt.base, pt.last), (0x40_0000, 0x5f_ffff));
        let below: Vec<Leaf> = leaves_from(&mem, pt, LOWER_HALF)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(below, all[..2]);
        // A range inside the subtree reads only its entries.
        let mut one = leaves_from(&mem, pt, 0x40_3000..=0x40_3fff).recording_tables();
        assert_eq!(one.next().map(|l| l.unwrap().va), Some(0x40_3000));
        assert_eq!(one.next(), None);
        let entered = one.tables();
        assert_eq!(entered.len(), 1);
        assert_eq!(
            (entered[0].level, entered[0].base),
            (PageLevel::Pt, 0x40_0000)
        );
        // A leaf entry has no table below it.
        let leaf = path.entries().last().unwrap();
        assert_eq!(
            Subtree::below(leaf.entry, PageLevel::Pt, 0x40_0000, above.perms),
            None
        );
    }

    #[test]
    fn range_cuts_tables_at_both_ends() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0, 4 * PAGE_SIZE_2M, PageLevel::Pt, rwu()).unwrap();
        let found: Vec<_> = leaves_in(&mem, b.cr3(), 0x1F_F000..=0x40_0FFF)
            .map(|l| l.unwrap().va)
            .collect();
        assert_eq!(found.len(), 1 + 512 + 1);
        assert_eq!(found.first(), Some(&0x1F_F000));
        assert_eq!(found.last(), Some(&0x40_0000));
    }

    #[test]
    fn effective_permissions_and_user_and_or_nx() {
        let mem = ram();
        let mut b = builder(&mem);
        let (a, c, d) = (0x20_0000, 0x4000_0000, 0x80_0000_0000);
        for va in [a, c, d] {
            b.map(va, 0x1000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
                .unwrap();
        }
        // A user PTE under a supervisor PDE is not user.
        b.update(a, PageLevel::Pd, |e| e.without(F::USER)).unwrap();
        // A writable PTE under a read-only PDPTE is not writable.
        b.update(c, PageLevel::Pdpt, |e| e.without(F::WRITABLE))
            .unwrap();
        // NX in the PML4E makes the page non-executable.
        b.update(d, PageLevel::Pml4, |e| e.with(F::NO_EXECUTE))
            .unwrap();
        let perms = |va| translate(&mem, b.cr3(), va).unwrap().unwrap().leaf.perms;
        let expect = |writable, user, no_execute| EffectivePerms {
            writable,
            user,
            no_execute,
        };
        assert_eq!(perms(a), expect(true, false, false));
        assert_eq!(perms(c), expect(false, true, false));
        assert_eq!(perms(d), expect(true, true, true));
        let walked: Vec<_> = all_leaves(&mem, b.cr3()).iter().map(|l| l.perms).collect();
        assert_eq!(walked, [perms(a), perms(c), perms(d)]);
        // The leaf's own bits are kept as stored.
        assert!(translate(&mem, b.cr3(), a)
            .unwrap()
            .unwrap()
            .leaf
            .pte
            .is_user());
    }

    #[test]
    fn not_present_entries_are_skipped() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0x1000, 3 * PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        b.update(PAGE_SIZE_4K, PageLevel::Pt, |e| e.without(F::PRESENT))
            .unwrap();
        // Not present with every other bit set: garbage the CPU ignores.
        b.update(2 * PAGE_SIZE_4K, PageLevel::Pt, |_| {
            PageTableEntry::from_raw(!1)
        })
        .unwrap();
        assert_eq!(translate(&mem, b.cr3(), PAGE_SIZE_4K), Ok(None));
        assert_eq!(translate(&mem, b.cr3(), 2 * PAGE_SIZE_4K), Ok(None));
        let found: Vec<_> = all_leaves(&mem, b.cr3()).iter().map(|l| l.va).collect();
        assert_eq!(found, [0]);
    }

    #[test]
    fn table_outside_memory_is_an_error_not_a_panic() {
        let mem = ram();
        let outside = 1 << 40;
        assert_eq!(
            translate(&mem, outside, 0x1000),
            Err(WalkError::TableOutsideMemory {
                level: PageLevel::Pml4,
                table: outside,
                va: 0x1000
            })
        );
        let mut all = leaves(&mem, outside);
        assert!(matches!(
            all.next(),
            Some(Err(WalkError::TableOutsideMemory { .. }))
        ));
        assert!(all.next().is_none());

        let mut b = builder(&mem);
        b.map(0, 0x1000, 2 * PAGE_SIZE_2M, PageLevel::Pt, rwu())
            .unwrap();
        b.update(0, PageLevel::Pd, |e| {
            PageTableEntry::new(outside, e.flags())
        })
        .unwrap();
        let expected = WalkError::TableOutsideMemory {
            level: PageLevel::Pt,
            table: outside,
            va: 0,
        };
        assert_eq!(translate(&mem, b.cr3(), 0), Err(expected));
        // The walk reports the bad table and goes on with the next PDE.
        let walked: Vec<_> = leaves(&mem, b.cr3()).collect();
        assert_eq!(walked.len(), 1 + 512);
        assert_eq!(walked[0], Err(expected));
        assert!(walked[1..].iter().all(|l| l.is_ok()));
        assert!(expected.to_string().contains("outside guest memory"));
    }

    #[test]
    fn reserved_bits_are_reported() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0x20_0000, PAGE_SIZE_2M, PageLevel::Pd, rwu())
            .unwrap();
        b.update(0, PageLevel::Pd, |e| {
            PageTableEntry::from_raw(e.raw() | 0x2000)
        })
        .unwrap();
        let err = translate(&mem, b.cr3(), 0).unwrap_err();
        assert!(matches!(
            err,
            WalkError::ReservedBits {
                level: PageLevel::Pd,
                bits: 0x2000,
                ..
            }
        ));
        assert_eq!(leaves(&mem, b.cr3()).collect::<Vec<_>>(), [Err(err)]);

        b.update(0, PageLevel::Pml4, |e| e.with(F::HUGE_PAGE))
            .unwrap();
        assert!(matches!(
            translate(&mem, b.cr3(), 0),
            Err(WalkError::ReservedBits {
                level: PageLevel::Pml4,
                ..
            })
        ));
    }

    #[test]
    fn recursive_self_map_terminates() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0x1000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        let cr3 = b.cr3();
        b.update(u64::MAX, PageLevel::Pml4, |_| {
            PageTableEntry::new(cr3, F::PRESENT | rwu())
        })
        .unwrap();
        // Index 511 at every level lands on the PML4 itself.
        let t = translate(&mem, cr3, 0xFFFF_FFFF_FFFF_F000)
            .unwrap()
            .unwrap();
        assert_eq!(t.phys, cr3);
        assert!(leaves(&mem, cr3).all(|l| l.is_ok()));
    }

    #[test]
    fn a_full_page_table_has_512_leaves() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0, 0x10_0000, PAGE_SIZE_2M, PageLevel::Pt, rwu())
            .unwrap();
        let found = all_leaves(&mem, b.cr3());
        assert_eq!(found.len(), 512);
        for (i, leaf) in (0..).zip(&found) {
            assert_eq!(leaf.va, i * PAGE_SIZE_4K);
            assert_eq!(leaf.phys, 0x10_0000 + i * PAGE_SIZE_4K);
        }
    }

    #[test]
    fn one_gib_of_4k_pages() {
        // As much RAM as the tables map: an honest guest's walk budget.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 30)]).unwrap();
        let mut b = builder(&mem);
        let base = 0xFFFF_FFFF_C000_0000;
        b.map(base, 0, PAGE_SIZE_1G, PageLevel::Pt, rwu()).unwrap();
        let mut count = 0u64;
        let mut expected_va = base;
        for leaf in leaves(&mem, b.cr3()) {
            let leaf = leaf.unwrap();
            assert_eq!(leaf.va, expected_va);
            expected_va = expected_va.wrapping_add(PAGE_SIZE_4K);
            count += 1;
        }
        assert_eq!(count, 262_144);
        let runs = coalesce(leaves(&mem, b.cr3()).map(Result::unwrap));
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].range_base, runs[0].size), (base, PAGE_SIZE_1G));
    }

    #[test]
    fn coalesce_merges_contiguous_equal_runs() {
        let mem = ram();
        let mut b = builder(&mem);
        b.map(0x1000, 0x1000, 4 * PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        // Same permissions, contiguous, physically elsewhere: still the same run.
        b.map(0x5000, 0x9_0000, PAGE_SIZE_4K, PageLevel::Pt, rwu())
            .unwrap();
        b.map(0x6000, 0x6000, PAGE_SIZE_4K, PageLevel::Pt, F::USER)
            .unwrap();
        // After a gap, 4 KiB pages followed by a 2 MiB page with the same permissions.
        b.map(0x1F_F000, 0, PAGE_SIZE_4K, PageLevel::Pt, F::NO_EXECUTE)
            .unwrap();
        b.map(0x20_0000, 0, PAGE_SIZE_2M, PageLevel::Pd, F::NO_EXECUTE)
            .unwrap();
        // The very top of the address space.
        b.map(
            0xFFFF_FFFF_FFE0_0000,
            0,
            PAGE_SIZE_2M,
            PageLevel::Pd,
            F::empty(),
        )
        .unwrap();
        let runs = coalesce(all_leaves(&mem, b.cr3()));
        let run = |range_base, size, user, writable, executable| MappedRun {
            range_base,
            size,
            user,
            writable,
            executable,
        };
        assert_eq!(
            runs,
            [
                run(0x1000, 0x5000, true, true, true),
                run(0x6000, 0x1000, true, false, true),
                run(0x1F_F000, 0x20_1000, false, false, false),
                run(0xFFFF_FFFF_FFE0_0000, PAGE_SIZE_2M, false, false, true),
            ]
        );
        assert_eq!(
            runs[0].to_string(),
            "0000000000001000-0000000000006000 0000000000005000 urwx"
        );
        assert_eq!(
            runs[3].to_string(),
            "ffffffffffe00000-0000000000000000 0000000000200000 -r-x"
        );
    }

    #[test]
    fn builder_rejects_bad_requests() {
        let mem = ram();
        let mut b = builder(&mem);
        let pt = PageLevel::Pt;
        assert!(matches!(
            b.map(0x1001, 0, 0x1000, pt, rwu()),
            Err(BuildError::Misaligned { .. })
        ));
        assert!(matches!(
            b.map(0, 0, 0, pt, rwu()),
            Err(BuildError::Misaligned { .. })
        ));
        let hole = 0x0000_7FFF_FFFF_F000;
        assert_eq!(
            b.map(hole, 0, 0x2000, pt, rwu()),
            Err(BuildError::NonCanonical { va: hole })
        );
        assert_eq!(
            b.map(0, 0, 1 << 39, PageLevel::Pml4, rwu()),
            Err(BuildError::NotALeafLevel)
        );
        b.map(0, 0, PAGE_SIZE_2M, PageLevel::Pd, rwu()).unwrap();
        assert_eq!(
            b.map(0, 0, PAGE_SIZE_4K, pt, rwu()),
            Err(BuildError::HugePageInTheWay {
                va: 0,
                level: PageLevel::Pd
            })
        );
        assert!(matches!(
            b.update(1 << 39, pt, |e| e),
            Err(BuildError::NotMapped { .. })
        ));
        let mut tiny = PageTableBuilder::new(&mem, 0..0x2000).unwrap();
        assert_eq!(
            tiny.map(0, 0, PAGE_SIZE_4K, pt, rwu()),
            Err(BuildError::OutOfTables)
        );
        assert!(PageTableBuilder::new(&mem, 0x10..0x2000).is_err());
    }

    proptest! {
        /// Random sparse tables (entries pointing among four tables, or anywhere): the walk never
        /// panics, yields canonical aligned leaves in order, and `translate` agrees with each.
        #[test]
        fn garbage_tables_walk_safely(
            entries in proptest::collection::vec(
                (0usize..4, 0usize..512, 0usize..5, any::<u64>()), 0..40),
        ) {
            let mem = ram();
            let tables = [0x1000u64, 0x2000, 0x3000, 0x4000];
            for (table, index, target, flags) in entries {
                let addr = tables.get(target).copied().unwrap_or(flags & ADDRESS_MASK);
                let raw = addr | (flags & !ADDRESS_MASK);
                let at = GuestAddress(tables[table] + (index * ENTRY_SIZE) as u64);
                mem.write_slice(&raw.to_le_bytes(), at).unwrap();
            }
            let mut previous = None;
            for leaf in leaves(&mem, tables[0]).filter_map(Result::ok) {
                prop_assert!(is_canonical(leaf.va));
                prop_assert_eq!(leaf.va % leaf.size, 0);
                prop_assert!(previous < Some(leaf.va));
                previous = Some(leaf.va);
                let t = translate(&mem, tables[0], leaf.va).unwrap().unwrap();
                prop_assert_eq!(t.leaf, leaf);
            }
        }
    }
}
