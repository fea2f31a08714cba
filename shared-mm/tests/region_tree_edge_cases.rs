//! Named edge cases of RegionTree: the top of the address space, alignment, errors, neighbours.
#![forbid(unsafe_code)]

use std::rc::Rc;

use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{
    InvariantViolation, RandomSource, RegionTree, RegionTreeError, SplitMix64,
};

const TOP_PAGE: u64 = 0xFFFF_FFFF_FFFF_F000;
const GIB: u64 = 1 << 30;

fn addr(a: u64) -> VirtualAddress {
    VirtualAddress::new(a)
}

fn range(base: u64, size: u64) -> VirtualRange {
    VirtualRange::new(addr(base), size).unwrap()
}

fn region(name: &'static str) -> Box<Region<u32>> {
    Box::new(Region::new(name, Access::READ | Access::WRITE, None))
}

fn tree(base: u64, size: u64) -> RegionTree<u32> {
    RegionTree::new(range(base, size))
}

/// Places `name` at `[base, base + size)` and checks the tree.
fn put(tree: &mut RegionTree<u32>, name: &'static str, base: u64, size: u64) {
    tree.place_specifically(region(name), addr(base), size)
        .unwrap();
    tree.check_invariants().unwrap();
}

fn names<'a>(regions: impl Iterator<Item = &'a Region<u32>>) -> Vec<&'static str> {
    regions.map(|r| r.name()).collect()
}

fn anywhere_err(tree: &mut RegionTree<u32>, size: u64, alignment: u64) -> RegionTreeError {
    let err = tree
        .place_anywhere(region("x"), size, alignment)
        .unwrap_err();
    assert_eq!(err.region.name(), "x", "the region comes back");
    err.kind
}

fn specific_err(tree: &mut RegionTree<u32>, base: u64, size: u64) -> RegionTreeError {
    let err = tree
        .place_specifically(region("x"), addr(base), size)
        .unwrap_err();
    assert_eq!(err.region.name(), "x", "the region comes back");
    err.kind
}

#[test]
fn top_of_address_space() {
    // The total range ends exactly at 2^64.
    let mut t = tree(TOP_PAGE - 7 * PAGE_SIZE, 8 * PAGE_SIZE);
    assert_eq!(t.total_range().end(), None);
    put(&mut t, "top", TOP_PAGE, PAGE_SIZE);
    let top = t.find_region_containing(addr(u64::MAX)).unwrap();
    assert_eq!(top.name(), "top");
    assert_eq!(top.range().unwrap().end(), None);

    let placed = t
        .place_anywhere(region("a"), 7 * PAGE_SIZE, PAGE_SIZE)
        .unwrap();
    assert_eq!(placed, range(TOP_PAGE - 7 * PAGE_SIZE, 7 * PAGE_SIZE));
    assert_eq!(
        anywhere_err(&mut t, PAGE_SIZE, PAGE_SIZE),
        RegionTreeError::NoSpace
    );
    t.check_invariants().unwrap();

    // Removing the top region reopens the tail hole that ends at 2^64.
    assert_eq!(t.remove(addr(TOP_PAGE)).unwrap().name(), "top");
    let again = t.place_anywhere(region("b"), PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_eq!(again.last(), addr(u64::MAX));
    t.remove(addr(TOP_PAGE)).unwrap();
    let mut rng = SplitMix64::new(1);
    let random = t
        .place_randomized(region("c"), PAGE_SIZE, PAGE_SIZE, &mut rng)
        .unwrap();
    assert_eq!(random.base(), addr(TOP_PAGE));
    assert_eq!(
        names(t.find_regions_intersecting(range(TOP_PAGE, PAGE_SIZE))),
        ["c"]
    );
    t.check_invariants().unwrap();
}

#[test]
fn overflow_past_top() {
    let mut t = tree(TOP_PAGE - 7 * PAGE_SIZE, 8 * PAGE_SIZE);
    assert_eq!(
        specific_err(&mut t, TOP_PAGE, 2 * PAGE_SIZE),
        RegionTreeError::Overflow
    );
    let largest = !(PAGE_SIZE - 1);
    assert_eq!(
        specific_err(&mut t, 2 * PAGE_SIZE, largest),
        RegionTreeError::Overflow
    );
    // Ending exactly at 2^64 is no overflow (but outside this total range).
    assert_eq!(
        specific_err(&mut t, PAGE_SIZE, largest),
        RegionTreeError::OutOfRange
    );
    // Aligning up past 2^64 is no space, not a wrap-around to 0.
    assert_eq!(
        anywhere_err(&mut t, PAGE_SIZE, 1 << 63),
        RegionTreeError::NoSpace
    );
    assert!(t.is_empty());
}

#[test]
fn zero_size() {
    let mut t = tree(0x10_0000, 0x10_0000);
    assert_eq!(
        anywhere_err(&mut t, 0, PAGE_SIZE),
        RegionTreeError::ZeroSize
    );
    assert_eq!(
        specific_err(&mut t, 0x10_0000, 0),
        RegionTreeError::ZeroSize
    );
    let mut rng = SplitMix64::new(0);
    let err = t
        .place_randomized(region("x"), 0, PAGE_SIZE, &mut rng)
        .unwrap_err();
    assert_eq!(err.kind, RegionTreeError::ZeroSize);
}

#[test]
fn misaligned_size_and_base() {
    let mut t = tree(0x10_0000, 0x10_0000);
    assert_eq!(
        anywhere_err(&mut t, 0x1800, PAGE_SIZE),
        RegionTreeError::MisalignedSize
    );
    assert_eq!(
        specific_err(&mut t, 0x10_0000, 0x1001),
        RegionTreeError::MisalignedSize
    );
    assert_eq!(
        specific_err(&mut t, 0x10_0800, 0x1000),
        RegionTreeError::MisalignedBase
    );
    assert!(t.is_empty());
}

#[test]
fn non_power_of_two_alignment() {
    let mut t = tree(0x10_0000, 0x10_0000);
    for alignment in [0, 1, 2048, 3 * PAGE_SIZE, PAGE_SIZE + 1, u64::MAX] {
        assert_eq!(
            anywhere_err(&mut t, PAGE_SIZE, alignment),
            RegionTreeError::BadAlignment
        );
    }
}

#[test]
fn out_of_range() {
    let mut t = tree(0x10_0000, 0x10_0000);
    assert_eq!(
        specific_err(&mut t, 0x0F_F000, PAGE_SIZE),
        RegionTreeError::OutOfRange
    );
    assert_eq!(
        specific_err(&mut t, 0x1F_F000, 2 * PAGE_SIZE),
        RegionTreeError::OutOfRange
    );
    assert_eq!(
        specific_err(&mut t, 0x20_0000, PAGE_SIZE),
        RegionTreeError::OutOfRange
    );
    put(&mut t, "first page", 0x10_0000, PAGE_SIZE);
    put(&mut t, "last page", 0x1F_F000, PAGE_SIZE);
}

#[test]
fn overlap_with_left_and_right_neighbours() {
    let mut t = tree(0x10_0000, 0x10_0000);
    put(&mut t, "left", 0x11_0000, 0x4000); // 0x110000..=0x113fff
    put(&mut t, "right", 0x11_8000, 0x4000); // 0x118000..=0x11bfff
                                             // Last page of the left neighbour.
    assert_eq!(
        specific_err(&mut t, 0x11_3000, 0x2000),
        RegionTreeError::Overlap
    );
    // First page of the right neighbour.
    assert_eq!(
        specific_err(&mut t, 0x11_6000, 0x3000),
        RegionTreeError::Overlap
    );
    // Both, and one containing a neighbour entirely.
    assert_eq!(
        specific_err(&mut t, 0x11_0000, 0x10000),
        RegionTreeError::Overlap
    );
    assert_eq!(
        specific_err(&mut t, 0x10_F000, 0x6000),
        RegionTreeError::Overlap
    );
    // Inside a neighbour, sharing its base.
    assert_eq!(
        specific_err(&mut t, 0x11_8000, PAGE_SIZE),
        RegionTreeError::Overlap
    );
    // Touching both neighbours exactly is fine.
    put(&mut t, "middle", 0x11_4000, 0x4000);
    assert_eq!(names(t.iter()), ["left", "middle", "right"]);
    // Touching from outside too.
    put(&mut t, "below", 0x10_F000, PAGE_SIZE);
    put(&mut t, "above", 0x11_C000, PAGE_SIZE);
    assert_eq!(
        names(t.iter()),
        ["below", "left", "middle", "right", "above"]
    );
}

#[test]
fn no_space() {
    let mut t = tree(0x10_0000, 8 * PAGE_SIZE);
    put(&mut t, "a", 0x10_1000, PAGE_SIZE);
    put(&mut t, "b", 0x10_4000, PAGE_SIZE);
    // Holes: 1 page, 2 pages, 3 pages.
    assert_eq!(
        anywhere_err(&mut t, 4 * PAGE_SIZE, PAGE_SIZE),
        RegionTreeError::NoSpace
    );
    // Three pages fit only at 0x105000, which is not 16 KiB aligned.
    assert_eq!(
        anywhere_err(&mut t, 3 * PAGE_SIZE, 4 * PAGE_SIZE),
        RegionTreeError::NoSpace
    );
    assert_eq!(
        anywhere_err(&mut t, 16 * PAGE_SIZE, PAGE_SIZE),
        RegionTreeError::NoSpace
    );
    let mut rng = SplitMix64::new(3);
    let err = t
        .place_randomized(region("x"), 4 * PAGE_SIZE, PAGE_SIZE, &mut rng)
        .unwrap_err();
    assert_eq!(err.kind, RegionTreeError::NoSpace);
    assert_eq!(t.len(), 2);
    t.check_invariants().unwrap();
}

#[test]
fn place_anywhere_is_best_fit_then_lowest() {
    let mut t = tree(0x10_0000, 16 * PAGE_SIZE);
    put(&mut t, "a", 0x10_3000, PAGE_SIZE); // hole of 3 pages below
    put(&mut t, "b", 0x10_5000, PAGE_SIZE); // hole of 1 page below
    put(&mut t, "c", 0x10_8000, PAGE_SIZE); // hole of 2 pages below; tail of 7 pages
    let at = |t: &mut RegionTree<u32>, pages| {
        let r = t
            .place_anywhere(region("n"), pages * PAGE_SIZE, PAGE_SIZE)
            .unwrap();
        t.check_invariants().unwrap();
        r.base().get()
    };
    assert_eq!(at(&mut t, 1), 0x10_4000); // the 1-page hole
    assert_eq!(at(&mut t, 1), 0x10_6000); // the 2-page hole, now 1 page left
    assert_eq!(at(&mut t, 1), 0x10_7000);
    assert_eq!(at(&mut t, 2), 0x10_0000); // the 3-page hole
    assert_eq!(at(&mut t, 5), 0x10_9000); // the tail
    assert_eq!(at(&mut t, 1), 0x10_2000); // equal 1-page holes: the lowest
}

#[test]
fn aligned_placement_has_no_over_reservation() {
    // A hole of exactly 1 GiB + 2 pages, 1 GiB-aligned in its middle: SerenityOS-style
    // search needs 2 GiB here, this one finds it.
    let mut t = tree(0, 4 * GIB);
    put(&mut t, "low", 0, GIB - PAGE_SIZE);
    put(&mut t, "high", 2 * GIB + PAGE_SIZE, 2 * GIB - PAGE_SIZE);
    let placed = t.place_anywhere(region("huge"), GIB, GIB).unwrap();
    assert_eq!(placed, range(GIB, GIB));
    t.check_invariants().unwrap();
    // Left: one page below 1 GiB and one page at 2 GiB, which is 1 GiB-aligned.
    let page = t.place_anywhere(region("page"), PAGE_SIZE, GIB).unwrap();
    assert_eq!(page, range(2 * GIB, PAGE_SIZE));
    assert_eq!(
        anywhere_err(&mut t, PAGE_SIZE, GIB),
        RegionTreeError::NoSpace
    );
    assert_eq!(
        t.place_anywhere(region("last"), PAGE_SIZE, PAGE_SIZE)
            .unwrap(),
        range(GIB - PAGE_SIZE, PAGE_SIZE)
    );
    t.check_invariants().unwrap();
}

#[test]
fn alignment_up_to_one_gib() {
    let mut t = tree(PAGE_SIZE, 8 * GIB - PAGE_SIZE);
    for (shift, expected) in [(12, PAGE_SIZE), (21, 2 << 20), (30, GIB)] {
        let placed = t
            .place_anywhere(region("x"), PAGE_SIZE, 1 << shift)
            .unwrap();
        assert_eq!(placed.base().get(), expected, "alignment 2^{shift}");
        t.remove(placed.base()).unwrap();
    }
    // `small` covers 1 GiB and 2 GiB; the hole below it has no 1 GiB-aligned page, so
    // the page goes to the tail, at 3 GiB.
    put(&mut t, "small", GIB - PAGE_SIZE, GIB + 2 * PAGE_SIZE);
    let placed = t.place_anywhere(region("y"), PAGE_SIZE, GIB).unwrap();
    assert_eq!(placed.base().get(), 3 * GIB);
    // Randomized: 4, 5, 6 and 7 GiB are left.
    let mut rng = SplitMix64::new(9);
    let mut seen = [false; 8];
    for _ in 0..64 {
        let r = t
            .place_randomized(region("z"), PAGE_SIZE, GIB, &mut rng)
            .unwrap();
        assert!(r.base().get().is_multiple_of(GIB));
        seen[(r.base().get() / GIB) as usize] = true;
        t.check_invariants().unwrap();
        t.remove(r.base()).unwrap();
    }
    assert_eq!(seen, [false, false, false, false, true, true, true, true]);
}

#[test]
fn range_starting_in_hole_before_first_region() {
    let mut t = tree(0x10_0000, 0x10_0000);
    put(&mut t, "a", 0x10_4000, PAGE_SIZE);
    put(&mut t, "b", 0x10_8000, PAGE_SIZE);
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_0000, 0x5000))),
        ["a"]
    );
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_0000, 0x4000))),
        Vec::<&str>::new()
    );
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_0000, 0x10_0000))),
        ["a", "b"]
    );
    assert!(t.find_region_containing(addr(0x10_0000)).is_none());
}

#[test]
fn ranges_spanning_several_regions() {
    let mut t = tree(0x10_0000, 0x10_0000);
    for (name, base) in [
        ("a", 0x10_1000),
        ("b", 0x10_3000),
        ("c", 0x10_5000),
        ("d", 0x10_7000),
    ] {
        put(&mut t, name, base, 0x2000);
    }
    // Starts inside `a`, ends inside `c`.
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_2000, 0x4000))),
        ["a", "b", "c"]
    );
    // Starts in a hole, ends on the first byte of `d`.
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_0000, 0x8000))),
        ["a", "b", "c", "d"]
    );
    // Exactly one region, its last page.
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_4000, 0x1000))),
        ["b"]
    );
    // Past the last region.
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_9000, 0x1000))),
        Vec::<&str>::new()
    );
    // Reverse iteration works too.
    assert_eq!(
        names(t.find_regions_intersecting(range(0x10_0000, 0x8000)).rev()),
        ["d", "c", "b", "a"]
    );
}

#[test]
fn find_region_containing_edges() {
    let mut t = tree(0x10_0000, 0x10_0000);
    put(&mut t, "a", 0x10_2000, 0x2000);
    assert_eq!(
        t.find_region_containing(addr(0x10_2000)).unwrap().name(),
        "a"
    );
    assert_eq!(
        t.find_region_containing(addr(0x10_3fff)).unwrap().name(),
        "a"
    );
    assert!(t.find_region_containing(addr(0x10_1fff)).is_none());
    assert!(t.find_region_containing(addr(0x10_4000)).is_none());
    assert!(t.find_region_containing(addr(0)).is_none());
    assert!(t.find_region_containing(addr(u64::MAX)).is_none());
}

#[test]
fn remove_needs_the_exact_base() {
    let mut t = tree(0x10_0000, 0x10_0000);
    put(&mut t, "a", 0x10_2000, 0x2000);
    assert!(t.remove(addr(0x10_3000)).is_none());
    assert!(t.remove(addr(0x10_0000)).is_none());
    let a = t.remove(addr(0x10_2000)).unwrap();
    assert_eq!(a.range(), Some(range(0x10_2000, 0x2000)));
    assert!(!a.is_placed());
    assert!(t.is_empty());
    t.check_invariants().unwrap();
    // A removed region can be placed again.
    t.place_specifically(a, addr(0x10_8000), PAGE_SIZE).unwrap();
    t.check_invariants().unwrap();
}

#[test]
fn access_can_change_while_placed() {
    let mut t = tree(0x10_0000, 0x10_0000);
    put(&mut t, "a", 0x10_2000, 0x2000);
    let a = t.find_region_containing(addr(0x10_2000)).unwrap();
    a.set_access(Access::READ | Access::USER);
    assert_eq!(t.iter().next().unwrap().access().to_string(), "u-r--");
}

#[test]
fn errors_leave_the_tree_unchanged() {
    let mut t = tree(0x10_0000, 4 * PAGE_SIZE);
    put(&mut t, "a", 0x10_1000, PAGE_SIZE);
    let before: Vec<_> = t.iter().map(|r| r.range()).collect();
    specific_err(&mut t, 0x10_1000, PAGE_SIZE);
    anywhere_err(&mut t, 8 * PAGE_SIZE, PAGE_SIZE);
    let after: Vec<_> = t.iter().map(|r| r.range()).collect();
    assert_eq!(before, after);
    t.check_invariants().unwrap();
}

#[test]
fn error_messages() {
    assert_eq!(
        RegionTreeError::Overlap.to_string(),
        "range overlaps a placed region"
    );
    let mut t = tree(0x10_0000, PAGE_SIZE);
    let err = t
        .place_anywhere(region("heap"), 2 * PAGE_SIZE, PAGE_SIZE)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot place region `heap`: no free hole fits"
    );
    assert_eq!(RegionTreeError::from(err), RegionTreeError::NoSpace);
    let violation = InvariantViolation::CountMismatch {
        counted: 1,
        recorded: 2,
    };
    assert_eq!(
        violation.to_string(),
        "found 1 regions but the tree records 2"
    );
}

#[test]
fn dropping_the_tree_drops_every_region() {
    let backing = Rc::new(());
    {
        let mut t: RegionTree<Rc<()>> = RegionTree::new(range(0x10_0000, 0x10_0000));
        for _ in 0..10 {
            let r = Box::new(Region::new("r", Access::READ, Some(backing.clone())));
            t.place_anywhere(r, PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
        }
        assert_eq!(Rc::strong_count(&backing), 11);
        let removed = t.remove(addr(0x10_0000)).unwrap();
        assert!(removed.is_backed());
    }
    assert_eq!(Rc::strong_count(&backing), 1);
}

#[test]
fn region_tree_is_send_when_backing_is() {
    fn assert_send<T: Send>() {}
    assert_send::<RegionTree<u32>>();
    assert_send::<RegionTree<std::sync::Arc<u32>>>();
}

/// Counts how often each of the valid positions is drawn: every one must be hit, and the
/// counts must pass a chi-square test (fixed seed, so the test is deterministic).
#[test]
fn place_randomized_is_uniform_over_all_aligned_positions() {
    let mut t = tree(0x10_0000, 32 * PAGE_SIZE);
    // Holes: pages 0..3 (3 pages), 4..10 (6 pages), 12..32 (tail, 20 pages).
    put(&mut t, "a", 0x10_3000, PAGE_SIZE);
    put(&mut t, "b", 0x10_A000, 2 * PAGE_SIZE);
    // Two pages at 8 KiB alignment: starts at page 0 (hole 1), pages 4, 6, 8 (hole 2),
    // pages 12, 14, ..., 30 (tail): 1 + 3 + 10 = 14 positions.
    let positions: Vec<u64> = [0, 4, 6, 8, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
        .iter()
        .map(|page| 0x10_0000 + page * PAGE_SIZE)
        .collect();
    let mut counts = vec![0u32; positions.len()];
    let mut rng = SplitMix64::new(0x5eed);
    let draws = 14_000;
    for _ in 0..draws {
        let r = t
            .place_randomized(region("r"), 2 * PAGE_SIZE, 2 * PAGE_SIZE, &mut rng)
            .unwrap();
        let index = positions.iter().position(|&p| p == r.base().get()).unwrap();
        counts[index] += 1;
        t.remove(r.base()).unwrap();
    }
    let expected = f64::from(draws) / positions.len() as f64;
    let chi_square: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    // 13 degrees of freedom: p = 0.001 at 34.5.
    assert!(
        chi_square < 34.5,
        "chi-square {chi_square}, counts {counts:?}"
    );
    t.check_invariants().unwrap();
}

#[test]
fn splitmix64_is_deterministic() {
    let mut a = SplitMix64::new(77);
    let mut b = SplitMix64::new(77);
    assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
}
