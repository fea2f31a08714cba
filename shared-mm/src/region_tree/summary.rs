//! Per-subtree summaries of the gap index: hole count, and aligned marks and room per class.
#![forbid(unsafe_code)]

use core::cell::Cell;

use super::holes::{Class, Classes, Hole};

/// What the gap index keeps for every subtree, so that one descent can count the slots of a
/// placement, pick the k-th, or find the first hole that fits. Only the classes in use are
/// kept up to date, so two summaries compare with [`Summary::agrees`], not field by field.
#[derive(Debug)]
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
    /// summaries, for the `classes` kept. This runs for every node on the path of each
    /// gap-index update.
    pub(super) fn update(
        &self,
        hole: &Hole,
        left: Option<&Summary>,
        right: Option<&Summary>,
        classes: Classes,
    ) {
        let children = || [left, right].into_iter().flatten();
        self.count
            .set(1 + children().map(|c| c.count.get()).sum::<u64>());
        for class in classes.iter() {
            let i = class.index();
            // Holes are disjoint, so the marks of a class sum to at most 2^52 plus the number
            // of holes: no overflow.
            let marks = children().fold(hole.marks(class), |sum, c| sum + c.marks[i].get());
            let room = children().fold(hole.room(class), |max, c| max.max(c.room[i].get()));
            self.marks[i].set(marks);
            self.room[i].set(room);
        }
    }

    /// Adds the holes of `other`, a disjoint subtree, to this summary.
    pub(super) fn absorb(&self, other: &Summary, classes: Classes) {
        self.count.set(self.count.get() + other.count.get());
        for class in classes.iter() {
            let i = class.index();
            self.marks[i].set(self.marks[i].get() + other.marks[i].get());
            self.room[i].set(self.room[i].get().max(other.room[i].get()));
        }
    }

    /// Takes the holes of `removed` out of the summary of a subtree whose root holds `hole`
    /// and whose children (after the removal) have the summaries `left` and `right`. Only the
    /// room of classes where `removed` may have held the largest is recomputed; with the seeded
    /// stale-summary bug (`stale_room`), a room the removed hole held exactly is kept.
    pub(super) fn release(
        &self,
        removed: &Summary,
        stale_room: bool,
        hole: &Hole,
        children: [Option<&Summary>; 2],
        classes: Classes,
    ) {
        self.count.set(self.count.get() - removed.count.get());
        for class in classes.iter() {
            let i = class.index();
            self.marks[i].set(self.marks[i].get() - removed.marks[i].get());
            let gone = removed.room[i].get();
            let held = if stale_room {
                self.room[i].get() < gone
            } else {
                self.room[i].get() <= gone
            };
            if gone > 0 && held {
                let children = children.into_iter().flatten();
                let room = children.fold(hole.room(class), |max, c| max.max(c.room[i].get()));
                self.room[i].set(room);
            }
        }
    }

    /// Whether this and `other` agree on the count and on the `classes` kept.
    pub(super) fn agrees(&self, other: &Summary, classes: Classes) -> bool {
        self.count == other.count
            && classes.iter().all(|class| {
                let i = class.index();
                self.marks[i] == other.marks[i] && self.room[i] == other.room[i]
            })
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
