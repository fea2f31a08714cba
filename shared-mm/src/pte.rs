//! The x86_64 4-level page-table entry format and virtual-address helpers, shared by guest and host.
#![forbid(unsafe_code)]

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign, Not};

/// Number of entries in one page table at any level.
pub const ENTRIES_PER_TABLE: usize = 512;
/// Size of a page table in bytes (one 4 KiB frame).
pub const TABLE_SIZE: usize = 4096;
/// A 4 KiB page (PTE leaf).
pub const PAGE_SIZE_4K: u64 = 1 << 12;
/// A 2 MiB page (PDE leaf with PS).
pub const PAGE_SIZE_2M: u64 = 1 << 21;
/// A 1 GiB page (PDPTE leaf with PS).
pub const PAGE_SIZE_1G: u64 = 1 << 30;
/// The physical-address bits of an entry (bits 12..=51).
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// The last address of the canonical lower half.
pub const LOWER_HALF_LAST: u64 = 0x0000_7FFF_FFFF_FFFF;
/// The first address of the canonical upper half.
pub const UPPER_HALF_FIRST: u64 = 0xFFFF_8000_0000_0000;

/// The flag bits of a page-table entry (a small hand-written bitflags type).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageTableFlags(u64);

impl PageTableFlags {
    /// P: the entry maps a table or a page.
    pub const PRESENT: Self = Self(1 << 0);
    /// R/W: writes allowed (ANDed down the levels).
    pub const WRITABLE: Self = Self(1 << 1);
    /// U/S: user-mode accesses allowed (ANDed down the levels).
    pub const USER: Self = Self(1 << 2);
    /// PWT: write-through caching.
    pub const WRITE_THROUGH: Self = Self(1 << 3);
    /// PCD: caching disabled.
    pub const CACHE_DISABLE: Self = Self(1 << 4);
    /// A: set by the CPU when the entry is used.
    pub const ACCESSED: Self = Self(1 << 5);
    /// D: set by the CPU on a write through a leaf.
    pub const DIRTY: Self = Self(1 << 6);
    /// PS: the PDPTE (1 GiB) or PDE (2 MiB) is a leaf. Reserved in a PML4E.
    pub const HUGE_PAGE: Self = Self(1 << 7);
    /// G: the translation survives CR3 switches.
    pub const GLOBAL: Self = Self(1 << 8);
    /// XD: instruction fetches forbidden (ORed down the levels; needs EFER.NXE).
    pub const NO_EXECUTE: Self = Self(1 << 63);

    /// Every named flag.
    pub const ALL: Self = Self(0x8000_0000_0000_01FF);

    const NAMES: [(Self, &'static str); 10] = [
        (Self::PRESENT, "PRESENT"),
        (Self::WRITABLE, "WRITABLE"),
        (Self::USER, "USER"),
        (Self::WRITE_THROUGH, "WRITE_THROUGH"),
        (Self::CACHE_DISABLE, "CACHE_DISABLE"),
        (Self::ACCESSED, "ACCESSED"),
        (Self::DIRTY, "DIRTY"),
        (Self::HUGE_PAGE, "HUGE_PAGE"),
        (Self::GLOBAL, "GLOBAL"),
        (Self::NO_EXECUTE, "NO_EXECUTE"),
    ];

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The named flags among `bits`; every other bit is dropped.
    pub const fn from_bits_truncate(bits: u64) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags of either.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags of `self` without those of `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for PageTableFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for PageTableFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl BitAnd for PageTableFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl Not for PageTableFlags {
    type Output = Self;
    fn not(self) -> Self {
        Self(!self.0 & Self::ALL.0)
    }
}

impl fmt::Debug for PageTableFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(empty)");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// One level of the 4-level x86_64 paging hierarchy, from the root down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageLevel {
    /// Page-map level 4 (the table CR3 points to); each entry spans 512 GiB.
    Pml4,
    /// Page-directory-pointer table; each entry spans 1 GiB and may be a 1 GiB leaf.
    Pdpt,
    /// Page directory; each entry spans 2 MiB and may be a 2 MiB leaf.
    Pd,
    /// Page table; each entry is a 4 KiB leaf.
    Pt,
}

impl PageLevel {
    /// The levels in walk order.
    pub const ALL: [Self; 4] = [Self::Pml4, Self::Pdpt, Self::Pd, Self::Pt];

    /// The position of this level's index in a virtual address.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Pml4 => 39,
            Self::Pdpt => 30,
            Self::Pd => 21,
            Self::Pt => 12,
        }
    }

    /// How much virtual memory one entry of this level covers (512 GiB, 1 GiB, 2 MiB, 4 KiB).
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }

    /// This level's index (0..=511) in `va`.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & (ENTRIES_PER_TABLE as u64 - 1)) as usize
    }

    /// The level the entries of this one point to, `None` for `Pt`.
    pub const fn lower(self) -> Option<Self> {
        match self {
            Self::Pml4 => Some(Self::Pdpt),
            Self::Pdpt => Some(Self::Pd),
            Self::Pd => Some(Self::Pt),
            Self::Pt => None,
        }
    }

    /// The mask of the physical address a leaf entry of this level holds (aligned to its span).
    pub const fn leaf_address_mask(self) -> u64 {
        ADDRESS_MASK & !(self.entry_span() - 1)
    }
}

/// The PML4 index (bits 39..=47) of `va`.
pub const fn pml4_index(va: u64) -> usize {
    PageLevel::Pml4.index(va)
}

/// The PDPT index (bits 30..=38) of `va`.
pub const fn pdpt_index(va: u64) -> usize {
    PageLevel::Pdpt.index(va)
}

/// The PD index (bits 21..=29) of `va`.
pub const fn pd_index(va: u64) -> usize {
    PageLevel::Pd.index(va)
}

/// The PT index (bits 12..=20) of `va`.
pub const fn pt_index(va: u64) -> usize {
    PageLevel::Pt.index(va)
}

/// Copies bit 47 of `va48` into bits 48..=63, giving the canonical form.
pub const fn sign_extend(va48: u64) -> u64 {
    (((va48 << 16) as i64) >> 16) as u64
}

/// Whether bits 48..=63 of `va` equal bit 47.
pub const fn is_canonical(va: u64) -> bool {
    sign_extend(va) == va
}

/// One 64-bit entry of a page table at any level.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct PageTableEntry(u64);

impl PageTableEntry {
    /// The not-present, all-zero entry.
    pub const EMPTY: Self = Self(0);

    /// An entry pointing at `phys` (masked to bits 12..=51) with `flags`.
    pub const fn new(phys: u64, flags: PageTableFlags) -> Self {
        Self((phys & ADDRESS_MASK) | flags.bits())
    }

    /// The entry exactly as stored in the table.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The entry from its 8 bytes in a table (little-endian).
    pub const fn from_le_bytes(bytes: [u8; 8]) -> Self {
        Self(u64::from_le_bytes(bytes))
    }

    /// The 8 bytes of the entry as stored in a table (little-endian).
    pub const fn to_le_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    /// The named flags (ignored and protection-key bits are dropped).
    pub const fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0)
    }

    /// Whether every flag of `flags` is set.
    pub const fn contains(self, flags: PageTableFlags) -> bool {
        self.flags().contains(flags)
    }

    /// This entry with `flags` added.
    pub const fn with(self, flags: PageTableFlags) -> Self {
        Self(self.0 | flags.bits())
    }

    /// This entry with `flags` removed.
    pub const fn without(self, flags: PageTableFlags) -> Self {
        Self(self.0 & !flags.bits())
    }

    /// Bits 12..=51: the next table, or a 4 KiB frame. See [`Self::leaf_frame`] for huge pages.
    pub const fn frame(self) -> u64 {
        self.0 & ADDRESS_MASK
    }

    /// The frame a leaf of `level` maps, aligned to the level's span (bit 12 of a huge entry is PAT).
    pub const fn leaf_frame(self, level: PageLevel) -> u64 {
        self.0 & level.leaf_address_mask()
    }

    /// Whether the P bit is set.
    pub const fn is_present(self) -> bool {
        self.contains(PageTableFlags::PRESENT)
    }

    /// Whether the R/W bit is set.
    pub const fn is_writable(self) -> bool {
        self.contains(PageTableFlags::WRITABLE)
    }

    /// Whether the U/S bit is set.
    pub const fn is_user(self) -> bool {
        self.contains(PageTableFlags::USER)
    }

    /// Whether the PS bit is set.
    pub const fn is_huge(self) -> bool {
        self.contains(PageTableFlags::HUGE_PAGE)
    }

    /// Whether the XD bit is set.
    pub const fn is_no_execute(self) -> bool {
        self.contains(PageTableFlags::NO_EXECUTE)
    }

    /// Whether this present entry at `level` maps a page rather than a table.
    pub const fn is_leaf(self, level: PageLevel) -> bool {
        match level {
            PageLevel::Pml4 => false,
            PageLevel::Pdpt | PageLevel::Pd => self.is_huge(),
            PageLevel::Pt => true,
        }
    }

    /// The architecturally reserved bits set in this entry at `level`, independent of MAXPHYADDR:
    /// PS in a PML4E, and the address bits below the alignment of a 1 GiB or 2 MiB leaf.
    pub const fn reserved_bits(self, level: PageLevel) -> u64 {
        let mask = match level {
            PageLevel::Pml4 => PageTableFlags::HUGE_PAGE.bits(),
            PageLevel::Pdpt | PageLevel::Pd if self.is_huge() => {
                // Bit 12 is PAT; bits 13 up to the alignment must be zero.
                ADDRESS_MASK & !level.leaf_address_mask() & !PAGE_SIZE_4K
            }
            PageLevel::Pdpt | PageLevel::Pd | PageLevel::Pt => 0,
        };
        self.0 & mask
    }
}

impl fmt::Debug for PageTableEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PageTableEntry({:#x}: frame {:#x}, {:?})",
            self.0,
            self.frame(),
            self.flags()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn new_masks_address_and_keeps_flags() {
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let e = PageTableEntry::new(0xFFF0_1234_5678_9ABC, flags);
        assert_eq!(e.frame(), 0x0000_1234_5678_9000);
        assert_eq!(e.flags(), flags);
        assert!(e.is_present() && e.is_writable() && e.is_no_execute());
        assert!(!e.is_user() && !e.is_huge());
        assert_eq!(e.raw(), 0x8000_1234_5678_9003);
        assert_eq!(PageTableEntry::from_raw(e.raw()), e);
        assert_eq!(PageTableEntry::from_le_bytes(e.to_le_bytes()), e);
        assert_eq!(e.to_le_bytes()[0], 0x03);
    }

    #[test]
    fn flag_bit_positions() {
        let expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 63];
        for ((flag, _), bit) in PageTableFlags::NAMES.iter().zip(expected) {
            assert_eq!(flag.bits(), 1 << bit);
        }
        let all = PageTableFlags::NAMES
            .iter()
            .fold(PageTableFlags::empty(), |acc, (f, _)| acc | *f);
        assert_eq!(all, PageTableFlags::ALL);
    }

    #[test]
    fn flags_ops() {
        let rw = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        assert!(rw.contains(PageTableFlags::WRITABLE));
        assert!(!rw.contains(PageTableFlags::USER));
        assert_eq!(
            rw.difference(PageTableFlags::WRITABLE),
            PageTableFlags::PRESENT
        );
        assert_eq!(rw & PageTableFlags::WRITABLE, PageTableFlags::WRITABLE);
        assert!((!PageTableFlags::ALL).is_empty());
        assert_eq!(
            PageTableFlags::from_bits_truncate(u64::MAX),
            PageTableFlags::ALL
        );
        let mut f = PageTableFlags::empty();
        f |= PageTableFlags::USER;
        assert_eq!(f, PageTableFlags::USER);
    }

    #[test]
    fn with_and_without() {
        let e = PageTableEntry::new(0x1000, PageTableFlags::PRESENT).with(PageTableFlags::USER);
        assert!(e.is_user());
        assert!(!e.without(PageTableFlags::USER).is_user());
        assert_eq!(e.without(PageTableFlags::USER).frame(), 0x1000);
    }

    #[test]
    fn debug_shows_flags() {
        let e = PageTableEntry::new(0x5000, PageTableFlags::PRESENT | PageTableFlags::USER);
        assert_eq!(
            format!("{e:?}"),
            "PageTableEntry(0x5005: frame 0x5000, PRESENT | USER)"
        );
        assert_eq!(format!("{:?}", PageTableFlags::empty()), "(empty)");
    }

    #[test]
    fn indices() {
        let va = 0xFFFF_FFFF_FFFF_F000;
        assert_eq!(
            (pml4_index(va), pdpt_index(va), pd_index(va), pt_index(va)),
            (511, 511, 511, 511)
        );
        let va = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0xABC;
        assert_eq!(
            (pml4_index(va), pdpt_index(va), pd_index(va), pt_index(va)),
            (3, 5, 7, 9)
        );
        assert_eq!(pml4_index(UPPER_HALF_FIRST), 256);
        assert_eq!(pml4_index(LOWER_HALF_LAST), 255);
    }

    #[test]
    fn sign_extension_and_canonical() {
        assert_eq!(sign_extend(0x0000_8000_0000_0000), UPPER_HALF_FIRST);
        assert_eq!(sign_extend(0x0000_7FFF_FFFF_F000), 0x0000_7FFF_FFFF_F000);
        assert_eq!(sign_extend(511 << 39), 0xFFFF_FF80_0000_0000);
        assert!(is_canonical(0));
        assert!(is_canonical(LOWER_HALF_LAST));
        assert!(is_canonical(UPPER_HALF_FIRST));
        assert!(is_canonical(u64::MAX));
        assert!(!is_canonical(LOWER_HALF_LAST + 1));
        assert!(!is_canonical(UPPER_HALF_FIRST - 1));
        assert!(!is_canonical(0x0001_0000_0000_0000));
    }

    #[test]
    fn levels() {
        let spans: [u64; 4] = [1 << 39, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K];
        for (level, span) in PageLevel::ALL.into_iter().zip(spans) {
            assert_eq!(level.entry_span(), span);
            assert_eq!(level.index(span * 511), 511);
        }
        assert_eq!(PageLevel::Pml4.lower(), Some(PageLevel::Pdpt));
        assert_eq!(PageLevel::Pd.lower(), Some(PageLevel::Pt));
        assert_eq!(PageLevel::Pt.lower(), None);
    }

    #[test]
    fn leaf_and_huge_frames() {
        let huge = PageTableFlags::PRESENT | PageTableFlags::HUGE_PAGE;
        let e = PageTableEntry::new(0x4000_0000 | PAGE_SIZE_4K, huge);
        assert!(e.is_leaf(PageLevel::Pdpt) && e.is_leaf(PageLevel::Pd));
        assert!(!e.is_leaf(PageLevel::Pml4));
        // Bit 12 is PAT in a huge leaf, not part of the address.
        assert_eq!(e.leaf_frame(PageLevel::Pdpt), 0x4000_0000);
        assert_eq!(e.leaf_frame(PageLevel::Pd), 0x4000_0000);
        assert_eq!(e.reserved_bits(PageLevel::Pdpt), 0);
        assert_eq!(e.reserved_bits(PageLevel::Pd), 0);

        let table = PageTableEntry::new(0x1234_5000, PageTableFlags::PRESENT);
        assert!(!table.is_leaf(PageLevel::Pd));
        assert!(table.is_leaf(PageLevel::Pt));
        assert_eq!(table.leaf_frame(PageLevel::Pt), 0x1234_5000);
    }

    #[test]
    fn reserved_bits() {
        let huge = PageTableFlags::PRESENT | PageTableFlags::HUGE_PAGE;
        let misaligned_2m = PageTableEntry::new(0x20_0000 | 0x2000, huge);
        assert_eq!(misaligned_2m.reserved_bits(PageLevel::Pd), 0x2000);
        let misaligned_1g = PageTableEntry::new(0x4000_0000 | 0x20_0000, huge);
        assert_eq!(misaligned_1g.reserved_bits(PageLevel::Pdpt), 0x20_0000);
        assert_eq!(misaligned_1g.reserved_bits(PageLevel::Pd), 0);
        assert_eq!(
            PageTableEntry::new(0x1000, huge).reserved_bits(PageLevel::Pml4),
            PageTableFlags::HUGE_PAGE.bits()
        );
        // A 4 KiB table pointer is never misaligned.
        let table = PageTableEntry::new(0x3000, PageTableFlags::PRESENT);
        assert_eq!(table.reserved_bits(PageLevel::Pdpt), 0);
    }
}
