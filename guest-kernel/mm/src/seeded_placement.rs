//! The seeded placement bugs: `map-anywhere` by first fit instead of best fit
//! (`bug-anywhere-first-fit`), and randomized placement from random words that lost their top
//! bit (`bug-aslr-low-half`). Both place validly: only the placement policy and the
//! uniformity checks of the host's model can tell.

use shared_mm::address::{VirtualAddress, PAGE_SIZE};
use shared_mm::region_tree::{RandomSource, RegionTree};

/// The lowest `align`-aligned start of `size` bytes in the lowest-addressed hole of `tree`
/// that holds one; `None` for an invalid request or when no hole fits.
pub(crate) fn first_fit<B>(tree: &RegionTree<B>, size: u64, align: u64) -> Option<VirtualAddress> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !align.is_power_of_two() || align < PAGE_SIZE
    {
        return None;
    }
    // The lowest aligned start in the hole from `first` to `last` (inclusive), if it fits.
    let fit = |first: Option<u64>, last: Option<u64>| {
        let start = first?.checked_next_multiple_of(align)?;
        (start.checked_add(size - 1)? <= last?).then(|| VirtualAddress::new(start))
    };
    let total = tree.total_range();
    let mut first = Some(total.base().get());
    for range in tree.iter().filter_map(|region| region.range()) {
        if let Some(start) = fit(first, range.base().get().checked_sub(1)) {
            return Some(start);
        }
        first = range.last().get().checked_add(1);
    }
    fit(first, Some(total.last().get()))
}

/// A random source whose words went through a signed conversion and back (`abs` of an `i64`):
/// the top bit is lost, so a bounded draw lands in the lower half of its range.
pub(crate) struct LowHalf<'a, R>(pub &'a mut R);

impl<R: RandomSource> RandomSource for LowHalf<'_, R> {
    fn next_u64(&mut self) -> u64 {
        (self.0.next_u64() as i64).unsigned_abs()
    }
}
