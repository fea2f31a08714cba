//! The gap index: regions with a free hole below them, keyed by `(hole size, hole base)`.
//!
//! This is the only place that holds non-owning pointers to regions, and so the reason for
//! every `unsafe` in the crate (here, and where `RegionTree` links a region). Invariant: every
//! region linked here is owned by the address index of the same `RegionTree`, and is unlinked
//! before it leaves that index; the tree calls [`GapIndex::forget_all`] before the address
//! index drops its regions.

use core::ptr::{self, NonNull};
use intrusive_collections::Bound::Included;

use intrusive_collections::{intrusive_adapter, rbtree, KeyAdapter, RBTree, RBTreeLink, UnsafeRef};

use crate::region::Region;

intrusive_adapter!(pub(super) ByGap<B> = UnsafeRef<Region<B>>: Region<B> { gap_link => RBTreeLink });

impl<'a, B> KeyAdapter<'a> for ByGap<B> {
    type Key = (u64, u64);
    fn get_key(&self, region: &'a Region<B>) -> (u64, u64) {
        gap_key(region)
    }
}

/// `(size, base)` of the hole below `region`. Holes are disjoint and non-empty, so keys
/// are unique.
pub(super) fn gap_key<B>(region: &Region<B>) -> (u64, u64) {
    let gap = region.gap_before.get();
    (gap, region.span().0.wrapping_sub(gap))
}

/// Regions with `gap_before > 0`, ordered by the hole below them, smallest first.
pub(super) struct GapIndex<B> {
    tree: RBTree<ByGap<B>>,
}

impl<B> GapIndex<B> {
    pub(super) const fn new() -> Self {
        Self {
            tree: RBTree::new(ByGap::NEW),
        }
    }

    /// Links `region` if it has a hole below it (`gap_before > 0`).
    ///
    /// # Safety
    ///
    /// `region` must point to a live region, not linked here, that stays alive and in
    /// place until it is [`unlink`](Self::unlink)ed or [`forget_all`](Self::forget_all)
    /// is called.
    pub(super) unsafe fn link(&mut self, region: NonNull<Region<B>>) {
        // SAFETY: the caller guarantees that `region` points to a live region.
        let gap = unsafe { region.as_ref() }.gap_before.get();
        if gap > 0 {
            // SAFETY: the caller guarantees the region outlives its membership here.
            self.tree
                .insert(unsafe { UnsafeRef::from_raw(region.as_ptr()) });
        }
    }

    /// Unlinks `region` if it is linked. Its `gap_before` must not have changed since it
    /// was linked (it is part of the key).
    pub(super) fn unlink(&mut self, region: &Region<B>) {
        if region.gap_link.is_linked() {
            let removed = self.tree.find_mut(&gap_key(region)).remove();
            debug_assert!(removed.is_some_and(|r| ptr::eq(&*r, region)));
        }
    }

    /// A cursor at the region with the smallest hole of at least `min_size` bytes (one
    /// descent); moving it forward visits larger holes.
    pub(super) fn at_least(&self, min_size: u64) -> rbtree::Cursor<'_, ByGap<B>> {
        self.tree.lower_bound(Included(&(min_size, 0)))
    }

    /// All linked regions, smallest hole first.
    pub(super) fn iter(&self) -> rbtree::Iter<'_, ByGap<B>> {
        self.tree.iter()
    }

    /// Empties the index without touching the regions (which may be about to be freed).
    pub(super) fn forget_all(&mut self) {
        self.tree.fast_clear();
    }
}
