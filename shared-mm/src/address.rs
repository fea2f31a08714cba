//! Virtual addresses and page-aligned virtual ranges, with overflow-checked arithmetic.
//!
//! A [`VirtualRange`] stores its *inclusive* last byte rather than its end, so a range may
//! reach the very top of the 64-bit space (for example base `0xFFFF_FFFF_FFFF_F000`, size
//! `0x1000`) without any computation overflowing.
#![forbid(unsafe_code)]

use core::fmt;

/// Size of a page, the granule of every [`VirtualRange`].
pub const PAGE_SIZE: u64 = 4096;

/// Mask of the offset-in-page bits of an address.
const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// A 64-bit virtual address.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualAddress(u64);

impl VirtualAddress {
    /// Wraps a raw address. Every `u64` is accepted; canonical-form checks are the
    /// architecture layer's business.
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// The raw address.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether the address is a multiple of [`PAGE_SIZE`].
    pub const fn is_page_aligned(self) -> bool {
        self.0 & PAGE_MASK == 0
    }

    /// Whether the address is a multiple of `alignment`; `false` if `alignment` is not a
    /// power of two.
    pub const fn is_aligned_to(self, alignment: u64) -> bool {
        alignment.is_power_of_two() && self.0 & (alignment - 1) == 0
    }

    /// `self + offset`, or `None` past the top of the address space.
    pub const fn checked_add(self, offset: u64) -> Option<Self> {
        match self.0.checked_add(offset) {
            Some(addr) => Some(Self(addr)),
            None => None,
        }
    }

    /// `self - offset`, or `None` below zero.
    pub const fn checked_sub(self, offset: u64) -> Option<Self> {
        match self.0.checked_sub(offset) {
            Some(addr) => Some(Self(addr)),
            None => None,
        }
    }

    /// Rounds up to a multiple of `alignment`. `None` if `alignment` is not a power of two
    /// or the result would pass the top of the address space.
    pub const fn align_up(self, alignment: u64) -> Option<Self> {
        if !alignment.is_power_of_two() {
            return None;
        }
        match self.0.checked_add(alignment - 1) {
            Some(addr) => Some(Self(addr & !(alignment - 1))),
            None => None,
        }
    }

    /// Rounds down to a multiple of `alignment`. `None` if `alignment` is not a power of two.
    pub const fn align_down(self, alignment: u64) -> Option<Self> {
        if !alignment.is_power_of_two() {
            return None;
        }
        Some(Self(self.0 & !(alignment - 1)))
    }
}

impl From<u64> for VirtualAddress {
    fn from(addr: u64) -> Self {
        Self(addr)
    }
}

impl fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtualAddress({:#x})", self.0)
    }
}

impl fmt::LowerHex for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Why a [`VirtualRange`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeError {
    /// The size is zero.
    ZeroSize,
    /// The base is not page-aligned.
    MisalignedBase,
    /// The size is not a multiple of the page size.
    MisalignedSize,
    /// The range would pass the top of the 64-bit address space.
    Overflow,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroSize => "range size is zero",
            Self::MisalignedBase => "range base is not page-aligned",
            Self::MisalignedSize => "range size is not a multiple of the page size",
            Self::Overflow => "range passes the top of the address space",
        })
    }
}

impl core::error::Error for RangeError {}

/// A non-empty, page-aligned span of virtual addresses `[base, last]`.
///
/// Invariants: `base` is page-aligned, `last + 1` is page-aligned (or `last` is
/// `u64::MAX`), `base <= last`, and the size `last - base + 1` fits in a `u64` (so the
/// whole 2^64 space is not a `VirtualRange`, but one ending exactly at 2^64 is).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualRange {
    base: u64,
    last: u64,
}

impl VirtualRange {
    /// The range of `size` bytes starting at `base`.
    ///
    /// Errors, checked in this order: [`RangeError::ZeroSize`],
    /// [`RangeError::MisalignedSize`], [`RangeError::MisalignedBase`],
    /// [`RangeError::Overflow`] (the range would end past 2^64).
    pub const fn new(base: VirtualAddress, size: u64) -> Result<Self, RangeError> {
        if size == 0 {
            return Err(RangeError::ZeroSize);
        }
        if size & PAGE_MASK != 0 {
            return Err(RangeError::MisalignedSize);
        }
        if !base.is_page_aligned() {
            return Err(RangeError::MisalignedBase);
        }
        match base.0.checked_add(size - 1) {
            Some(last) => Ok(Self { base: base.0, last }),
            None => Err(RangeError::Overflow),
        }
    }

    /// Builds `[base, last]` from values the caller has already proven valid.
    pub(crate) const fn from_base_last(base: u64, last: u64) -> Self {
        debug_assert!(base & PAGE_MASK == 0 && last & PAGE_MASK == PAGE_MASK && base <= last);
        Self { base, last }
    }

    /// First address of the range.
    pub const fn base(&self) -> VirtualAddress {
        VirtualAddress(self.base)
    }

    /// Last address of the range (inclusive).
    pub const fn last(&self) -> VirtualAddress {
        VirtualAddress(self.last)
    }

    /// Size in bytes; never zero, always a multiple of [`PAGE_SIZE`].
    pub const fn size(&self) -> u64 {
        self.last - self.base + 1
    }

    /// Number of pages in the range.
    pub const fn page_count(&self) -> u64 {
        self.size() / PAGE_SIZE
    }

    /// The first address past the range, or `None` if the range ends at 2^64.
    pub const fn end(&self) -> Option<VirtualAddress> {
        match self.last.checked_add(1) {
            Some(end) => Some(VirtualAddress(end)),
            None => None,
        }
    }

    /// Whether `addr` lies inside the range.
    pub const fn contains(&self, addr: VirtualAddress) -> bool {
        self.base <= addr.0 && addr.0 <= self.last
    }

    /// Whether `other` lies entirely inside the range.
    pub const fn contains_range(&self, other: &VirtualRange) -> bool {
        self.base <= other.base && other.last <= self.last
    }

    /// Whether the two ranges share at least one address.
    pub const fn intersects(&self, other: &VirtualRange) -> bool {
        self.base <= other.last && other.base <= self.last
    }

    /// The addresses the two ranges share, if any.
    pub fn intersection(&self, other: &VirtualRange) -> Option<VirtualRange> {
        self.intersects(other)
            .then(|| Self::from_base_last(self.base.max(other.base), self.last.min(other.last)))
    }

    /// Splits the range into `[base, at)` and `[at, last]`.
    ///
    /// `None` unless `at` is page-aligned and strictly inside the range (both halves must be
    /// non-empty).
    pub fn split_at(&self, at: VirtualAddress) -> Option<(VirtualRange, VirtualRange)> {
        (at.is_page_aligned() && self.base < at.0 && at.0 <= self.last).then(|| {
            (
                Self::from_base_last(self.base, at.0 - 1),
                Self::from_base_last(at.0, self.last),
            )
        })
    }

    /// The parts of `self` that `other` does not cover: the piece below `other` and the
    /// piece above it, each `None` when empty. This is what remains of a region when
    /// `other` is unmapped from it.
    pub fn subtract(&self, other: &VirtualRange) -> (Option<VirtualRange>, Option<VirtualRange>) {
        if !self.intersects(other) {
            return if self.last < other.base {
                (Some(*self), None)
            } else {
                (None, Some(*self))
            };
        }
        let below =
            (self.base < other.base).then(|| Self::from_base_last(self.base, other.base - 1));
        let above =
            (other.last < self.last).then(|| Self::from_base_last(other.last + 1, self.last));
        (below, above)
    }
}

impl fmt::Display for VirtualRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.base, self.last)
    }
}

impl fmt::Debug for VirtualRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtualRange({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    const TOP_PAGE: u64 = 0xFFFF_FFFF_FFFF_F000;

    fn range(base: u64, size: u64) -> VirtualRange {
        VirtualRange::new(VirtualAddress::new(base), size).unwrap()
    }

    #[test]
    fn address_alignment() {
        let a = VirtualAddress::new(0x1234);
        assert!(!a.is_page_aligned());
        assert_eq!(a.align_up(PAGE_SIZE), Some(VirtualAddress::new(0x2000)));
        assert_eq!(a.align_down(PAGE_SIZE), Some(VirtualAddress::new(0x1000)));
        assert_eq!(a.align_up(3), None);
        assert_eq!(a.align_down(0), None);
        assert_eq!(VirtualAddress::new(u64::MAX).align_up(PAGE_SIZE), None);
        assert_eq!(
            VirtualAddress::new(TOP_PAGE).align_up(PAGE_SIZE),
            Some(VirtualAddress::new(TOP_PAGE))
        );
        assert!(VirtualAddress::new(0x4000_0000).is_aligned_to(1 << 30));
        assert!(!VirtualAddress::new(0x4000_0000).is_aligned_to(3));
    }

    #[test]
    fn address_checked_arithmetic() {
        assert_eq!(VirtualAddress::new(u64::MAX).checked_add(1), None);
        assert_eq!(VirtualAddress::new(0).checked_sub(1), None);
        assert_eq!(
            VirtualAddress::new(1).checked_add(1),
            Some(VirtualAddress::new(2))
        );
    }

    #[test]
    fn address_formatting() {
        assert_eq!(
            format!("{}", VirtualAddress::new(0xdead_b000)),
            "0xdeadb000"
        );
        assert_eq!(
            format!("{:?}", VirtualAddress::new(0x10)),
            "VirtualAddress(0x10)"
        );
    }

    #[test]
    fn range_constructor_errors() {
        let new = |base, size| VirtualRange::new(VirtualAddress::new(base), size);
        assert_eq!(new(0x1000, 0), Err(RangeError::ZeroSize));
        assert_eq!(new(0x1000, 0x800), Err(RangeError::MisalignedSize));
        assert_eq!(new(0x1800, 0x1000), Err(RangeError::MisalignedBase));
        assert_eq!(new(TOP_PAGE, 0x2000), Err(RangeError::Overflow));
        assert_eq!(new(0, !PAGE_MASK).map(|r| r.size()), Ok(!PAGE_MASK));
    }

    #[test]
    fn range_at_top_of_address_space() {
        let r = range(TOP_PAGE, PAGE_SIZE);
        assert_eq!(r.last(), VirtualAddress::new(u64::MAX));
        assert_eq!(r.end(), None);
        assert_eq!(r.size(), PAGE_SIZE);
        assert!(r.contains(VirtualAddress::new(u64::MAX)));
        assert_eq!(format!("{r}"), "0xfffffffffffff000..=0xffffffffffffffff");
        assert_eq!(
            range(0x1000, 0x1000).end(),
            Some(VirtualAddress::new(0x2000))
        );
    }

    #[test]
    fn range_relations() {
        let a = range(0x1000, 0x3000); // 0x1000..=0x3fff
        let b = range(0x3000, 0x2000); // 0x3000..=0x4fff
        let c = range(0x4000, 0x1000); // touches a, no overlap
        assert!(a.intersects(&b) && b.intersects(&a));
        assert!(!a.intersects(&c) && !c.intersects(&a));
        assert_eq!(a.intersection(&b), Some(range(0x3000, 0x1000)));
        assert_eq!(a.intersection(&c), None);
        assert!(a.contains_range(&range(0x2000, 0x2000)));
        assert!(!a.contains_range(&b));
        assert!(!a.contains(VirtualAddress::new(0x4000)));
    }

    #[test]
    fn range_split_at() {
        let r = range(0x1000, 0x3000);
        assert_eq!(
            r.split_at(VirtualAddress::new(0x2000)),
            Some((range(0x1000, 0x1000), range(0x2000, 0x2000)))
        );
        assert_eq!(r.split_at(VirtualAddress::new(0x1000)), None);
        assert_eq!(r.split_at(VirtualAddress::new(0x4000)), None);
        assert_eq!(r.split_at(VirtualAddress::new(0x2800)), None);
        let top = range(TOP_PAGE - PAGE_SIZE, 2 * PAGE_SIZE);
        assert_eq!(
            top.split_at(VirtualAddress::new(TOP_PAGE)),
            Some((
                range(TOP_PAGE - PAGE_SIZE, PAGE_SIZE),
                range(TOP_PAGE, PAGE_SIZE)
            ))
        );
    }

    #[test]
    fn range_subtract() {
        let r = range(0x1000, 0x4000); // 0x1000..=0x4fff
        assert_eq!(
            r.subtract(&range(0x2000, 0x1000)),
            (Some(range(0x1000, 0x1000)), Some(range(0x3000, 0x2000)))
        );
        assert_eq!(
            r.subtract(&range(0, 0x2000)),
            (None, Some(range(0x2000, 0x3000)))
        );
        assert_eq!(
            r.subtract(&range(0x4000, 0x2000)),
            (Some(range(0x1000, 0x3000)), None)
        );
        assert_eq!(r.subtract(&r), (None, None));
        assert_eq!(r.subtract(&range(0x8000, 0x1000)), (Some(r), None));
        assert_eq!(r.subtract(&range(0, 0x1000)), (None, Some(r)));
    }
}
