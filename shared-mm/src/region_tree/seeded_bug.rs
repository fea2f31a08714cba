//! The seeded `place_specifically` bug: compiled in by `bug-overlap`, switchable with `seeded-bugs`.
#![forbid(unsafe_code)]

/// Whether `place_specifically` misses an overlap of one page with the left neighbour (the
/// off-by-one SerenityOS shipped), for the agreement-checker tests.
///
/// Without the `seeded-bugs` feature this is a zero-sized constant: `bug-overlap` decides at
/// compile time and nothing is stored.
#[cfg(not(feature = "seeded-bugs"))]
#[derive(Clone, Copy, Debug)]
pub(super) struct OverlapBug;

#[cfg(not(feature = "seeded-bugs"))]
impl OverlapBug {
    pub(super) const fn initial() -> Self {
        Self
    }

    pub(super) const fn is_on(self) -> bool {
        cfg!(feature = "bug-overlap")
    }
}

/// With `seeded-bugs`, a plain flag per tree; `bug-overlap` sets it in every new tree.
#[cfg(feature = "seeded-bugs")]
#[derive(Clone, Copy, Debug)]
pub(super) struct OverlapBug(bool);

#[cfg(feature = "seeded-bugs")]
impl OverlapBug {
    pub(super) const fn initial() -> Self {
        Self(cfg!(feature = "bug-overlap"))
    }

    pub(super) const fn is_on(self) -> bool {
        self.0
    }

    pub(super) fn set(&mut self, on: bool) {
        self.0 = on;
    }
}

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
}
