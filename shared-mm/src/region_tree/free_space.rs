//! All free holes of a tree, the gap index plus the tail hole, queried as one set.
#![forbid(unsafe_code)]

use super::gap_index::GapIndex;
use super::holes::{Class, Hole, Key};

/// The holes of a tree: those below regions (in the gap index) and the tail hole above the
/// last region, which the tree tracks itself.
pub(super) struct FreeSpace<'a> {
    gaps: &'a GapIndex,
    tail: Option<Hole>,
}

impl<'a> FreeSpace<'a> {
    pub(super) fn new(gaps: &'a GapIndex, tail: Option<Hole>) -> Self {
        Self { gaps, tail }
    }

    /// The smallest hole of at least `min_size` bytes (the lowest among equals).
    pub(super) fn smallest_at_least(&self, min_size: u64) -> Option<Hole> {
        let tail = self.tail.filter(|tail| tail.size() >= min_size);
        smaller(self.gaps.smallest_at_least(min_size), tail)
    }

    /// The smallest hole with a key of at least `from` that has `size` bytes of room in
    /// `class`.
    pub(super) fn first_with_room(&self, from: Key, class: Class, size: u64) -> Option<Hole> {
        let tail = self
            .tail
            .filter(|tail| tail.key() >= from && tail.room(class) >= size);
        smaller(self.gaps.first_with_room(from, class, size), tail)
    }

    /// Whether some hole has `size` bytes of room in `class`. O(1).
    pub(super) fn has_room(&self, class: Class, size: u64) -> bool {
        self.gaps.max_room(class) >= size || self.tail.is_some_and(|t| t.room(class) >= size)
    }

    /// Slots of a `size`-byte placement in `class`, over all holes (see [`Hole::marks`]).
    pub(super) fn slots(&self, class: Class, size: u64) -> u64 {
        self.gaps.slots(class, size) + self.tail_slots(class, size)
    }

    /// Slot number `k` of a `size`-byte placement in `class`: its hole and its slot there.
    pub(super) fn slot(&self, class: Class, size: u64, k: u64) -> Option<(Hole, u64)> {
        let tail_slots = self.tail_slots(class, size);
        match self.tail {
            Some(tail) if k < tail_slots => Some((tail, k)),
            _ => self.gaps.slot(class, size, k - tail_slots),
        }
    }

    /// A bound on the slots of a `size`-byte placement in `class` that needs no descent:
    /// the tail's slots, and the marks of every hole in the gap index (at least its slots).
    pub(super) fn slot_bound(&self, class: Class, size: u64) -> (u64, u64) {
        (self.tail_slots(class, size), self.gaps.marks(class))
    }

    /// Number `k` of the [`slot_bound`](Self::slot_bound), tail first: the slot it is (hole
    /// and slot there), `None` if it is a mark of the gap index that is no slot.
    pub(super) fn bounded_slot(&self, class: Class, size: u64, k: u64) -> Option<(Hole, u64)> {
        let tail_slots = self.tail_slots(class, size);
        if k < tail_slots {
            return Some((self.tail?, k));
        }
        let (hole, mark) = self.gaps.mark(class, k - tail_slots)?;
        // A hole's first `marks - units(size)` marks are its slots.
        let slot = hole.size() >= size && mark < hole.marks(class) - class.units(size);
        slot.then_some((hole, mark))
    }

    fn tail_slots(&self, class: Class, size: u64) -> u64 {
        self.tail
            .filter(|tail| tail.size() >= size)
            .map_or(0, |tail| tail.marks(class) - class.units(size))
    }

    /// The holes that hold an `alignment`-aligned placement of `size` bytes, in `(size, base)`
    /// order: O(log n) each when `alignment` has its own class (up to 1 GiB).
    pub(super) fn fitting(&self, size: u64, alignment: u64) -> Fitting<'_, 'a> {
        Fitting {
            space: self,
            size,
            alignment,
            from: Some((size, 0)),
        }
    }
}

fn smaller(a: Option<Hole>, b: Option<Hole>) -> Option<Hole> {
    a.into_iter().chain(b).min_by_key(Hole::key)
}

/// Iterator of [`FreeSpace::fitting`]: each hole, its lowest aligned start and its number of
/// aligned starts.
pub(super) struct Fitting<'s, 'a> {
    space: &'s FreeSpace<'a>,
    size: u64,
    alignment: u64,
    /// The smallest key not yet visited.
    from: Option<Key>,
}

impl Iterator for Fitting<'_, '_> {
    type Item = (Hole, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let class = Class::of(self.alignment);
        // Above 1 GiB the class is 1 GiB, so a hole with room may still hold no start.
        loop {
            let hole = self.space.first_with_room(self.from?, class, self.size)?;
            let (size, base) = hole.key();
            self.from = base.checked_add(1).map(|next| (size, next));
            if let Some((first, count)) = hole.placements(self.size, self.alignment) {
                return Some((hole, first, count));
            }
        }
    }
}
