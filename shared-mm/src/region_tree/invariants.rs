//! RegionTree self-check: sorted, disjoint, inside the total range, counted, gap index exact.
#![forbid(unsafe_code)]

use core::ptr;

use super::gap_index::GapNode;
use super::{InvariantViolation, RegionTree};
use crate::address::VirtualRange;

impl<B> RegionTree<B> {
    /// Checks every structural invariant, in O(n log n), without allocating:
    ///
    /// - every region is placed, inside the total range, and after its predecessor without
    ///   overlap (so the regions are sorted and disjoint);
    /// - the recorded length equals the number of regions, and the recorded start of the
    ///   tail hole is the first address above the last region;
    /// - each region's recorded hole below it equals the recomputed one, and the region is
    ///   in the gap index exactly when that hole is non-empty;
    /// - the gap index is ordered by `(size, base)`, AVL-balanced with exact heights and
    ///   subtree summaries, holds only regions of this tree, and has one entry per non-empty
    ///   hole.
    ///
    /// Meant for tests and for the guest kernel's self-check.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let total = self.total;
        let mut previous: Option<VirtualRange> = None;
        let mut counted = 0;
        let mut with_hole = 0;
        for region in self.regions.iter() {
            let range = region
                .range()
                .ok_or(InvariantViolation::Unplaced { index: counted })?;
            if !total.contains_range(&range) {
                return Err(InvariantViolation::OutsideTotalRange { range });
            }
            let hole_base = match previous {
                Some(previous) if previous.last() >= range.base() => {
                    return Err(InvariantViolation::Overlapping {
                        previous,
                        next: range,
                    });
                }
                Some(previous) => previous.last().get() + 1,
                None => total.base().get(),
            };
            let actual = range.base().get() - hole_base;
            if !region.gap.records(hole_base, actual) {
                return Err(InvariantViolation::GapMismatch {
                    range,
                    recorded: region.gap.size(),
                    actual,
                });
            }
            let indexed = self.gaps.contains(&region.gap);
            if indexed != (actual > 0) || indexed != region.gap.is_linked() {
                return Err(InvariantViolation::GapIndexMembership { range, indexed });
            }
            with_hole += usize::from(actual > 0);
            counted += 1;
            previous = Some(range);
        }
        let tail_start = match previous {
            Some(last) => last.last().get().checked_add(1),
            None => Some(total.base().get()),
        };
        if tail_start != self.tail_start {
            return Err(InvariantViolation::TailMismatch {
                recorded: self.tail_start,
                actual: tail_start,
            });
        }
        if counted != self.len {
            return Err(InvariantViolation::CountMismatch {
                counted,
                recorded: self.len,
            });
        }

        let indexed = self.gaps.check(&|node| self.owns(node))?;
        if indexed != with_hole as u64 {
            return Err(InvariantViolation::GapIndexCount {
                indexed: indexed as usize,
                expected: with_hole,
            });
        }
        Ok(())
    }

    /// Whether `node` is the gap node of a region of this tree (the one its hole ends at).
    fn owns(&self, node: &GapNode) -> bool {
        let owner = self.regions.find(&(node.hole().last() + 1)).get();
        owner.is_some_and(|owner| ptr::eq(&owner.gap, node))
    }
}
