//! Benchmark layouts (feature `baseline`): the sparse, nearly full and adversarial trees of the placement rows.
#![forbid(unsafe_code)]

use alloc::vec::Vec;

use crate::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use crate::region_tree::{RandomSource, SplitMix64};

/// The alignment of the adversarial rows: 2 MiB.
pub const ADVERSARIAL_ALIGNMENT: u64 = 2 << 20;
/// The size of the adversarial rows: 16 KiB, more than any hole leaves above a 2 MiB boundary.
pub const ADVERSARIAL_SIZE: u64 = 4 * PAGE_SIZE;

/// Where the benches' layouts start: 16 TiB, 2 MiB-aligned.
const LAYOUT_BASE: u64 = 1 << 44;

/// A total range and the regions placed in it, disjoint and in address order.
pub struct Layout {
    pub total: VirtualRange,
    pub ranges: Vec<VirtualRange>,
}

/// The user range of the guest: 4 KiB up to 128 TiB minus one page.
pub fn user_range() -> VirtualRange {
    VirtualRange::from_base_last(PAGE_SIZE, (1 << 47) - PAGE_SIZE - 1)
}

/// The issue's sparse space: `n` one-page regions from the bottom of [`user_range`], each
/// after a hole of 16 pages. Almost all of the space is the free tail.
pub fn sparse(n: usize) -> Option<Layout> {
    let total = user_range();
    let ranges: Option<Vec<_>> = (1..=n as u64)
        .map(|i| {
            let base = total
                .base()
                .get()
                .checked_add(i.checked_mul(17 * PAGE_SIZE)? - PAGE_SIZE)?;
            VirtualRange::new(VirtualAddress::new(base), PAGE_SIZE).ok()
        })
        .collect();
    let ranges = ranges.filter(|r| r.last().is_none_or(|l| total.contains_range(l)))?;
    Some(Layout { total, ranges })
}

/// `n` regions of 1 to 1016 pages (about 2 MiB on average), each after a hole of 4 to 8
/// pages, and no tail: about 1% of the space is free, so a random address lands where a
/// 4-page placement fits about once in 170 tries. Deterministic for each `n`.
pub fn nearly_full(n: usize) -> Option<Layout> {
    let mut rng = SplitMix64::new(n as u64 ^ 0xF011);
    let mut pages = |low: u64, high: u64| low + rng.next_u64() % (high - low + 1);
    let mut next = LAYOUT_BASE;
    let mut ranges = Vec::with_capacity(n);
    for _ in 0..n {
        let base = next.checked_add(pages(4, 8) * PAGE_SIZE)?;
        let range =
            VirtualRange::new(VirtualAddress::new(base), pages(1, 1016) * PAGE_SIZE).ok()?;
        next = range.end()?.get();
        ranges.push(range);
    }
    let total = VirtualRange::new(VirtualAddress::new(LAYOUT_BASE), next - LAYOUT_BASE).ok()?;
    Some(Layout { total, ranges })
}

/// `n` regions between consecutive 2 MiB boundaries, each leaving 8 KiB free on either side
/// of it: every hole is 16 KiB, large enough for [`ADVERSARIAL_SIZE`], and straddles a
/// boundary, but only 8 KiB lie above the boundary, so no hole holds a 2 MiB-aligned
/// placement, and none is as large as `size + alignment - 4 KiB`. With `one_fit`, the region
/// in the middle starts 8 KiB later, so exactly one aligned position exists.
pub fn adversarial(n: usize, one_fit: bool) -> Option<Layout> {
    const SLACK: u64 = 2 * PAGE_SIZE;
    let ranges: Option<Vec<_>> = (0..n as u64)
        .map(|i| {
            let boundary = LAYOUT_BASE.checked_add(i.checked_mul(ADVERSARIAL_ALIGNMENT)?)?;
            let shift = if one_fit && i == n as u64 / 2 {
                SLACK
            } else {
                0
            };
            let base = boundary + SLACK + shift;
            VirtualRange::new(
                VirtualAddress::new(base),
                ADVERSARIAL_ALIGNMENT - 2 * SLACK - shift,
            )
            .ok()
        })
        .collect();
    let ranges = ranges?;
    let last = ranges.last()?.last().get();
    let total = VirtualRange::from_base_last(LAYOUT_BASE - SLACK, last);
    Some(Layout { total, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::first_fit::shuffled_tree;
    use crate::region::{Access, Region};
    use alloc::boxed::Box;

    fn tree_of(layout: &Layout) -> crate::region_tree::RegionTree<()> {
        shuffled_tree(layout.total, &layout.ranges, || {
            Box::new(Region::new("r", Access::READ, None))
        })
        .unwrap()
    }

    #[test]
    fn adversarial_layout_has_no_aligned_position_or_exactly_one() {
        for (one_fit, expected) in [
            (false, None),
            (true, Some(LAYOUT_BASE + 50 * ADVERSARIAL_ALIGNMENT)),
        ] {
            let layout = adversarial(100, one_fit).unwrap();
            let mut tree = tree_of(&layout);
            tree.check_invariants().unwrap();
            let region = Box::new(Region::new("x", Access::READ, None));
            let placed = tree.place_anywhere(region, ADVERSARIAL_SIZE, ADVERSARIAL_ALIGNMENT);
            assert_eq!(placed.ok().map(|r| r.base().get()), expected);
            // Every hole is large enough.
            let small = tree.place_anywhere(
                Box::new(Region::new("y", Access::READ, None)),
                ADVERSARIAL_SIZE,
                PAGE_SIZE,
            );
            assert!(small.is_ok());
        }
    }

    #[test]
    fn sparse_layout_has_16_page_holes() {
        let layout = sparse(3).unwrap();
        let bases: Vec<u64> = layout.ranges.iter().map(|r| r.base().get()).collect();
        assert_eq!(bases, [0x11000, 0x22000, 0x33000]);
        tree_of(&layout).check_invariants().unwrap();
    }

    #[test]
    fn nearly_full_layout_is_mostly_occupied() {
        let layout = nearly_full(1000).unwrap();
        let used: u64 = layout.ranges.iter().map(|r| r.size()).sum();
        assert!(used * 100 > layout.total.size() * 98);
        tree_of(&layout).check_invariants().unwrap();
    }
}
