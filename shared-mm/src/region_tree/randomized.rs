//! The `place_randomized` draw: uniform over every valid aligned start, from counted slots.
#![forbid(unsafe_code)]

use super::best_fit::best_fit;
use super::free_space::FreeSpace;
use super::holes::{Class, Hole};
use super::random::{uniform_below, RandomSource};
use crate::address::PAGE_SIZE;

/// A start drawn uniformly from all valid `alignment`-aligned starts of a `size`-byte
/// placement (both valid); `None` if there is none, and then nothing is drawn.
///
/// Each hole of at least `size` bytes has `marks - units(size)` *slots* in the alignment's
/// class: its aligned starts first, then at most one start that runs past the hole (see
/// [`Hole::marks`](super::holes::Hole::marks)). The gap index sums them per subtree, so one
/// descent counts them and another picks the k-th. A draw that lands on a valid start is
/// taken: every valid start has exactly one slot, so the result is uniform. With page
/// alignment, or a size that is a multiple of the alignment, every slot is valid and the
/// first draw is taken.
///
/// Otherwise a draw may be rejected. Interleaved with the draws, a scan walks the holes that
/// fit (two before the loop's first draw, then one per draw; a draw comes before the scan
/// only when every slot is valid or there are at most [`FEW_SLOTS`]), counting their starts;
/// if it ends first, the start is picked by rank among the starts it counted, again
/// uniformly. The scan needs no randomness, so mixing the two keeps the result uniform, and
/// the loop ends even if the source always rejects.
pub(super) fn uniform(
    space: &FreeSpace<'_>,
    size: u64,
    alignment: u64,
    rng: &mut impl RandomSource,
) -> Option<u64> {
    let class = Class::of(alignment);
    // Above 1 GiB, room at 1 GiB does not prove room at `alignment`.
    let exists = if class.alignment() == alignment {
        space.has_room(class, size)
    } else {
        best_fit(space, size, alignment).is_some()
    };
    if !exists {
        return None;
    }
    if let Some(start) = tail_first_draw(space, class, size, alignment, rng) {
        return Some(start);
    }
    let slots = space.slots(class, size);
    let draw = |rng: &mut _| draw_slot(space, class, size, alignment, uniform_below(rng, slots));
    let every_slot_valid = alignment == PAGE_SIZE || size.is_multiple_of(alignment);
    if every_slot_valid || slots <= FEW_SLOTS {
        // The first draw is taken, or likely to be.
        if let Some(start) = draw(rng) {
            return Some(start);
        }
    }
    let mut scan = space.fitting(size, alignment);
    // The first hole the scan found: its lowest start and number of starts.
    let mut first = None;
    let mut counted = 0;
    // Holes the scan visits before the next draw.
    let mut steps = 2;
    loop {
        // Two holes before the next draw, so that with one hole that fits among many near
        // misses the scan ends with no further draw; then one per draw. The schedule depends
        // on no random value.
        for _ in 0..core::mem::replace(&mut steps, 1) {
            let Some((_, start, count)) = scan.next() else {
                let k = uniform_below(rng, counted);
                return match first {
                    // Often the only hole (many near misses, few fits): no second scan.
                    Some((start, count)) if k < count => Some(start + k * alignment),
                    _ => nth_start(space, size, alignment, k),
                };
            };
            first.get_or_insert((start, count));
            // Holes are disjoint and starts at least a page apart: no overflow.
            counted += count;
        }
        if let Some(start) = draw(rng) {
            return Some(start);
        }
    }
}

/// Slots up to which [`uniform`] draws before it scans: with so few, a valid start is likely
/// to be drawn. With many, most of them may be near misses (the adversarial layout: a million
/// slots and one valid start), and a draw is a descent along a random path, which in a large
/// index misses the cache at every level; the scan's path is the same from call to call.
/// Measured at 1M regions with one valid start: 2.2-2.6 µs per call drawing first, 0.84 µs
/// scanning first.
const FEW_SLOTS: u64 = 64;

/// One draw that counts no slots, for a space whose tail holds most of them: uniform over
/// the [`slot_bound`](FreeSpace::slot_bound), the tail's slots and then every mark of the gap
/// index. It is made only when the tail's slots are at least the marks, so that it lands in
/// the tail, at no descent, at least half the time; it is taken if it lands on a valid start.
///
/// Every valid start has one number in the bound, so each is taken here with the same
/// probability; what is not taken goes on to the exact draw, itself uniform. The mix is
/// uniform: with `b` numbers in the bound and `v` valid starts, a start's probability is
/// `1/b + (1 - v/b) / v = 1/v`.
fn tail_first_draw(
    space: &FreeSpace<'_>,
    class: Class,
    size: u64,
    alignment: u64,
    rng: &mut impl RandomSource,
) -> Option<u64> {
    let (tail, marks) = space.slot_bound(class, size);
    if tail == 0 || tail < marks {
        return None;
    }
    // Both count aligned addresses of disjoint holes: the sum is below 2^53.
    let k = uniform_below(rng, tail + marks);
    let (hole, slot) = space.bounded_slot(class, size, k)?;
    valid_start(hole, class, slot, size, alignment)
}

/// The start of slot `k`, if it is a valid `alignment`-aligned start of `size` bytes.
fn draw_slot(
    space: &FreeSpace<'_>,
    class: Class,
    size: u64,
    alignment: u64,
    k: u64,
) -> Option<u64> {
    let (hole, slot) = space.slot(class, size, k)?;
    valid_start(hole, class, slot, size, alignment)
}

/// The start of `slot` in `hole`, if it is a valid `alignment`-aligned start of `size` bytes.
fn valid_start(hole: Hole, class: Class, slot: u64, size: u64, alignment: u64) -> Option<u64> {
    let start = hole.slot_start(class, slot)?;
    let fits = start.checked_add(size - 1)? <= hole.last();
    (fits && start.is_multiple_of(alignment)).then_some(start)
}

/// The `k`-th valid start, in the order of [`FreeSpace::fitting`].
fn nth_start(space: &FreeSpace<'_>, size: u64, alignment: u64, mut k: u64) -> Option<u64> {
    for (_, first, count) in space.fitting(size, alignment) {
        if k < count {
            return Some(first + k * alignment);
        }
        k -= count;
    }
    None
}
