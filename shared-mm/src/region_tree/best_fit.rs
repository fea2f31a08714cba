//! The `place_anywhere` policy: best fit among the holes that hold an aligned placement.
#![forbid(unsafe_code)]

use super::free_space::FreeSpace;
use crate::address::PAGE_SIZE;

/// The start `place_anywhere` picks for `size` bytes at `alignment` (both valid), or `None`
/// if no hole holds an aligned placement:
///
/// 1. the smallest hole of at least `size + alignment - PAGE_SIZE` bytes (every such hole
///    fits, whatever its base);
/// 2. otherwise the smallest hole that fits.
///
/// Both take the lowest among holes of equal size and the lowest aligned address in the hole.
/// Step 1 is one descent; step 2 is one descent guided by the gap index's largest room per
/// alignment class, so that a hole without an aligned start is never visited. Above 1 GiB,
/// step 2 also visits holes that fit at 1 GiB but not at `alignment`.
pub(super) fn best_fit(space: &FreeSpace<'_>, size: u64, alignment: u64) -> Option<u64> {
    // `None` when no hole can be that large.
    let roomy = size.checked_add(alignment - PAGE_SIZE);
    match roomy.and_then(|roomy| space.smallest_at_least(roomy)) {
        Some(hole) => hole.first_fit(size, alignment),
        None => space
            .fitting(size, alignment)
            .next()
            .map(|(_, first, _)| first),
    }
}
