//! The RegionTree's seeded bugs, each compiled in by its `bug-*` feature and switchable with
//! `seeded-bugs`: `place_specifically` missing a one-page overlap (`bug-overlap`), and a gap-index
//! removal that leaves a stale room summary (`bug-stale-gap-summary`).
#![forbid(unsafe_code)]

/// One seeded bug, on from the start when `COMPILED` (its feature) is set.
///
/// Without the `seeded-bugs` feature this is a zero-sized constant: the feature decides at
/// compile time and nothing is stored.
#[cfg(not(feature = "seeded-bugs"))]
#[derive(Clone, Copy, Debug)]
pub(super) struct Planted<const COMPILED: bool>;

#[cfg(not(feature = "seeded-bugs"))]
impl<const COMPILED: bool> Planted<COMPILED> {
    pub(super) const fn initial() -> Self {
        Self
    }

    pub(super) const fn is_on(self) -> bool {
        COMPILED
    }
}

/// With `seeded-bugs`, a plain flag per tree; the bug's feature sets it in every new tree.
#[cfg(feature = "seeded-bugs")]
#[derive(Clone, Copy, Debug)]
pub(super) struct Planted<const COMPILED: bool>(bool);

#[cfg(feature = "seeded-bugs")]
impl<const COMPILED: bool> Planted<COMPILED> {
    pub(super) const fn initial() -> Self {
        Self(COMPILED)
    }

    pub(super) const fn is_on(self) -> bool {
        self.0
    }

    pub(super) fn set(&mut self, on: bool) {
        self.0 = on;
    }
}

/// `place_specifically` misses an overlap of one page with the left neighbour (the off-by-one
/// SerenityOS shipped), for the agreement-checker tests.
pub(super) type OverlapBug = Planted<{ cfg!(feature = "bug-overlap") }>;

/// Removing a hole from the gap index keeps an ancestor's room summary when the removed hole
/// held exactly that room (a `<` for a `<=`): the summary over-estimates, every caller
/// re-checks the hole it finds, so no placement changes; only `check_invariants` sees it.
pub(super) type StaleSummaryBug = Planted<{ cfg!(feature = "bug-stale-gap-summary") }>;

#[cfg(all(test, feature = "seeded-bugs"))]
mod tests {
    use alloc::boxed::Box;

    use crate::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
    use crate::region::{Access, Region};
    use crate::region_tree::{InvariantViolation, RegionTree, RegionTreeError};

    /// A tree with a 2-page region at its base.
    fn tree_with_left_neighbour() -> RegionTree<()> {
        let total = VirtualRange::new(VirtualAddress::new(0x10_0000), 16 * PAGE_SIZE).unwrap();
        let mut tree = RegionTree::new(total);
        let left = Box::new(Region::new("left", Access::READ, None));
        tree.place_specifically(left, VirtualAddress::new(0x10_0000), 2 * PAGE_SIZE)
            .unwrap();
        tree
    }

    /// Places a 2-page region over the last page of the left neighbour.
    fn overlap_one_page(tree: &mut RegionTree<()>) -> Result<VirtualRange, RegionTreeError> {
        let region = Box::new(Region::new("overlap", Access::READ, None));
        Ok(tree.place_specifically(region, VirtualAddress::new(0x10_1000), 2 * PAGE_SIZE)?)
    }

    #[test]
    fn runtime_switch_plants_and_removes_the_overlap_bug() {
        let mut tree = tree_with_left_neighbour();
        assert_eq!(tree.overlap_bug.is_on(), cfg!(feature = "bug-overlap"));

        tree.set_seeded_overlap_bug(true);
        assert!(
            overlap_one_page(&mut tree).is_ok(),
            "the planted bug misses it"
        );
        assert!(matches!(
            tree.check_invariants(),
            Err(InvariantViolation::Overlapping { .. })
        ));

        let mut tree = tree_with_left_neighbour();
        tree.set_seeded_overlap_bug(true);
        tree.set_seeded_overlap_bug(false);
        assert_eq!(overlap_one_page(&mut tree), Err(RegionTreeError::Overlap));
        tree.check_invariants().unwrap();
    }

    /// Places one page at each of `bases`, in order, in a tree over the user range.
    fn tree_with_pages(bases: &[u64], stale_summary_bug: bool) -> RegionTree<()> {
        let total = VirtualRange::new(VirtualAddress::new(0x1000), 1 << 40).unwrap();
        let mut tree = RegionTree::new(total);
        tree.set_seeded_stale_summary_bug(stale_summary_bug);
        for &base in bases {
            let page = Box::new(Region::new("page", Access::READ, None));
            tree.place_specifically(page, VirtualAddress::new(base), PAGE_SIZE)
                .unwrap();
        }
        tree
    }

    #[test]
    fn the_stale_summary_bug_shows_only_in_the_invariant_check() {
        // A one-page hole at the root, the big hole below 0x1000_0000 as its child; then a
        // page at 0x3000 shrinks the big hole by a page: removed and linked again, smaller.
        let bases = [0x2000, 0x1000_0000, 0x3000];
        let planted = tree_with_pages(&bases, true);
        assert!(
            matches!(
                planted.check_invariants(),
                Err(InvariantViolation::GapIndexSummary { .. })
            ),
            "{:?}",
            planted.check_invariants()
        );
        // What travels to the host: the kind's code, its name there, and the hole's base.
        let found = planted.check_invariants().unwrap_err();
        let name = InvariantViolation::kind_name(found.code());
        assert_eq!(name, Some("a gap-index subtree summary is stale"));
        assert_eq!(found.address(), 0x1000, "the root: the one-page hole");
        assert_eq!(InvariantViolation::kind_name(0), None);
        let correct = tree_with_pages(&bases, false);
        correct.check_invariants().unwrap();
        // No placement changes: the summary only over-estimates, and every hole is re-checked.
        let mut trees = [planted, correct];
        let placed = trees.each_mut().map(|tree| {
            let region = Box::new(Region::new("anywhere", Access::READ, None));
            tree.place_anywhere(region, 0x1000_0000 - 0x4000, PAGE_SIZE)
                .map(|r| r.base())
                .map_err(|e| e.kind)
        });
        assert_eq!(placed[0], placed[1]);
    }
}
