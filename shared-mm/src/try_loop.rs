//! Benchmark baseline (feature `baseline`): SerenityOS-style randomized placement, random aligned addresses tried one by one.
#![forbid(unsafe_code)]

use alloc::boxed::Box;

use crate::address::{VirtualAddress, VirtualRange};
use crate::region::Region;
use crate::region_tree::{PlaceError, RandomSource, RegionTree};

/// How many random addresses SerenityOS tries before it falls back to `place_anywhere`.
pub const MAX_TRIES: u32 = 1000;

/// A placement by [`place_by_tries`] and how many random addresses it tried.
pub struct TryLoopPlacement<B> {
    /// What the placement returned (after the fallback, if every try failed).
    pub result: Result<VirtualRange, PlaceError<B>>,
    /// Random addresses tried, at most [`MAX_TRIES`].
    pub tries: u32,
    /// Whether every try failed and `place_anywhere` placed the region.
    pub fell_back: bool,
}

/// SerenityOS's `RegionTree::allocate_range_randomized`, on our tree: up to [`MAX_TRIES`]
/// times, round a random address of the total range up to `alignment` and try
/// `place_specifically` there; then fall back to `place_anywhere`. Not uniform: a position
/// after a long run of occupied addresses is hit more often.
pub fn place_by_tries<B>(
    tree: &mut RegionTree<B>,
    mut region: Box<Region<B>>,
    size: u64,
    alignment: u64,
    rng: &mut impl RandomSource,
) -> TryLoopPlacement<B> {
    let total = tree.total_range();
    for tries in 1..=MAX_TRIES {
        let offset = rng.next_u64() % total.size();
        let Some(base) = (total.base().get() + offset).checked_next_multiple_of(alignment) else {
            continue;
        };
        let fits = VirtualRange::new(VirtualAddress::new(base), size)
            .is_ok_and(|range| total.contains_range(&range));
        if !fits {
            continue;
        }
        match tree.place_specifically(region, VirtualAddress::new(base), size) {
            Ok(range) => {
                return TryLoopPlacement {
                    result: Ok(range),
                    tries,
                    fell_back: false,
                }
            }
            Err(error) => region = error.region,
        }
    }
    TryLoopPlacement {
        result: tree.place_anywhere(region, size, alignment),
        tries: MAX_TRIES,
        fell_back: true,
    }
}
