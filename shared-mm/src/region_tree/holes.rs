//! Free holes between regions, and what an aligned placement of some size finds in one.
#![forbid(unsafe_code)]

use crate::address::PAGE_SIZE;

/// A hole's place in the gap index: `(size, base)`. Holes are disjoint and non-empty, so
/// keys are unique.
pub(super) type Key = (u64, u64);

/// An alignment class the gap index keeps summaries for: `PAGE_SIZE << index`, from 4 KiB
/// (class 0) up to 1 GiB (class [`Class::COUNT`]` - 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Class(u32);

impl Class {
    /// Number of classes: 4 KiB, 8 KiB, ..., 1 GiB.
    pub(super) const COUNT: usize = 19;

    /// All classes, smallest alignment first.
    #[cfg(test)]
    pub(super) fn all() -> impl Iterator<Item = Class> {
        (0..Self::COUNT as u32).map(Class)
    }

    /// The class of `alignment` (a power of two of at least `PAGE_SIZE`): itself up to 1 GiB,
    /// the 1 GiB class above (every larger alignment is a multiple of it).
    pub(super) fn of(alignment: u64) -> Self {
        let index = alignment.trailing_zeros() - PAGE_SIZE.trailing_zeros();
        Class(index.min(Self::COUNT as u32 - 1))
    }

    /// Position in the summary arrays.
    pub(super) fn index(self) -> usize {
        self.0 as usize
    }

    fn shift(self) -> u32 {
        PAGE_SIZE.trailing_zeros() + self.0
    }

    pub(super) fn alignment(self) -> u64 {
        1 << self.shift()
    }

    /// `size` in whole multiples of the alignment (rounded down).
    pub(super) fn units(self, size: u64) -> u64 {
        size >> self.shift()
    }
}

/// A set of classes: those the gap index keeps summaries for. A class joins the set the first
/// time a placement asks for it, so a tree that only ever places at 4 KiB and 2 MiB updates two
/// classes per node, not nineteen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Classes(u32);

impl Classes {
    /// Only the page class.
    pub(super) const PAGE: Self = Classes(1);

    pub(super) fn contains(self, class: Class) -> bool {
        self.0 & (1 << class.0) != 0
    }

    /// The set with `class` in it.
    pub(super) fn with(self, class: Class) -> Self {
        Classes(self.0 | 1 << class.0)
    }

    /// The classes in the set, smallest alignment first.
    pub(super) fn iter(self) -> impl Iterator<Item = Class> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            let index = (bits != 0).then(|| bits.trailing_zeros())?;
            bits &= bits - 1;
            Some(Class(index))
        })
    }
}

/// A non-empty free span `[base, last]` inside the total range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hole {
    base: u64,
    last: u64,
}

impl Hole {
    pub(super) fn new(base: u64, last: u64) -> Self {
        debug_assert!(base <= last);
        Self { base, last }
    }

    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Size in bytes. A hole lies inside a `VirtualRange`, so this cannot overflow.
    pub(super) fn size(&self) -> u64 {
        self.last - self.base + 1
    }

    pub(super) fn key(&self) -> Key {
        (self.size(), self.base)
    }

    /// The lowest `alignment`-aligned start of a `size`-byte placement in the hole.
    pub(super) fn first_fit(&self, size: u64, alignment: u64) -> Option<u64> {
        self.placements(size, alignment).map(|(first, _)| first)
    }

    /// The lowest aligned start of a `size`-byte placement and the number of aligned
    /// starts; `None` if there is none. `size >= 1`; `alignment` is a power of two.
    pub(super) fn placements(&self, size: u64, alignment: u64) -> Option<(u64, u64)> {
        let first = self.base.checked_add(alignment - 1)? & !(alignment - 1);
        let last_start = self.last.checked_sub(size - 1)?;
        (first <= last_start).then(|| (first, (last_start - first) / alignment + 1))
    }

    /// The number of multiples of the class's alignment in `[base, last + 1]`; also correct
    /// when `last + 1` is 2^64.
    ///
    /// For a placement of `size <= self.size()` bytes, `marks - class.units(size)` is at
    /// least the number of aligned starts, and at most one more: the *slots* of the hole.
    pub(super) fn marks(&self, class: Class) -> u64 {
        let mask = class.alignment() - 1;
        let up_to_end = (self.last >> class.shift()) + u64::from(self.last & mask == mask);
        let from_base = (self.base >> class.shift()) + u64::from(self.base & mask != 0);
        // `from_base` is at most `up_to_end + 1`, since `base <= last + 1`.
        up_to_end + 1 - from_base
    }

    /// Bytes from the first address aligned to the class up to the end of the hole (0 if
    /// there is none): a placement of `size` bytes aligned to the class fits iff this is at
    /// least `size`.
    pub(super) fn room(&self, class: Class) -> u64 {
        self.first_aligned(class)
            .filter(|&first| first <= self.last)
            .map_or(0, |first| self.last - first + 1)
    }

    /// The start of slot `slot` of the class (the `slot`-th aligned address from the base),
    /// `None` past 2^64.
    pub(super) fn slot_start(&self, class: Class, slot: u64) -> Option<u64> {
        let first = self.first_aligned(class)?;
        first.checked_add(slot.checked_mul(class.alignment())?)
    }

    /// The lowest address aligned to the class at or above the base; `None` past 2^64. (A
    /// mask, not `checked_next_multiple_of`, which divides: this runs per class per node.)
    fn first_aligned(&self, class: Class) -> Option<u64> {
        let mask = class.alignment() - 1;
        Some(self.base.checked_add(mask)? & !mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_count_aligned_starts() {
        // 0x1000..=0x8fff, 8 pages.
        let hole = Hole::new(0x1000, 0x8fff);
        assert_eq!(hole.placements(0x1000, 0x1000), Some((0x1000, 8)));
        assert_eq!(hole.placements(0x8000, 0x1000), Some((0x1000, 1)));
        assert_eq!(hole.placements(0x9000, 0x1000), None);
        assert_eq!(hole.placements(0x1000, 0x4000), Some((0x4000, 2)));
        assert_eq!(hole.placements(0x2000, 0x4000), Some((0x4000, 1)));
        assert_eq!(hole.placements(0x5000, 0x4000), Some((0x4000, 1)));
        assert_eq!(hole.placements(0x6000, 0x4000), None);
        assert_eq!(hole.first_fit(0x1000, 0x1_0000), None);
    }

    #[test]
    fn placements_at_top_of_address_space() {
        let hole = Hole::new(0xFFFF_FFFF_FFFF_E000, u64::MAX);
        assert_eq!(hole.size(), 0x2000);
        assert_eq!(
            hole.placements(0x1000, 0x1000),
            Some((0xFFFF_FFFF_FFFF_E000, 2))
        );
        // Aligning up past 2^64 must not wrap around to 0.
        assert_eq!(hole.placements(0x1000, 1 << 30), None);
    }

    #[test]
    fn classes_cover_page_to_gib() {
        assert_eq!(Class::of(PAGE_SIZE), Class(0));
        assert_eq!(Class::of(2 << 20).alignment(), 2 << 20);
        assert_eq!(Class::of(1 << 30).index(), Class::COUNT - 1);
        assert_eq!(Class::of(1 << 63).alignment(), 1 << 30);
        assert_eq!(Class::all().count(), Class::COUNT);
        assert_eq!(Class::of(0x4000).units(0x9000), 2);
    }

    /// Slots bound the aligned starts from above, by at most one, for every size and class.
    #[test]
    fn slots_bound_placements_by_at_most_one() {
        let holes = [
            Hole::new(0x1000, 0x8fff),
            Hole::new(0x3000, 0x3fff),
            Hole::new(0x7000, 0x1_8fff),
            Hole::new(0xFFFF_FFFF_FFFF_8000, u64::MAX),
        ];
        for hole in holes {
            for class in Class::all().take(6) {
                for pages in 1..=hole.size() / PAGE_SIZE {
                    let size = pages * PAGE_SIZE;
                    let starts = hole.placements(size, class.alignment()).map_or(0, |p| p.1);
                    let slots = hole.marks(class) - class.units(size);
                    assert!(
                        starts <= slots && slots <= starts + 1,
                        "{hole:?} {class:?} {size:#x}"
                    );
                    assert_eq!(hole.room(class) >= size, starts > 0);
                    // The valid slots come first.
                    for slot in 0..slots {
                        let fits = hole
                            .slot_start(class, slot)
                            .and_then(|start| start.checked_add(size - 1))
                            .is_some_and(|end| end <= hole.last);
                        assert_eq!(fits, slot < starts, "{hole:?} {class:?} {size:#x} {slot}");
                    }
                }
            }
        }
    }
}
