//! Free holes between regions, and iteration over them from the smallest up.
#![forbid(unsafe_code)]

use intrusive_collections::rbtree;

use super::gap_index::ByGap;
use crate::region::Region;

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

    /// The hole a region owns: the one immediately below it (`gap_before > 0`).
    fn below<B>(region: &Region<B>) -> Self {
        let base = region.span().0;
        Self::new(base - region.gap_before.get(), base - 1)
    }

    /// Size in bytes. A hole lies inside a `VirtualRange`, so this cannot overflow.
    pub(super) fn size(&self) -> u64 {
        self.last - self.base + 1
    }

    fn key(&self) -> (u64, u64) {
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
}

/// Holes of at least some size in `(size, base)` order: the gap index merged with the
/// tail hole.
pub(super) struct HolesBySize<'a, B> {
    gaps: rbtree::Cursor<'a, ByGap<B>>,
    peeked: Option<Hole>,
    tail: Option<Hole>,
}

impl<'a, B> HolesBySize<'a, B> {
    /// `gaps` (a cursor at the first candidate) and `tail` must already be restricted to the
    /// minimum size.
    pub(super) fn new(gaps: rbtree::Cursor<'a, ByGap<B>>, tail: Option<Hole>) -> Self {
        Self {
            gaps,
            peeked: None,
            tail,
        }
    }
}

impl<B> Iterator for HolesBySize<'_, B> {
    type Item = Hole;

    fn next(&mut self) -> Option<Hole> {
        if self.peeked.is_none() {
            if let Some(region) = self.gaps.get() {
                self.peeked = Some(Hole::below(region));
                // Past the last entry the cursor becomes null, and `get` stops the walk
                // (moving a null cursor would wrap around to the first entry).
                self.gaps.move_next();
            }
        }
        match (self.peeked, self.tail) {
            (Some(gap), Some(tail)) if tail.key() < gap.key() => self.tail.take(),
            (Some(_), _) => self.peeked.take(),
            (None, _) => self.tail.take(),
        }
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
}
