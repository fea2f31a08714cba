//! The gap index: an intrusive AVL tree of the holes below regions, keyed by `(size, base)`,
//! with a [`Summary`] per subtree.
//!
//! Every region carries a [`GapNode`] for the hole immediately below it; the node is linked
//! here iff that hole is non-empty. This module holds the only non-owning pointers to regions,
//! and so most of the crate's `unsafe`. Invariant: every node linked here belongs to a region
//! owned by the address index of the same `RegionTree`, and is unlinked before the region
//! leaves that index; the tree calls [`GapIndex::forget_all`] before the address index drops
//! its regions. Recursion is bounded by the AVL height, below 1.45 log2(n + 2).

use core::cell::Cell;
use core::cmp::Ordering;
use core::ptr::{self, NonNull};

use super::holes::{Class, Classes, Hole, Key};
use super::seeded_bug::StaleSummaryBug;
use super::summary::Summary;
use super::InvariantViolation;

type Link = Option<NonNull<GapNode>>;

/// The gap index's node inside every region: the hole below the region, and, while linked,
/// its place in the tree. `repr(C)` keeps what a descent and a rebalance read (links, height,
/// key, count) in the first 48 bytes, rather than the height after the summary's arrays.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct GapNode {
    left: Cell<Link>,
    right: Cell<Link>,
    /// Height of the subtree rooted here; 0 while not linked.
    height: Cell<u8>,
    /// The hole below the region: `size` bytes from `base`; `size` is 0 if there is none.
    base: Cell<u64>,
    size: Cell<u64>,
    summary: Summary,
}

// SAFETY: the pointers in a node are only followed by the gap index that linked it, which is
// owned by the same `RegionTree` as the region holding the node; an unlinked node's pointers
// are never followed. Sending a region therefore sends no access to another one, exactly as
// for the address index's `RBTreeLink` (which is `Send` too).
unsafe impl Send for GapNode {}

impl GapNode {
    pub(crate) fn new() -> Self {
        Self {
            left: Cell::new(None),
            right: Cell::new(None),
            height: Cell::new(0),
            base: Cell::new(0),
            size: Cell::new(0),
            summary: Summary::new(),
        }
    }

    /// Size of the hole below the region (0 if none).
    pub(crate) fn size(&self) -> u64 {
        self.size.get()
    }

    /// Whether the recorded hole is `size` bytes from `base` (any base when `size` is 0).
    pub(crate) fn records(&self, base: u64, size: u64) -> bool {
        self.size.get() == size && (size == 0 || self.base.get() == base)
    }

    /// Whether the node is in a gap index.
    pub(crate) fn is_linked(&self) -> bool {
        self.height.get() > 0
    }

    /// The recorded hole; `size` must be non-zero.
    pub(super) fn hole(&self) -> Hole {
        Hole::new(self.base.get(), self.base.get() + (self.size.get() - 1))
    }

    fn key(&self) -> Key {
        (self.size.get(), self.base.get())
    }

    fn left(&self) -> Option<&GapNode> {
        // SAFETY: the children of a linked node are linked nodes of the same index, live until
        // they are unlinked (module invariant); every caller reached `self` through the index.
        self.left.get().map(|ptr| unsafe { ptr.as_ref() })
    }

    fn right(&self) -> Option<&GapNode> {
        // SAFETY: as in `left`.
        self.right.get().map(|ptr| unsafe { ptr.as_ref() })
    }

    fn set_left(&self, child: Option<&GapNode>) {
        self.left.set(child.map(NonNull::from));
    }

    fn set_right(&self, child: Option<&GapNode>) {
        self.right.set(child.map(NonNull::from));
    }

    /// Recomputes height and summary (of `classes`) from the children.
    fn update(&self, classes: Classes) {
        self.update_height();
        self.summarize(classes);
    }

    /// Recomputes the summary of `classes` from the children.
    fn summarize(&self, classes: Classes) {
        let (left, right) = (self.left(), self.right());
        self.summary
            .update(&self.hole(), summary(left), summary(right), classes);
    }

    fn update_height(&self) {
        self.height
            .set(1 + height(self.left()).max(height(self.right())));
    }

    /// Marks the node as not linked.
    fn detach(&self) {
        self.set_left(None);
        self.set_right(None);
        self.height.set(0);
    }
}

fn height(node: Option<&GapNode>) -> u8 {
    node.map_or(0, |node| node.height.get())
}

fn summary(node: Option<&GapNode>) -> Option<&Summary> {
    node.map(|node| &node.summary)
}

/// The holes below regions, ordered by `(size, base)`, smallest first.
pub(super) struct GapIndex {
    root: Link,
    /// The classes the summaries are kept for: the page class, and every class a query has
    /// asked for since.
    classes: Cell<Classes>,
    stale_summary_bug: StaleSummaryBug,
}

impl GapIndex {
    pub(super) const fn new() -> Self {
        Self {
            root: None,
            classes: Cell::new(Classes::PAGE),
            stale_summary_bug: StaleSummaryBug::initial(),
        }
    }

    /// Plants or removes the seeded stale-summary bug (see [`StaleSummaryBug`]).
    #[cfg(feature = "seeded-bugs")]
    pub(super) fn set_stale_summary_bug(&mut self, on: bool) {
        self.stale_summary_bug.set(on);
    }

    /// Keeps summaries for `class` from now on: the first query of a class summarizes it in
    /// every node once (O(n), at most once per class for the life of the tree).
    fn keep(&self, class: Class) {
        let classes = self.classes.get();
        if !classes.contains(class) {
            let classes = classes.with(class);
            self.classes.set(classes);
            resummarize(self.root(), classes);
        }
    }

    fn root(&self) -> Option<&GapNode> {
        // SAFETY: the root is a linked node (module invariant).
        self.root.map(|ptr| unsafe { ptr.as_ref() })
    }

    /// Records `size` bytes from `base` as the hole of `node`, linked here iff `size > 0`.
    ///
    /// # Safety
    ///
    /// `node` must stay alive and in place until it is [`unlink`](Self::unlink)ed or
    /// [`forget_all`](Self::forget_all) is called, and must not be linked in another index.
    pub(super) unsafe fn set_hole(&mut self, node: &GapNode, base: u64, size: u64) {
        self.unlink(node);
        node.base.set(base);
        node.size.set(size);
        if size > 0 {
            let classes = self.classes.get();
            node.update(classes);
            self.root = Some(NonNull::from(insert(self.root(), node, classes)));
        }
    }

    /// Unlinks `node` if it is linked. Its hole must not have changed since it was linked
    /// (it is the key).
    pub(super) fn unlink(&mut self, node: &GapNode) {
        if node.is_linked() {
            let classes = self.classes.get();
            let removed = Summary::new();
            removed.update(&node.hole(), None, None, classes);
            let removal = Removal {
                key: node.key(),
                removed: &removed,
                classes,
                stale_room: self.stale_summary_bug.is_on(),
            };
            let root = remove(self.root(), &removal);
            self.root = root.map(NonNull::from);
            debug_assert!(!node.is_linked());
        }
    }

    /// Empties the index without touching the nodes (which may be about to be freed).
    pub(super) fn forget_all(&mut self) {
        self.root = None;
    }

    /// The smallest hole of at least `min_size` bytes (the lowest among equals).
    pub(super) fn smallest_at_least(&self, min_size: u64) -> Option<Hole> {
        let mut found = None;
        let mut at = self.root();
        while let Some(node) = at {
            if node.size() >= min_size {
                found = Some(node.hole());
                at = node.left();
            } else {
                at = node.right();
            }
        }
        found
    }

    /// The smallest hole with a key of at least `from` that has at least `size` bytes of
    /// [room](Hole::room) in `class`. One descent: O(log n).
    pub(super) fn first_with_room(&self, from: Key, class: Class, size: u64) -> Option<Hole> {
        self.keep(class);
        first_with_room(self.root(), from, class, size)
    }

    /// The largest [room](Hole::room) in `class` of any hole (0 if there is none).
    pub(super) fn max_room(&self, class: Class) -> u64 {
        self.keep(class);
        self.root().map_or(0, |root| root.summary.room(class))
    }

    /// Slots of a `size`-byte placement in `class` over all holes of at least `size` bytes.
    ///
    /// The smaller holes form a prefix in key order, so this takes their marks and count off
    /// the root's: when every hole is large enough, the descent reads nothing off its path.
    pub(super) fn slots(&self, class: Class, size: u64) -> u64 {
        self.keep(class);
        let Some(root) = self.root() else { return 0 };
        let (mut marks, mut count) = (root.summary.marks(class), root.summary.count());
        let mut at = Some(root);
        while let Some(node) = at {
            if node.size() >= size {
                at = node.left();
                continue;
            }
            // The node and its left subtree hold only holes smaller than `size`.
            let left = summary(node.left());
            marks -= node.hole().marks(class) + left.map_or(0, |left| left.marks(class));
            count -= 1 + left.map_or(0, Summary::count);
            at = node.right();
        }
        marks - count * class.units(size)
    }

    /// Slot number `k` (`k < self.slots(class, size)`) of a `size`-byte placement: its hole
    /// and its slot within the hole. The order is fixed for a given index (largest hole
    /// first), which is all a uniform draw needs.
    pub(super) fn slot(&self, class: Class, size: u64, mut k: u64) -> Option<(Hole, u64)> {
        self.keep(class);
        let mut at = self.root();
        while let Some(node) = at {
            if node.size() < size {
                at = node.right();
                continue;
            }
            let right = slots_of(node.right(), class, size);
            if k < right {
                at = node.right();
                continue;
            }
            k -= right;
            let own = own_slots(node, class, size);
            if k < own {
                return Some((node.hole(), k));
            }
            k -= own;
            at = node.left();
        }
        None
    }

    /// The sum of every hole's marks in `class`: at least [`slots`](Self::slots) for any size.
    /// O(1).
    pub(super) fn marks(&self, class: Class) -> u64 {
        self.keep(class);
        self.root().map_or(0, |root| root.summary.marks(class))
    }

    /// Mark number `k` (`k < self.marks(class)`) over all holes: its hole and its place
    /// among the hole's marks. A placement of no bytes has every mark as a slot, so this is
    /// [`slot`](Self::slot) for size 0.
    pub(super) fn mark(&self, class: Class, k: u64) -> Option<(Hole, u64)> {
        self.slot(class, 0, k)
    }

    /// Whether `node` is linked here (found by its key).
    pub(super) fn contains(&self, node: &GapNode) -> bool {
        let key = node.key();
        let mut at = self.root();
        while let Some(here) = at {
            at = match key.cmp(&here.key()) {
                Ordering::Less => here.left(),
                Ordering::Greater => here.right(),
                Ordering::Equal => return ptr::eq(here, node),
            };
        }
        false
    }

    /// Checks order, balance, heights and summaries, and that `owned` holds for every node.
    /// Returns the number of holes linked.
    pub(super) fn check(
        &self,
        owned: &impl Fn(&GapNode) -> bool,
    ) -> Result<u64, InvariantViolation> {
        check(self.root(), (None, None), owned, self.classes.get())?;
        Ok(self.root().map_or(0, |root| root.summary.count()))
    }
}

fn own_slots(node: &GapNode, class: Class, size: u64) -> u64 {
    node.hole().marks(class) - class.units(size)
}

fn slots_of(node: Option<&GapNode>, class: Class, size: u64) -> u64 {
    node.map_or(0, |node| node.summary.slots(class, size))
}

fn first_with_room(node: Option<&GapNode>, from: Key, class: Class, size: u64) -> Option<Hole> {
    // A subtree without enough room anywhere is skipped whole; in a subtree whose keys are
    // all at least `from`, this goes straight down to the answer.
    let node = node.filter(|node| node.summary.room(class) >= size)?;
    if node.key() < from {
        return first_with_room(node.right(), from, class, size);
    }
    first_with_room(node.left(), from, class, size)
        .or_else(|| Some(node.hole()).filter(|hole| hole.room(class) >= size))
        .or_else(|| first_with_room(node.right(), from, class, size))
}

/// Inserts `new` (a detached node with its summary set) into the subtree at `at`; returns
/// the subtree's new root.
fn insert<'n>(at: Option<&'n GapNode>, new: &'n GapNode, classes: Classes) -> &'n GapNode {
    let Some(node) = at else { return new };
    // The summary grows by exactly the new hole: cheaper than recomputing it on the way up.
    node.summary.absorb(&new.summary, classes);
    if new.key() < node.key() {
        node.set_left(Some(insert(node.left(), new, classes)));
    } else {
        node.set_right(Some(insert(node.right(), new, classes)));
    }
    rebalance(node, Summarized::Already, classes)
}

/// Recomputes every summary of the subtree at `node` for `classes`, children first.
fn resummarize(node: Option<&GapNode>, classes: Classes) {
    let Some(node) = node else { return };
    resummarize(node.left(), classes);
    resummarize(node.right(), classes);
    node.summarize(classes);
}

/// Whether [`rebalance`] finds the node's summary up to date.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Summarized {
    Already,
    NotYet,
}

/// One removal from the gap index: the key of the node, its own hole's summary, the classes
/// kept, and whether the seeded stale-summary bug is planted.
struct Removal<'s> {
    key: Key,
    removed: &'s Summary,
    classes: Classes,
    stale_room: bool,
}

/// Removes the node of `removal` from the subtree at `at`; returns the subtree's new root.
fn remove<'n>(at: Option<&'n GapNode>, removal: &Removal<'_>) -> Option<&'n GapNode> {
    let node = at?;
    let classes = removal.classes;
    match removal.key.cmp(&node.key()) {
        Ordering::Less => node.set_left(remove(node.left(), removal)),
        Ordering::Greater => node.set_right(remove(node.right(), removal)),
        Ordering::Equal => {
            let (left, right) = (node.left(), node.right());
            node.detach();
            let Some(right) = right else { return left };
            let (successor, rest) = take_min(right, classes);
            successor.set_left(left);
            successor.set_right(rest);
            return Some(rebalance(successor, Summarized::NotYet, classes));
        }
    }
    // The subtree lost exactly the removed hole: cheaper than recomputing the summary.
    let children = [summary(node.left()), summary(node.right())];
    let (removed, stale_room) = (removal.removed, removal.stale_room);
    node.summary
        .release(removed, stale_room, &node.hole(), children, classes);
    Some(rebalance(node, Summarized::Already, classes))
}

/// Detaches the smallest node of the subtree at `node`; returns it and the subtree's new root.
fn take_min(node: &GapNode, classes: Classes) -> (&GapNode, Option<&GapNode>) {
    match node.left() {
        None => (node, node.right()),
        Some(left) => {
            let (min, rest) = take_min(left, classes);
            node.set_left(rest);
            (min, Some(rebalance(node, Summarized::NotYet, classes)))
        }
    }
}

/// Restores the AVL balance at `node`, whose subtrees are balanced and differ in height by at
/// most 2, and updates heights and summaries; returns the subtree's new root.
fn rebalance(node: &GapNode, summarized: Summarized, classes: Classes) -> &GapNode {
    let (left, right) = (node.left(), node.right());
    match (left, right) {
        (Some(left), _) if height(Some(left)) > height(right) + 1 => {
            let left = match left.right() {
                Some(inner) if height(Some(inner)) > height(left.left()) => {
                    let lifted = rotate_left(left, inner, classes);
                    node.set_left(Some(lifted));
                    lifted
                }
                _ => left,
            };
            rotate_right(node, left, classes)
        }
        (_, Some(right)) if height(Some(right)) > height(left) + 1 => {
            let right = match right.left() {
                Some(inner) if height(Some(inner)) > height(right.right()) => {
                    let lifted = rotate_right(right, inner, classes);
                    node.set_right(Some(lifted));
                    lifted
                }
                _ => right,
            };
            rotate_left(node, right, classes)
        }
        _ if summarized == Summarized::Already => {
            node.update_height();
            node
        }
        _ => {
            node.update(classes);
            node
        }
    }
}

/// Lifts `left`, the left child of `node`, above it.
fn rotate_right<'n>(node: &'n GapNode, left: &'n GapNode, classes: Classes) -> &'n GapNode {
    node.set_left(left.right());
    node.update(classes);
    left.set_right(Some(node));
    left.update(classes);
    left
}

/// Lifts `right`, the right child of `node`, above it.
fn rotate_left<'n>(node: &'n GapNode, right: &'n GapNode, classes: Classes) -> &'n GapNode {
    node.set_right(right.left());
    node.update(classes);
    right.set_left(Some(node));
    right.update(classes);
    right
}

/// Checks the subtree at `node`, whose keys must lie strictly between `bounds`, with the
/// summaries of `classes`; returns its height.
fn check(
    node: Option<&GapNode>,
    bounds: (Option<Key>, Option<Key>),
    owned: &impl Fn(&GapNode) -> bool,
    classes: Classes,
) -> Result<u8, InvariantViolation> {
    let Some(node) = node else { return Ok(0) };
    let key = node.key();
    let (low, high) = bounds;
    if key.0 == 0 || low.is_some_and(|low| low >= key) || high.is_some_and(|high| high <= key) {
        return Err(InvariantViolation::GapIndexOrder { key });
    }
    if !owned(node) {
        return Err(InvariantViolation::GapIndexStale { key });
    }
    let left = check(node.left(), (low, Some(key)), owned, classes)?;
    let right = check(node.right(), (Some(key), high), owned, classes)?;
    if left.abs_diff(right) > 1 || node.height.get() != 1 + left.max(right) {
        return Err(InvariantViolation::GapIndexUnbalanced { key });
    }
    let expected = Summary::new();
    expected.update(
        &node.hole(),
        summary(node.left()),
        summary(node.right()),
        classes,
    );
    if !expected.agrees(&node.summary, classes) {
        return Err(InvariantViolation::GapIndexSummary { key });
    }
    Ok(node.height.get())
}
