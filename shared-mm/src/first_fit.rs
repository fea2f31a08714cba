//! Benchmark baseline (feature `baseline`): SerenityOS-style first-fit placement, and the fragmented steady state both benches measure it in.
//!
//! Steady state: `n` live one-page regions with holes of 1 to `max_hole` pages between them.
//! The benches then place one region anywhere and remove it again, over and over.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use crate::region::Region;
use crate::region_tree::{RandomSource, RegionTree, RegionTreeError, SplitMix64};

/// What each steady-state iteration places anywhere and removes again: 4 pages, page-aligned.
pub const REQUEST: u64 = 4 * PAGE_SIZE;

/// The fragmented steady state in both structures: `n` one-page regions inside 1 TiB at 16 TiB.
pub struct SteadyState<B> {
    pub tree: RegionTree<B>,
    pub first_fit: FirstFit,
}

impl<B> SteadyState<B> {
    /// The state of [`fragmented_layout`]`(n, max_hole)`, with each tree region made by `make`
    /// (see [`shuffled_tree`]).
    pub fn new(
        n: usize,
        max_hole: u64,
        make: impl FnMut() -> Box<Region<B>>,
    ) -> Result<Self, RegionTreeError> {
        let total = VirtualRange::new(VirtualAddress::new(1 << 44), 1 << 40)
            .map_err(|_| RegionTreeError::Overflow)?;
        let ranges = fragmented_layout(total, n, max_hole).ok_or(RegionTreeError::NoSpace)?;
        Ok(SteadyState {
            tree: shuffled_tree(total, &ranges, make)?,
            first_fit: FirstFit::new(total, &ranges),
        })
    }
}

/// SerenityOS's `RegionTree::allocate_range_anywhere`: walk the regions in address order
/// and take the first hole of at least `size + alignment` bytes (the tail counts too),
/// then insert into a sorted map. A `BTreeMap` scans faster than Serenity's intrusive
/// red-black tree, so this baseline is if anything flattered.
pub struct FirstFit {
    total: VirtualRange,
    /// base -> last (inclusive)
    regions: BTreeMap<u64, u64>,
}

impl FirstFit {
    /// A baseline holding `ranges`, which must be disjoint and inside `total`.
    pub fn new(total: VirtualRange, ranges: &[VirtualRange]) -> Self {
        FirstFit {
            total,
            regions: ranges
                .iter()
                .map(|r| (r.base().get(), r.last().get()))
                .collect(),
        }
    }

    /// Places `size` bytes at the first hole of `size + alignment` bytes; returns the base.
    /// `None` when no hole is that large (or on overflow).
    pub fn place_anywhere(&mut self, size: u64, alignment: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        let needed = size.checked_add(alignment)?;
        let mut window = self.total.base().get();
        let mut found = None;
        for (&base, &last) in &self.regions {
            if base - window >= needed {
                found = Some(window);
                break;
            }
            window = last.checked_add(1)?;
        }
        let hole_base = match found {
            Some(hole_base) => hole_base,
            None if self.total.last().get().checked_sub(window)? >= needed - 1 => window,
            None => return None,
        };
        let base = hole_base.checked_next_multiple_of(alignment)?;
        self.regions.insert(base, base + size - 1);
        Some(base)
    }

    /// Removes the region at exactly `base`; returns its last byte.
    pub fn remove(&mut self, base: u64) -> Option<u64> {
        self.regions.remove(&base)
    }
}

/// `n` one-page regions from the base of `total` up, each after a hole of `1..=max_hole` pages
/// (a deterministic draw seeded by `n`). `None` if they do not fit in `total`.
pub fn fragmented_layout(
    total: VirtualRange,
    n: usize,
    max_hole: u64,
) -> Option<Vec<VirtualRange>> {
    let mut rng = SplitMix64::new(n as u64);
    let mut base = total.base();
    let layout: Option<Vec<VirtualRange>> = (0..n)
        .map(|_| {
            let hole = (1 + rng.next_u64() % max_hole.max(1)) * PAGE_SIZE;
            let range = VirtualRange::new(base.checked_add(hole)?, PAGE_SIZE).ok()?;
            base = range.end()?;
            Some(range)
        })
        .collect();
    layout.filter(|l| l.iter().all(|r| total.contains_range(r)))
}

/// A tree holding `ranges`, with each region made by `make`. The boxes are allocated first and
/// placed in shuffled order, as in an address space built up over time: allocated in address
/// order, the tree's right spine lies a power of two apart in memory and collides in the same
/// cache sets, which measures the allocator's layout more than the tree.
pub fn shuffled_tree<B>(
    total: VirtualRange,
    ranges: &[VirtualRange],
    mut make: impl FnMut() -> Box<Region<B>>,
) -> Result<RegionTree<B>, RegionTreeError> {
    let mut boxes: Vec<_> = ranges.iter().map(|_| make()).collect();
    // Fisher-Yates; the modulo bias is irrelevant here.
    let mut rng = SplitMix64::new(7);
    for i in (1..boxes.len()).rev() {
        boxes.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut tree = RegionTree::new(total);
    for (range, region) in ranges.iter().zip(boxes) {
        tree.place_specifically(region, range.base(), range.size())?;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Access;

    #[test]
    fn first_fit_and_tree_agree_on_a_fragmented_layout() {
        let total = VirtualRange::new(VirtualAddress::new(0x10_0000), 0x100_0000).unwrap();
        let ranges = fragmented_layout(total, 100, 3).unwrap();
        let mut tree = shuffled_tree(total, &ranges, || {
            Box::new(Region::new("r", Access::READ, None::<()>))
        })
        .unwrap();
        tree.check_invariants().unwrap();
        assert_eq!(tree.len(), 100);

        // No interior hole has 4 + 1 pages, so first fit goes to the tail; so does best fit.
        let mut first_fit = FirstFit::new(total, &ranges);
        let base = first_fit.place_anywhere(4 * PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(base, ranges[99].end().unwrap().get());
        let region = Box::new(Region::new("r", Access::READ, None));
        let placed = tree
            .place_anywhere(region, 4 * PAGE_SIZE, PAGE_SIZE)
            .unwrap();
        assert_eq!(placed.base().get(), base);
        assert_eq!(first_fit.remove(base), Some(base + 4 * PAGE_SIZE - 1));
    }

    #[test]
    fn steady_state_holds_the_same_regions_in_both() {
        let mut state = SteadyState::new(1000, 3, || {
            Box::new(Region::new("r", Access::READ, None::<()>))
        })
        .unwrap();
        assert_eq!(state.tree.len(), 1000);
        assert_eq!(state.first_fit.regions.len(), 1000);
        let base = state.first_fit.place_anywhere(REQUEST, PAGE_SIZE).unwrap();
        assert_eq!(
            base,
            *state.first_fit.regions.keys().nth(999).unwrap() + PAGE_SIZE
        );
    }

    #[test]
    fn layout_that_does_not_fit_is_refused() {
        let total = VirtualRange::new(VirtualAddress::new(0x1000), 8 * PAGE_SIZE).unwrap();
        assert!(fragmented_layout(total, 100, 3).is_none());
        assert_eq!(fragmented_layout(total, 2, 1).map(|l| l.len()), Some(2));
    }
}
