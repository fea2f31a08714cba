//! Per-subtree summaries of the gap index: hole count, and aligned marks and room per class.
#![forbid(unsafe_code)]

use core::cell::Cell;

use super::holes::{Class, Hole};

/// What the gap index keeps for every subtree, so that one descent can count the slots of a
/// placement, pick the k-th, or find the first hole that fits.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    count: Cell<u64>,
    /// Per class: the sum of [`Hole::marks`].
    marks: [Cell<u64>; Class::COUNT],
    /// Per class: the largest [`Hole::room`].
    room: [Cell<u64>; Class::COUNT],
}

impl Summary {
    pub(super) fn new() -> Self {
        Self {
            count: Cell::new(0),
            marks: [const { Cell::new(0) }; Class::COUNT],
            room: [const { Cell::new(0) }; Class::COUNT],
        }
    }

    /// Recomputes the summary of a subtree from its root's `hole` and its children's
    /// summaries. This runs for every node on the path of each gap-index update, so it is
    /// written as plain loops over the class arrays.
    pub(super) fn update(&self, hole: &Hole, left: Option<&Summary>, right: Option<&Summary>) {
        let mut count = 1;
        let mut marks: [u64; Class::COUNT] = core::array::from_fn(|i| hole.marks(Class::all_at(i)));
        let mut room: [u64; Class::COUNT] = core::array::from_fn(|i| hole.room(Class::all_at(i)));
        for child in [left, right].into_iter().flatten() {
            count += child.count.get();
            for i in 0..Class::COUNT {
                // Holes are disjoint, so the marks of a class sum to at most 2^52 plus the
                // number of holes: no overflow.
                marks[i] += child.marks[i].get();
                room[i] = room[i].max(child.room[i].get());
            }
        }
        self.set(count, &marks, &room);
    }

    /// Adds the holes of `other`, a disjoint subtree, to this summary.
    pub(super) fn absorb(&self, other: &Summary) {
        // All loads before all stores: the two may alias as far as the compiler knows (they
        // are `Cell`s), and this way the loops vectorize.
        let marks: [u64; Class::COUNT] =
            core::array::from_fn(|i| self.marks[i].get() + other.marks[i].get());
        let room: [u64; Class::COUNT] =
            core::array::from_fn(|i| self.room[i].get().max(other.room[i].get()));
        self.set(self.count.get() + other.count.get(), &marks, &room);
    }

    fn set(&self, count: u64, marks: &[u64; Class::COUNT], room: &[u64; Class::COUNT]) {
        self.count.set(count);
        for i in 0..Class::COUNT {
            self.marks[i].set(marks[i]);
            self.room[i].set(room[i]);
        }
    }

    /// Takes the holes of `removed` out of the summary of a subtree whose root holds `hole`
    /// and whose children (after the removal) have the summaries `left` and `right`. Only the
    /// room of classes where `removed` may have held the largest is recomputed.
    pub(super) fn release(
        &self,
        removed: &Summary,
        hole: &Hole,
        left: Option<&Summary>,
        right: Option<&Summary>,
    ) {
        self.count.set(self.count.get() - removed.count.get());
        for class in Class::all() {
            let i = class.index();
            self.marks[i].set(self.marks[i].get() - removed.marks[i].get());
            let gone = removed.room[i].get();
            if gone > 0 && self.room[i].get() <= gone {
                let children = [left, right].into_iter().flatten();
                let room = children.fold(hole.room(class), |max, c| max.max(c.room[i].get()));
                self.room[i].set(room);
            }
        }
    }

    /// Number of holes in the subtree.
    pub(super) fn count(&self) -> u64 {
        self.count.get()
    }

    /// The sum of the holes' marks in the class.
    pub(super) fn marks(&self, class: Class) -> u64 {
        self.marks[class.index()].get()
    }

    /// Slots of a `size`-byte placement in the class over the subtree's holes, each of which
    /// must hold at least `size` bytes (then each contributes `marks - units(size) >= 0`).
    pub(super) fn slots(&self, class: Class, size: u64) -> u64 {
        self.marks[class.index()].get() - self.count.get() * class.units(size)
    }

    /// The largest aligned room of the class in the subtree.
    pub(super) fn room(&self, class: Class) -> u64 {
        self.room[class.index()].get()
    }
}
