//! place_randomized is uniform over every valid aligned position, and both placements find
//! the only one when exactly one exists (no false negatives among many near misses).

use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RandomSource, RegionTree, RegionTreeError, SplitMix64};

const GIB: u64 = 1 << 30;

fn region() -> Box<Region<()>> {
    Box::new(Region::new("r", Access::READ, None))
}

/// A tree over `[base, base + size)` with regions filling everything but `holes`, given as
/// `(offset, size)` in bytes from `base`, in address order.
fn tree_with_holes(base: u64, size: u64, holes: &[(u64, u64)]) -> RegionTree<()> {
    let mut tree = RegionTree::new(VirtualRange::new(VirtualAddress::new(base), size).unwrap());
    let mut next = 0;
    for &(offset, hole) in holes.iter().chain([&(size, 0)]) {
        if offset > next {
            let at = VirtualAddress::new(base + next);
            tree.place_specifically(region(), at, offset - next)
                .unwrap();
        }
        next = offset + hole;
    }
    tree.check_invariants().unwrap();
    tree
}

/// Every valid aligned start, by brute force over the tree's regions.
fn valid_starts(tree: &RegionTree<()>, size: u64, alignment: u64) -> Vec<u64> {
    let total = tree.total_range();
    let mut starts = Vec::new();
    let mut start = total.base().get().next_multiple_of(alignment);
    while start + size - 1 <= total.last().get() {
        let range = VirtualRange::new(VirtualAddress::new(start), size).unwrap();
        if tree.find_regions_intersecting(range).next().is_none() {
            starts.push(start);
        }
        start += alignment;
    }
    starts
}

/// The chi-square value at p = 0.001 for `df` degrees of freedom (Wilson-Hilferty).
fn chi_square_limit(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.09;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Draws `per_position` placements per valid position and checks that each is valid, every
/// position is hit, and the counts pass a chi-square test at p = 0.001.
fn assert_uniform(tree: &mut RegionTree<()>, size: u64, alignment: u64, seed: u64) {
    let positions = valid_starts(tree, size, alignment);
    assert!(
        positions.len() >= 2,
        "{size:#x} at {alignment:#x}: too few positions"
    );
    let per_position = 400;
    let mut counts = vec![0u32; positions.len()];
    let mut rng = SplitMix64::new(seed);
    for _ in 0..per_position * positions.len() {
        let placed = tree
            .place_randomized(region(), size, alignment, &mut rng)
            .unwrap();
        let index = positions.binary_search(&placed.base().get());
        counts[index.expect("a valid position")] += 1;
        tree.remove(placed.base()).unwrap();
    }
    let expected = f64::from(per_position as u32);
    let chi_square: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    let limit = chi_square_limit(positions.len() - 1);
    assert!(
        counts.iter().all(|&c| c > 0) && chi_square < limit,
        "{size:#x} at {alignment:#x}: chi-square {chi_square:.1} (limit {limit:.1}), counts {counts:?}"
    );
    tree.check_invariants().unwrap();
}

/// Holes of 3, 6, 1, 11, 2 and 20 pages and a tail of 9, in a 64-page space whose base is
/// not aligned beyond 8 KiB: unequal holes with unequal numbers of aligned positions.
fn unequal_holes() -> RegionTree<()> {
    let page = |n: u64| n * PAGE_SIZE;
    tree_with_holes(
        0x10_2000,
        page(64),
        &[
            (0, page(3)),
            (page(4), page(6)),
            (page(12), page(1)),
            (page(15), page(11)),
            (page(28), page(2)),
            (page(31), page(20)),
            (page(55), page(9)),
        ],
    )
}

#[test]
fn uniform_with_page_alignment() {
    for (pages, seed) in [(1, 11), (2, 12), (5, 13)] {
        assert_uniform(&mut unequal_holes(), pages * PAGE_SIZE, PAGE_SIZE, seed);
    }
}

/// Sizes that are not multiples of the alignment give holes a slot that is never valid, so
/// these also run the rejection and the scan beside it.
#[test]
fn uniform_with_larger_alignments() {
    for (pages, alignment, seed) in [
        (1, 2 * PAGE_SIZE, 21),
        (3, 2 * PAGE_SIZE, 22),
        (1, 4 * PAGE_SIZE, 23),
        (2, 4 * PAGE_SIZE, 24),
        (5, 4 * PAGE_SIZE, 25),
        (4, 4 * PAGE_SIZE, 26),
        (1, 16 * PAGE_SIZE, 27),
    ] {
        assert_uniform(&mut unequal_holes(), pages * PAGE_SIZE, alignment, seed);
    }
}

/// Holes of 1, 3 and 6 pages under a tail of 40: the tail holds more slots than the other
/// holes have marks, so the first draw counts no slots and may land on a mark that is none
/// (in the 1-page hole, or past a hole's last start); what it leaves goes to the exact draw.
#[test]
fn uniform_when_the_tail_holds_most_positions() {
    let page = |n: u64| n * PAGE_SIZE;
    let holes = [(page(1), page(1)), (page(3), page(3)), (page(7), page(6))];
    for (pages, alignment, seed) in [
        (1, PAGE_SIZE, 41),
        (2, PAGE_SIZE, 42),
        (4, PAGE_SIZE, 43),
        (1, 2 * PAGE_SIZE, 44),
        (3, 2 * PAGE_SIZE, 45),
        (3, 4 * PAGE_SIZE, 46),
    ] {
        let mut tree = tree_with_holes(
            0x20_1000,
            page(54),
            &[holes[0], holes[1], holes[2], (page(14), page(40))],
        );
        assert_uniform(&mut tree, pages * PAGE_SIZE, alignment, seed);
    }
}

/// `boundaries - 1` holes of 16 KiB that straddle 2 MiB boundaries with only 8 KiB above them
/// (each has a slot, none a valid position), every `every`-th a little larger so that it
/// fits.
fn near_misses_at_2_mib(boundaries: u64, every: u64) -> RegionTree<()> {
    let mib2 = 2 << 20;
    let mut holes = Vec::new();
    for k in 1..boundaries {
        let boundary = k * mib2;
        let extra = if k % every == 0 {
            k / every * PAGE_SIZE
        } else {
            0
        };
        holes.push((boundary - 2 * PAGE_SIZE, 4 * PAGE_SIZE + extra));
    }
    tree_with_holes(0, (boundaries + 1) * mib2, &holes)
}

/// 2 MiB alignment among 39 near misses: few slots, so the first draw comes before the scan.
#[test]
fn uniform_at_2_mib_among_near_misses() {
    assert_uniform(&mut near_misses_at_2_mib(40, 8), 3 * PAGE_SIZE, 2 << 20, 31);
}

/// 2 MiB alignment, 6 holes that fit among 393 near misses: more slots than the draw-first
/// bound, so the scan starts before any draw, and mostly ends before a draw is taken.
#[test]
fn uniform_at_2_mib_among_many_near_misses() {
    assert_uniform(
        &mut near_misses_at_2_mib(400, 64),
        3 * PAGE_SIZE,
        2 << 20,
        32,
    );
}

/// Single-page holes at `k * alignment + alignment / 2` (never aligned; at 1 GiB-aligned
/// addresses for alignments above 1 GiB, so the 1 GiB summary cannot rule them out) and one at
/// `7 * alignment`: exactly one aligned position.
fn one_position(alignment: u64) -> (RegionTree<()>, u64) {
    let fit = 7 * alignment;
    let mut holes: Vec<_> = (0..16)
        .map(|k| (k * alignment + alignment / 2, PAGE_SIZE))
        .collect();
    holes.push((fit, PAGE_SIZE));
    holes.sort_unstable();
    (tree_with_holes(0, 16 * alignment, &holes), fit)
}

#[test]
fn exactly_one_aligned_position_is_found() {
    for alignment in [2 * PAGE_SIZE, 64 << 10, 2 << 20, GIB, 4 * GIB] {
        let (mut tree, fit) = one_position(alignment);
        assert_eq!(valid_starts(&tree, PAGE_SIZE, alignment), [fit]);
        let placed = tree.place_anywhere(region(), PAGE_SIZE, alignment).unwrap();
        assert_eq!(placed.base().get(), fit, "place_anywhere at {alignment:#x}");
        tree.remove(placed.base()).unwrap();
        for seed in 0..20 {
            let mut rng = SplitMix64::new(seed);
            let placed = tree
                .place_randomized(region(), PAGE_SIZE, alignment, &mut rng)
                .unwrap();
            assert_eq!(
                placed.base().get(),
                fit,
                "place_randomized at {alignment:#x}"
            );
            tree.remove(placed.base()).unwrap();
        }
        // Without it: no space, and no value drawn.
        tree.place_specifically(region(), VirtualAddress::new(fit), PAGE_SIZE)
            .unwrap();
        let err = tree
            .place_anywhere(region(), PAGE_SIZE, alignment)
            .unwrap_err();
        assert_eq!(err.kind, RegionTreeError::NoSpace);
        let mut rng = Counting(0);
        let err = tree
            .place_randomized(region(), PAGE_SIZE, alignment, &mut rng)
            .unwrap_err();
        assert_eq!((err.kind, rng.0), (RegionTreeError::NoSpace, 0));
        tree.check_invariants().unwrap();
    }
}

/// A source that always returns the same value, and counts the calls.
struct Counting(u64);

impl RandomSource for Counting {
    fn next_u64(&mut self) -> u64 {
        self.0 += 1;
        u64::MAX
    }
}

/// Even a source whose every draw lands on a slot that is never valid cannot make the
/// placement loop forever or fail: the scan beside the draws ends.
#[test]
fn a_hostile_source_cannot_stall_or_fail_the_placement() {
    let (mut tree, fit) = one_position(2 * PAGE_SIZE);
    let mut rng = Counting(0);
    let placed = tree
        .place_randomized(region(), PAGE_SIZE, 2 * PAGE_SIZE, &mut rng)
        .unwrap();
    assert_eq!(placed.base().get(), fit);
    assert!(rng.0 > 0);
}
