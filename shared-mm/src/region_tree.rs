//! RegionTree: the placed Regions of one address space, with an O(log n) index of free holes.
//!
//! Two intrusive trees share the same heap-allocated [`Region`]s:
//!
//! - the *address index*, an `intrusive-collections` red-black tree, owns every region
//!   (`Box<Region<B>>`), keyed by base address;
//! - the *gap index* (module `gap_index`), an AVL tree of our own, links for each region with
//!   a free hole immediately below it a node inside the region, keyed by `(hole size, hole
//!   base)`. Each region owns the hole before it; the hole after the last region (the *tail*)
//!   is tracked by the tree itself. Every subtree carries a summary (module `summary`) for 19
//!   alignment classes, 4 KiB to 1 GiB: the number of holes, how many aligned addresses they
//!   span ("marks", from which the slots of a placement are counted) and the largest aligned
//!   room.
//!
//! No operation allocates: the caller allocates the `Box<Region<B>>`, and removal hands
//! it back.

mod best_fit;
mod error;
mod free_space;
mod gap_index;
mod holes;
mod invariants;
mod random;
mod randomized;
mod seeded_bug;
mod summary;

pub use error::{InvariantViolation, PlaceError, RegionTreeError};
pub(crate) use gap_index::GapNode;
pub use random::{RandomSource, SplitMix64};

use alloc::boxed::Box;
use core::fmt;
use intrusive_collections::Bound::Included;

use intrusive_collections::{intrusive_adapter, KeyAdapter, RBTree, RBTreeLink};

use crate::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use crate::region::Region;
use free_space::FreeSpace;
use gap_index::GapIndex;
use holes::Hole;
use seeded_bug::OverlapBug;

intrusive_adapter!(ByAddress<B> = Box<Region<B>>: Region<B> { address_link => RBTreeLink });

impl<'a, B> KeyAdapter<'a> for ByAddress<B> {
    type Key = u64;
    fn get_key(&self, region: &'a Region<B>) -> u64 {
        region.span().0
    }
}

/// The placed [`Region`]s of one address space, sorted and disjoint inside a fixed
/// total range.
///
/// # Placement policy of [`place_anywhere`](Self::place_anywhere)
///
/// Let `roomy = size + alignment - PAGE_SIZE`: every hole of at least `roomy` bytes fits
/// an aligned placement whatever its base.
///
/// 1. If some hole has at least `roomy` bytes, the *smallest* such hole is used (best fit;
///    among holes of equal size, the lowest).
/// 2. Otherwise, holes of `size..roomy` bytes are tried from the smallest up (lowest first
///    among equals), and the first one that fits an aligned placement is used.
///
/// The region goes at the lowest aligned address of the chosen hole. With page alignment
/// the two steps are one: the smallest hole of at least `size` bytes. The search never
/// misses: if any aligned hole of `size` bytes exists, a placement is returned.
///
/// # Complexity
///
/// With `n` regions (both indexes are balanced trees, so every descent is O(log n)):
///
/// - O(1): [`len`](Self::len), [`is_empty`](Self::is_empty),
///   [`total_range`](Self::total_range).
/// - O(log n): [`place_specifically`](Self::place_specifically),
///   [`remove`](Self::remove), [`find_region_containing`](Self::find_region_containing),
///   and reaching the first region of
///   [`find_regions_intersecting`](Self::find_regions_intersecting) (then amortized O(1)
///   per region yielded). A placement or removal that changes a hole also updates the
///   summaries on one gap-index path, one per alignment class in use: O(c log n) word
///   operations for `c` classes, `c <= 19`. A class comes into use with the first placement
///   that asks for it, which summarizes it over every hole once: O(n), at most 19 times in
///   a tree's life (the page class is in use from the start).
/// - [`place_anywhere`](Self::place_anywhere): O(log n), success or failure, for every
///   alignment up to 1 GiB: step 2 follows the largest aligned room per subtree, so a hole
///   that cannot hold an aligned start is never visited. Above 1 GiB the room is known only
///   at 1 GiB: O(log n (1 + k)) for `k` holes that fit at 1 GiB but not at `alignment`
///   (each holds a distinct odd multiple of 1 GiB, so `k < total size / 1 GiB`).
/// - [`place_randomized`](Self::place_randomized): O(log n) with page alignment, or a size
///   that is a multiple of the alignment. Otherwise O(log n) per round, and the expected
///   number of rounds is at most `min(1 + x / v, f + 1) <= 1 + sqrt(x)`: `v` valid
///   positions in `f` holes, and `x` holes of at least `size` bytes that end less than
///   `size % alignment` bytes past an aligned address (each adds one slot that is never
///   valid). Failure is O(1) up to 1 GiB, as for `place_anywhere` above. When the tail
///   holds at least as many slots as the other holes have marks, one draw over that bound
///   comes first: O(1) when it lands in the tail (at least half the time), one descent
///   otherwise.
/// - [`check_invariants`](Self::check_invariants): O(n log n).
///
/// No operation allocates.
///
/// # Example
///
/// ```
/// extern crate alloc;
/// use alloc::boxed::Box;
/// use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
/// use shared_mm::region::{Access, Region};
/// use shared_mm::region_tree::{RegionTree, RegionTreeError, SplitMix64};
///
/// let total = VirtualRange::new(VirtualAddress::new(0x1_0000_0000), 0x4000_0000).unwrap();
/// let mut tree: RegionTree<u32> = RegionTree::new(total);
///
/// // An unbacked reservation at a fixed address.
/// let image = Box::new(Region::new("kernel image", Access::READ | Access::EXECUTE, None));
/// tree.place_specifically(image, VirtualAddress::new(0x1_0000_0000), 16 * PAGE_SIZE)
///     .unwrap();
///
/// // A backed region anywhere, 2 MiB-aligned.
/// let heap = Box::new(Region::new("heap", Access::READ | Access::WRITE, Some(7)));
/// let placed = tree.place_anywhere(heap, 4 * PAGE_SIZE, 2 << 20).unwrap();
/// assert_eq!(placed.base(), VirtualAddress::new(0x1_0020_0000));
///
/// // ASLR: uniform over every valid aligned position.
/// let stack = Box::new(Region::new("stack", Access::READ | Access::WRITE | Access::USER, Some(8)));
/// let mut rng = SplitMix64::new(42);
/// let stack_range = tree.place_randomized(stack, 8 * PAGE_SIZE, PAGE_SIZE, &mut rng).unwrap();
///
/// // Errors give the region back.
/// let clash = Box::new(Region::new("clash", Access::READ, None));
/// let err = tree.place_specifically(clash, placed.base(), PAGE_SIZE).unwrap_err();
/// assert_eq!(err.kind, RegionTreeError::Overlap);
/// assert_eq!(err.region.name(), "clash");
///
/// let found = tree.find_region_containing(VirtualAddress::new(0x1_0020_1000)).unwrap();
/// assert_eq!(found.name(), "heap");
/// assert_eq!(tree.find_regions_intersecting(total).count(), 3);
///
/// let stack = tree.remove(stack_range.base()).unwrap();
/// assert_eq!(stack.backing(), Some(&8));
/// assert_eq!(tree.len(), 2);
/// tree.check_invariants().unwrap();
/// ```
pub struct RegionTree<B> {
    total: VirtualRange,
    regions: RBTree<ByAddress<B>>,
    gaps: GapIndex,
    len: usize,
    /// First address above the last region (the total base when empty); `None` when the
    /// last region ends at 2^64. The tail hole is `tail_start..=total.last`, if non-empty.
    tail_start: Option<u64>,
    overlap_bug: OverlapBug,
}

// SAFETY: a `RegionTree` exclusively owns every region it links: the address index owns
// the boxes, and the gap index only points into boxes owned by the same tree (see
// `GapIndex`). Sending the tree therefore moves all access to those regions to the other
// thread along with it, which is sound when `B` is `Send` (the `Cell`s inside a region are
// `Send`). The tree is not `Sync`, since shared references to it hand out `&Region<B>`
// whose access mask can be changed through a `Cell`.
unsafe impl<B: Send> Send for RegionTree<B> {}

impl<B> RegionTree<B> {
    /// An empty tree whose regions must lie inside `total_range`.
    pub const fn new(total_range: VirtualRange) -> Self {
        Self {
            total: total_range,
            regions: RBTree::new(ByAddress::NEW),
            gaps: GapIndex::new(),
            len: 0,
            tail_start: Some(total_range.base().get()),
            overlap_bug: OverlapBug::initial(),
        }
    }

    /// The range all regions must lie in.
    pub fn total_range(&self) -> VirtualRange {
        self.total
    }

    /// Number of placed regions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no region is placed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Places `region` in a free hole, at a multiple of `alignment`, following the
    /// placement policy described on [`RegionTree`].
    ///
    /// Errors, checked in this order: [`ZeroSize`](RegionTreeError::ZeroSize),
    /// [`MisalignedSize`](RegionTreeError::MisalignedSize),
    /// [`BadAlignment`](RegionTreeError::BadAlignment) (not a power of two, or below
    /// `PAGE_SIZE`), [`NoSpace`](RegionTreeError::NoSpace) (no aligned hole of `size`
    /// bytes exists). The region comes back inside the error.
    pub fn place_anywhere(
        &mut self,
        region: Box<Region<B>>,
        size: u64,
        alignment: u64,
    ) -> Result<VirtualRange, PlaceError<B>> {
        let found = self.find_anywhere(size, alignment);
        self.commit(region, found)
    }

    /// Places `region` at exactly `[base, base + size)`.
    ///
    /// Errors, checked in this order: [`ZeroSize`](RegionTreeError::ZeroSize),
    /// [`MisalignedSize`](RegionTreeError::MisalignedSize),
    /// [`MisalignedBase`](RegionTreeError::MisalignedBase),
    /// [`Overflow`](RegionTreeError::Overflow) (the range would pass 2^64),
    /// [`OutOfRange`](RegionTreeError::OutOfRange) (not inside the total range),
    /// [`Overlap`](RegionTreeError::Overlap) (shares an address with a placed region;
    /// merely touching one is fine). The region comes back inside the error.
    pub fn place_specifically(
        &mut self,
        region: Box<Region<B>>,
        base: VirtualAddress,
        size: u64,
    ) -> Result<VirtualRange, PlaceError<B>> {
        let checked = self.check_specific(base, size);
        self.commit(region, checked)
    }

    /// Places `region` at a position drawn uniformly from *all* valid `alignment`-aligned
    /// positions in all holes (for ASLR).
    ///
    /// It fails exactly when [`place_anywhere`](Self::place_anywhere) would, and then draws
    /// nothing from `rng`. Otherwise it draws a slot, two values from `rng` for each draw
    /// (a 128-bit `r`, index `floor(r * slots / 2^128)`). Every valid position has exactly
    /// one slot; a hole may have one more slot that runs past its end, and a draw that lands
    /// there is rejected. With page alignment, or a size that is a multiple of the
    /// alignment, there is no such slot and the first draw is taken: O(log n). (In a space
    /// whose tail holds most slots, one draw over a bound that needs no count comes first;
    /// see `randomized.rs`.) Otherwise a
    /// scan of the holes that fit runs beside the draws (two holes before the first draw,
    /// then one per draw; with at most 64 slots one draw comes first); if it ends first, the
    /// position is picked by rank among the ones it counted. The result is
    /// uniform either way (the scan uses no randomness), the loop ends for any `rng`, and
    /// each position's probability is within a relative `2^-74` of `1 / count`. See the
    /// complexity on [`RegionTree`], and `randomized.rs` for the argument.
    ///
    /// The positions returned for a seed are deterministic for a given tree, but are not
    /// those of earlier versions of this crate.
    ///
    /// Errors as for [`place_anywhere`](Self::place_anywhere).
    pub fn place_randomized(
        &mut self,
        region: Box<Region<B>>,
        size: u64,
        alignment: u64,
        rng: &mut impl RandomSource,
    ) -> Result<VirtualRange, PlaceError<B>> {
        let found = self.find_randomized(size, alignment, rng);
        self.commit(region, found)
    }

    /// Removes the region that starts exactly at `base` and hands it back; `None` if no
    /// region starts there. The returned region still reports its last
    /// [`range`](Region::range).
    pub fn remove(&mut self, base: VirtualAddress) -> Option<Box<Region<B>>> {
        let mut cursor = self.regions.find_mut(&base.get());
        let region = cursor.get()?;
        let hole_base = base.get() - region.gap.size();
        self.gaps.unlink(&region.gap);
        // The next region (or the tail) inherits the hole below the removed one.
        let next = cursor.peek_next();
        match next.get() {
            Some(next_region) => {
                let size = next_region.span().0 - hole_base;
                // SAFETY: `next_region` is owned by `self.regions`; its node is unlinked
                // before it leaves `self.regions` (here in `remove`), or forgotten before
                // `self.regions` drops it (`Drop`).
                unsafe { self.gaps.set_hole(&next_region.gap, hole_base, size) };
            }
            None => self.tail_start = Some(hole_base),
        }
        let removed = cursor.remove()?;
        self.len -= 1;
        Some(removed)
    }

    /// The region containing `addr`, if any. O(log n).
    pub fn find_region_containing(&self, addr: VirtualAddress) -> Option<&Region<B>> {
        self.regions
            .upper_bound(Included(&addr.get()))
            .get()
            .filter(|region| region.span().1 >= addr.get())
    }

    /// The regions that share at least one address with `range`, in address order,
    /// including one that contains `range.base()` and one that starts in the middle of
    /// `range`. O(log n) to the first, then O(1) each.
    pub fn find_regions_intersecting(
        &self,
        range: VirtualRange,
    ) -> impl DoubleEndedIterator<Item = &Region<B>> + '_ {
        let first = self
            .find_region_containing(range.base())
            .map_or(range.base().get(), |region| region.span().0);
        self.regions
            .range(Included(&first), Included(&range.last().get()))
    }

    /// All regions in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Region<B>> + '_ {
        self.regions.iter()
    }

    /// Plants (`true`) or removes (`false`) the seeded `place_specifically` bug in this tree: an
    /// overlap of one page with the left neighbour goes unnoticed. For an in-process simulator
    /// that must switch the bug without recompiling; the `bug-overlap` feature turns it on in
    /// every new tree. Only with the `seeded-bugs` feature.
    #[cfg(feature = "seeded-bugs")]
    pub fn set_seeded_overlap_bug(&mut self, on: bool) {
        self.overlap_bug.set(on);
    }

    /// Plants (`true`) or removes (`false`) the seeded stale-summary bug in this tree's gap
    /// index: a removal keeps an ancestor's room summary that only the removed hole held, so
    /// the summary over-estimates and only [`check_invariants`](Self::check_invariants) sees
    /// it. The `bug-stale-gap-summary` feature turns it on in every new tree. Only with the
    /// `seeded-bugs` feature.
    #[cfg(feature = "seeded-bugs")]
    pub fn set_seeded_stale_summary_bug(&mut self, on: bool) {
        self.gaps.set_stale_summary_bug(on);
    }

    fn commit(
        &mut self,
        region: Box<Region<B>>,
        found: Result<VirtualRange, RegionTreeError>,
    ) -> Result<VirtualRange, PlaceError<B>> {
        match found {
            Ok(range) => {
                self.link(region, range);
                Ok(range)
            }
            Err(kind) => Err(PlaceError { kind, region }),
        }
    }

    /// Inserts `region` at `range`, which must lie inside a hole of the total range: one
    /// descent to the previous region, then O(1) amortized work, plus gap-index updates for
    /// the holes below `region` and below the next region.
    fn link(&mut self, region: Box<Region<B>>, range: VirtualRange) {
        let (base, last) = (range.base().get(), range.last().get());
        // In the tail hole the previous region is the last one: following right links is
        // cheaper than comparing keys on the way down.
        let mut cursor = if self.tail_start.is_some_and(|tail| tail <= base) {
            self.regions.back_mut()
        } else {
            self.regions.upper_bound_mut(Included(&base))
        };
        let hole_base = cursor
            .get()
            .map_or(self.total.base().get(), |previous| previous.span().1 + 1);
        // The next region (or the tail) keeps only the part of the hole above `range`.
        if let Some(next_region) = cursor.peek_next().get() {
            let size = next_region.span().0 - (last + 1);
            // SAFETY: as in `remove`: `next_region` is owned by `self.regions`.
            unsafe { self.gaps.set_hole(&next_region.gap, last + 1, size) };
        } else {
            self.tail_start = last.checked_add(1);
        }
        region.set_range(range);
        // At the null position (no previous region) this inserts at the front.
        cursor.insert_after(region);
        cursor.move_next();
        if let Some(placed) = cursor.get() {
            // Saturating: after a seeded overlap (see `seeded_bug`) the region gets no hole
            // below it, rather than a wrapped-around one.
            let size = base.saturating_sub(hole_base);
            // SAFETY: as in `remove`: `placed` was just inserted into `self.regions`.
            unsafe { self.gaps.set_hole(&placed.gap, hole_base, size) };
        }
        self.len += 1;
    }

    fn check_specific(
        &self,
        base: VirtualAddress,
        size: u64,
    ) -> Result<VirtualRange, RegionTreeError> {
        let range = VirtualRange::new(base, size)?;
        if !self.total.contains_range(&range) {
            return Err(RegionTreeError::OutOfRange);
        }
        let previous = self.regions.upper_bound(Included(&base.get()));
        // The seeded bug (see `seeded_bug`): an overlap of one page with the left neighbour
        // goes unnoticed.
        let missed = if self.overlap_bug.is_on() {
            PAGE_SIZE
        } else {
            0
        };
        if previous
            .get()
            .is_some_and(|r| r.span().1 >= base.get().saturating_add(missed))
        {
            return Err(RegionTreeError::Overlap);
        }
        // From the null position (no previous region) this is the first region.
        let next = previous.peek_next();
        if next.get().is_some_and(|r| r.span().0 <= range.last().get()) {
            return Err(RegionTreeError::Overlap);
        }
        Ok(range)
    }

    fn find_anywhere(&self, size: u64, alignment: u64) -> Result<VirtualRange, RegionTreeError> {
        check_request(size, alignment)?;
        let start = best_fit::best_fit(&self.free_space(), size, alignment);
        Ok(placed_at(start.ok_or(RegionTreeError::NoSpace)?, size))
    }

    fn find_randomized(
        &self,
        size: u64,
        alignment: u64,
        rng: &mut impl RandomSource,
    ) -> Result<VirtualRange, RegionTreeError> {
        check_request(size, alignment)?;
        let start = randomized::uniform(&self.free_space(), size, alignment, rng);
        Ok(placed_at(start.ok_or(RegionTreeError::NoSpace)?, size))
    }

    /// Every free hole: the gap index and the tail.
    fn free_space(&self) -> FreeSpace<'_> {
        FreeSpace::new(&self.gaps, self.tail_hole())
    }

    /// The hole between the last region and the end of the total range.
    fn tail_hole(&self) -> Option<Hole> {
        let total_last = self.total.last().get();
        self.tail_start
            .filter(|&start| start <= total_last)
            .map(|start| Hole::new(start, total_last))
    }
}

/// The range of `size` bytes at `start`, which a hole holds.
fn placed_at(start: u64, size: u64) -> VirtualRange {
    VirtualRange::from_base_last(start, start + (size - 1))
}

/// Validates a `place_anywhere`/`place_randomized` request.
fn check_request(size: u64, alignment: u64) -> Result<(), RegionTreeError> {
    if size == 0 {
        Err(RegionTreeError::ZeroSize)
    } else if !size.is_multiple_of(PAGE_SIZE) {
        Err(RegionTreeError::MisalignedSize)
    } else if !alignment.is_power_of_two() || alignment < PAGE_SIZE {
        Err(RegionTreeError::BadAlignment)
    } else {
        Ok(())
    }
}

impl<B> Drop for RegionTree<B> {
    fn drop(&mut self) {
        // The gap index points into boxes that `self.regions` is about to free.
        self.gaps.forget_all();
    }
}

impl<B> fmt::Debug for RegionTree<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionTree")
            .field("total_range", &self.total)
            .field("regions", &DebugRegions(self))
            .finish()
    }
}

struct DebugRegions<'a, B>(&'a RegionTree<B>);

impl<B> fmt::Debug for DebugRegions<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Compiles the examples in `shared-mm/README.md` as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
