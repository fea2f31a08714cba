//! AddressSpace: one process's user half, a RegionTree of anonymous regions plus its page tables.
//!
//! Partial unmap and protect split regions. Both run as *prepare, then commit*: every check
//! that can fail runs before the first change, so an error leaves the space untouched. Fork and
//! copy-on-write live in [`crate::fork`] and [`crate::copy_on_write`].

use crate::copy_on_write::leaf_flags;
use crate::hardware::Hardware;
use crate::machine::Machine;
use crate::page_directory::PageDirectory;
use crate::seeded_bugs::{Bug, SeededBugs};
use crate::seeded_placement::{first_fit, LowHalf};
use crate::sync::Lock;
use crate::vmobject::VMObject;
use crate::{MmError, PhysicalFrame};
use alloc::boxed::Box;
use alloc::vec::Vec;
use shared_mm::abi::{FrameRecord, FrameUse, USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE};
use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::pte::PageTableFlags;
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, RegionTreeError, SplitMix64};
use shared_mm::smp::CpuSet;

pub type UserRegion = Region<VMObject>;

/// Name given to anonymous regions.
const ANON: &str = "anon";

/// Turns a wire access mask into an `Access`: unknown bits are refused, and WRITE or EXECUTE
/// imply READ (x86 cannot express write-only or execute-only pages).
pub fn normalize_access(bits: u32) -> Result<Access, MmError> {
    let access = u8::try_from(bits)
        .ok()
        .and_then(Access::from_bits)
        .ok_or(MmError::BadAccess)?;
    if access.contains(Access::WRITE) || access.contains(Access::EXECUTE) {
        Ok(access | Access::READ)
    } else {
        Ok(access)
    }
}

/// The leaf PTE flags for a page of a region with `access`; `None` when the page must not be
/// present at all (no READ: `PROT_NONE`).
pub fn pte_flags(access: Access) -> Option<PageTableFlags> {
    if !access.contains(Access::READ) {
        return None;
    }
    let mut flags = PageTableFlags::PRESENT;
    if access.contains(Access::WRITE) {
        flags |= PageTableFlags::WRITABLE;
    }
    if access.contains(Access::USER) {
        flags |= PageTableFlags::USER;
    }
    if !access.contains(Access::EXECUTE) {
        flags |= PageTableFlags::NO_EXECUTE;
    }
    Some(flags)
}

/// Whether a leaf going from `old` to `new` flags (both present) loses a right some CPU's TLB
/// may still grant: W, user access, or execution.
fn lost_rights(old: PageTableFlags, new: PageTableFlags) -> bool {
    (old.contains(PageTableFlags::WRITABLE) && !new.contains(PageTableFlags::WRITABLE))
        || (old.contains(PageTableFlags::USER) && !new.contains(PageTableFlags::USER))
        || (!old.contains(PageTableFlags::NO_EXECUTE) && new.contains(PageTableFlags::NO_EXECUTE))
}

/// A region piece to place during a commit: where, with what access, backed by what.
struct Piece {
    range: VirtualRange,
    access: Access,
    object: VMObject,
}

pub struct AddressSpace {
    id: u32,
    pub(crate) tree: RegionTree<VMObject>,
    pub(crate) directory: PageDirectory,
    pub(crate) bugs: SeededBugs,
    /// The CPUs that may cache its translations ([`crate::shootdown`]).
    pub(crate) cpus: CpuSet,
    /// Operations that took translations away or lowered them (each one that owed the other
    /// CPUs a shootdown): a touch whose resolved fault did not stick tells by it whether another
    /// CPU undid the fault meanwhile ([`crate::user_access`]).
    pub(crate) downgrades: u64,
    /// Destroyed: out of the space table, its memory and tables gone. A CPU that still holds a
    /// handle (a touch between two stays in ring 3) finds no space.
    pub(crate) dead: bool,
}

impl AddressSpace {
    /// A new, empty address space with the user trampoline mapped.
    pub fn new<M: Machine>(
        id: u32,
        kernel: &PageDirectory,
        trampoline: PhysicalFrame,
        bugs: SeededBugs,
        hw: &mut Hardware<'_, M>,
    ) -> Result<Self, MmError> {
        // Seeded bug otherwise: the range ends after the trampoline's page, not before it.
        let past_top = bugs.has(Bug::UserRangePastTop) as u64 * PAGE_SIZE;
        let total = VirtualRange::new(
            VirtualAddress::new(USER_SPACE_BASE),
            USER_SPACE_END - USER_SPACE_BASE + past_top,
        )
        .expect("user range constants are valid");
        let mut directory = PageDirectory::new_user(kernel, bugs, hw)?;
        let mut flags = PageTableFlags::PRESENT | PageTableFlags::USER;
        if bugs.has(Bug::TrampolineWritable) {
            flags |= PageTableFlags::WRITABLE; // Seeded bug: mapped like a data page.
        }
        if let Err(e) = directory.map(USER_TRAMPOLINE, trampoline, flags, hw) {
            directory.destroy_user(hw);
            return Err(e);
        }
        let mut tree = RegionTree::new(total);
        tree.set_seeded_overlap_bug(bugs.has(Bug::Overlap));
        tree.set_seeded_stale_summary_bug(bugs.has(Bug::StaleGapSummary));
        Ok(AddressSpace {
            id,
            tree,
            directory,
            bugs,
            cpus: CpuSet::EMPTY,
            downgrades: 0,
            dead: false,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Names the space `id`: a new space gets its id when it joins the space table.
    pub(crate) fn set_id(&mut self, id: u32) {
        self.id = id;
    }

    /// The CPUs that may cache its translations.
    pub fn cpus(&self) -> CpuSet {
        self.cpus
    }

    pub fn cr3(&self) -> u64 {
        self.directory.cr3()
    }

    pub fn tree(&self) -> &RegionTree<VMObject> {
        &self.tree
    }

    pub fn directory(&self) -> &PageDirectory {
        &self.directory
    }

    /// The frames this space owns: its page tables, then its regions' committed data frames
    /// (those of a shared object once, however many of its regions map it).
    pub fn owned_frames<M: Machine>(&self, hw: &mut Hardware<'_, M>) -> Vec<FrameRecord> {
        let record = |usage| {
            move |frame: PhysicalFrame| FrameRecord {
                frame: frame.0,
                usage,
            }
        };
        let mut owned: Vec<FrameRecord> = self
            .directory
            .frames()
            .map(record(FrameUse::Table))
            .collect();
        let mut shared_seen = Vec::new();
        for object in self.tree.iter().filter_map(|r| r.backing()) {
            let usage = match object.shared_id() {
                None => FrameUse::Data,
                Some(id) if !shared_seen.contains(&id) => {
                    shared_seen.push(id);
                    FrameUse::SharedData
                }
                Some(_) => continue,
            };
            owned.extend(object.frames(hw).into_iter().map(record(usage)));
        }
        owned
    }

    pub(crate) fn new_region(access: Access, object: VMObject) -> Box<UserRegion> {
        Box::new(Region::new(ANON, access, Some(object)))
    }

    /// A new region's object: shared for `SHARED` access, else private.
    fn object_for<M: Machine>(access: Access, hw: &mut Hardware<'_, M>) -> VMObject {
        if access.contains(Access::SHARED) {
            VMObject::shared(hw.new_object_id())
        } else {
            VMObject::new()
        }
    }

    /// Maps fresh demand-zero memory in the smallest hole that fits (best fit, see
    /// `shared_mm::region_tree`'s placement policy).
    pub fn map_anywhere<M: Machine>(
        &mut self,
        size: u64,
        align: u64,
        access: u32,
        hw: &mut Hardware<'_, M>,
    ) -> Result<VirtualRange, MmError> {
        let access = normalize_access(access)?;
        let region = Self::new_region(access, Self::object_for(access, hw));
        if self.bugs.has(Bug::AnywhereFirstFit) {
            if let Some(start) = first_fit(&self.tree, size, align) {
                // Seeded bug: the lowest hole that fits, not the best fit.
                return Ok(self.tree.place_specifically(region, start, size)?);
            }
        }
        Ok(self.tree.place_anywhere(region, size, align)?)
    }

    /// Maps fresh demand-zero memory at exactly `[addr, addr + size)`; fails on any overlap.
    pub fn map_fixed<M: Machine>(
        &mut self,
        addr: u64,
        size: u64,
        access: u32,
        hw: &mut Hardware<'_, M>,
    ) -> Result<VirtualRange, MmError> {
        let access = normalize_access(access)?;
        let region = Self::new_region(access, Self::object_for(access, hw));
        Ok(self
            .tree
            .place_specifically(region, VirtualAddress::new(addr), size)?)
    }

    /// Maps fresh demand-zero memory at a uniformly random aligned position, drawn from `rng`.
    pub fn map_randomized<M: Machine>(
        &mut self,
        size: u64,
        align: u64,
        access: u32,
        rng: &Lock<SplitMix64>,
        hw: &mut Hardware<'_, M>,
    ) -> Result<VirtualRange, MmError> {
        let access = normalize_access(access)?;
        let region = Self::new_region(access, Self::object_for(access, hw));
        let low_half = self.bugs.has(Bug::AslrLowHalf);
        let tree = &mut self.tree;
        let placed = hw.under(rng, |rng, _| {
            if low_half {
                // Seeded bug: draws from the first half of the valid positions only.
                return tree.place_randomized(region, size, align, &mut LowHalf(rng));
            }
            tree.place_randomized(region, size, align, rng)
        });
        Ok(placed?)
    }

    /// Checks an operation's range: aligned, non-empty, no overflow, inside the user range.
    /// Never inlined, so a breakpoint on `unmap` or `protect` stops in their own frame, with
    /// their arguments and `range` in view (the README's gdb session relies on it).
    #[inline(never)]
    fn checked_range(&self, addr: u64, size: u64) -> Result<VirtualRange, MmError> {
        let range =
            VirtualRange::new(VirtualAddress::new(addr), size).map_err(RegionTreeError::from)?;
        if !self.tree.total_range().contains_range(&range) {
            return Err(RegionTreeError::OutOfRange.into());
        }
        Ok(range)
    }

    /// The ranges of the regions intersecting `range`, in order.
    pub(crate) fn intersecting(&self, range: VirtualRange) -> Vec<VirtualRange> {
        self.tree
            .find_regions_intersecting(range)
            .filter_map(|r| r.range())
            .collect()
    }

    /// Clears the PTEs of the committed pages in `cut` (part of the region at `whole`) and
    /// flushes them from the TLB.
    fn clear_ptes<M: Machine>(
        &mut self,
        whole: VirtualRange,
        cut: VirtualRange,
        hw: &mut Hardware<'_, M>,
    ) {
        let mut last = cut.last().get();
        if self.bugs.has(Bug::SplitOffByOne) && cut.size() > PAGE_SIZE {
            last -= PAGE_SIZE; // Seeded bug: the last page of the cut keeps its PTE.
        }
        let pages = self
            .tree
            .find_region_containing(whole.base())
            .and_then(|region| region.backing())
            .expect("a placed user region is backed")
            .pages_in(cut.base().get(), last, hw);
        let bugs = self.bugs;
        let root = self.directory.root();
        for (page, _) in pages {
            hw.machine().progress();
            if bugs.has(Bug::FlushBeforeClear) {
                hw.flush_everywhere(root, page); // Seeded bug: the entry can be refilled now.
            }
            if !bugs.has(Bug::StalePte) {
                self.directory.unmap(page, hw);
            }
            let flush_now = ![
                Bug::NoTlbFlush,
                Bug::FlushBeforeClear,
                Bug::FreeBeforeFlush,
                Bug::FlushWrongPage,
            ]
            .into_iter()
            .any(|bug| bugs.has(bug));
            if flush_now {
                hw.flush_everywhere(root, page);
            }
            if bugs.has(Bug::FlushWrongPage) {
                hw.flush_everywhere(root, page + PAGE_SIZE); // Seeded bug: the neighbour.
            }
        }
    }

    /// Takes the region at `whole` out of the tree, after clearing the PTEs of `cut` (a part of
    /// it, if given) and flushing them from the TLB. Returns the region's access and backing.
    fn detach<M: Machine>(
        &mut self,
        whole: VirtualRange,
        cut: Option<VirtualRange>,
        hw: &mut Hardware<'_, M>,
    ) -> (Access, VMObject) {
        if let Some(cut) = cut {
            self.clear_ptes(whole, cut, hw);
        }
        let region = self
            .tree
            .remove(whole.base())
            .expect("region is in the tree");
        let access = region.access();
        (
            access,
            region.into_backing().expect("user regions are backed"),
        )
    }

    /// Places the pieces a split leaves, in address order.
    fn place_pieces(&mut self, pieces: impl IntoIterator<Item = Option<Piece>>) {
        for piece in pieces.into_iter().flatten() {
            let region = Self::new_region(piece.access, piece.object);
            if let Err(e) =
                self.tree
                    .place_specifically(region, piece.range.base(), piece.range.size())
            {
                panic!("re-placing split piece {} failed: {}", piece.range, e.kind);
            }
        }
    }

    /// Unmaps every page of `[addr, addr + size)`: whole regions, parts of regions (which are
    /// split), and holes (ignored), like munmap. The frames it takes out are released after the
    /// operation's shootdown.
    pub fn unmap<M: Machine>(
        &mut self,
        addr: u64,
        size: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let range = self.checked_range(addr, size)?;
        // Prepare: nothing below can fail.
        for whole in self.intersecting(range) {
            let cut = whole
                .intersection(&range)
                .expect("regions intersect the range");
            let (access, object) = self.detach(whole, Some(cut), hw);
            let (left, right) = whole.subtract(&range);
            let cut_pages = object.pages_in(cut.base().get(), cut.last().get(), hw);
            let freed: Vec<PhysicalFrame> = if self.bugs.has(Bug::FreeMapped) {
                // Seeded bug: frees the frames of the pieces that stay mapped, too.
                let all = object.pages_in(whole.base().get(), whole.last().get(), hw);
                object.take_pages(cut.base().get(), cut.last().get());
                all.into_iter().map(|(_, f)| f).collect()
            } else {
                object.take_pages(cut.base().get(), cut.last().get())
            };
            let right = right.map(|range| Piece {
                range,
                access,
                object: object.split_off(range.base().get()),
            });
            // Without a left piece this handle is done with (a shared object may live on).
            let (left, done) = match left {
                Some(range) => (
                    Some(Piece {
                        range,
                        access,
                        object,
                    }),
                    None,
                ),
                None => (None, Some(object)),
            };
            self.place_pieces([left, right]);
            if self.bugs.has(Bug::LeakOnUnmap) {
                continue;
            }
            if !self.bugs.has(Bug::FreeBeforeFlush) {
                freed
                    .into_iter()
                    .for_each(|f| hw.release_after_shootdown(f));
                done.into_iter()
                    .for_each(|o| hw.release_object_after_shootdown(o));
                continue;
            }
            // Seeded bug: the frames go back first, and the flushes come after.
            freed.into_iter().for_each(|f| hw.release_frame(f));
            done.into_iter().for_each(|o| o.release(hw));
            let root = self.directory.root();
            for (page, _) in cut_pages {
                hw.flush_everywhere(root, page);
            }
        }
        Ok(())
    }

    /// Whether the regions intersecting `range` (given in order) cover it with no gap.
    fn covers(range: VirtualRange, wholes: &[VirtualRange]) -> bool {
        let mut expected = range.base().get();
        for whole in wholes {
            if whole.base().get() > expected {
                return false;
            }
            expected = whole.last().get().saturating_add(1);
        }
        wholes.last().is_some_and(|w| w.last() >= range.last())
    }

    /// Changes the access of every page of `[addr, addr + size)`, splitting regions at the
    /// range's edges. The whole range must be mapped (no holes), like mprotect.
    pub fn protect<M: Machine>(
        &mut self,
        addr: u64,
        size: u64,
        access: u32,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let range = self.checked_range(addr, size)?;
        let access = normalize_access(access)?;
        // Sharing is chosen at map time; protect keeps it.
        if access.contains(Access::SHARED) {
            return Err(MmError::BadAccess);
        }
        let wholes = self.intersecting(range);
        // Prepare: the regions must cover the range with no gap.
        if !Self::covers(range, &wholes) {
            return Err(MmError::NotMapped);
        }
        // Commit: nothing below can fail.
        for whole in wholes {
            let middle = whole
                .intersection(&range)
                .expect("regions intersect the range");
            let (old_access, object) = self.detach(whole, None, hw);
            let access = access | (old_access & Access::SHARED);
            let (left, right) = whole.subtract(&range);
            let middle_object = object.split_off(middle.base().get());
            let right = right.map(|range| Piece {
                range,
                access: old_access,
                object: middle_object.split_off(range.base().get()),
            });
            self.remap(&middle_object, middle, old_access, access, hw);
            let left = left.map(|range| Piece {
                range,
                access: old_access,
                object,
            });
            let middle = Piece {
                range: middle,
                access,
                object: middle_object,
            };
            self.place_pieces([left, Some(middle), right]);
        }
        Ok(())
    }

    /// Rewrites the present PTEs of the committed pages of `object` in `range` for `access`
    /// (or clears them for `PROT_NONE`), flushing each (on every CPU if it lost a right). Pages
    /// not present here (after a `PROT_NONE`, or touched only by another space sharing the
    /// object) are mapped on demand.
    fn remap<M: Machine>(
        &mut self,
        object: &VMObject,
        range: VirtualRange,
        old_access: Access,
        access: Access,
        hw: &mut Hardware<'_, M>,
    ) {
        for (page, frame) in object.pages_in(range.base().get(), range.last().get(), hw) {
            hw.machine().progress();
            let Some((_, old)) = self.directory.translate(page, hw.machine_ref()) else {
                continue;
            };
            let refs = hw.ref_count(frame);
            let mut flags = pte_flags(access).map(|f| leaf_flags(f, object, refs));
            if self.bugs.has(Bug::KeepWritable) && old_access.contains(Access::WRITE) {
                flags = flags.map(|f| f | PageTableFlags::WRITABLE); // Seeded bug.
            }
            if self.bugs.has(Bug::ProtectKeepsExec) && old_access.contains(Access::EXECUTE) {
                flags = flags.map(|f| f.difference(PageTableFlags::NO_EXECUTE));
                // Seeded bug.
            }
            match flags {
                // The page is present, so its page table exists and this map allocates
                // nothing: it cannot fail.
                Some(flags) => self
                    .directory
                    .map(page, frame, flags, hw)
                    .expect("page table of a present page exists"),
                None => {
                    self.directory.unmap(page, hw);
                }
            }
            if flags.is_none_or(|new| lost_rights(old, new)) {
                hw.flush_everywhere(self.directory.root(), page);
            } else {
                hw.machine().flush_page(page);
            }
        }
    }

    /// Faults in every page of `[addr, addr + size)` for writing (`MADV_POPULATE_WRITE`): the
    /// range must be covered by regions with USER and WRITE. Prepare, then commit: without
    /// enough free frames for every missing page and table, nothing changes.
    pub fn populate_range<M: Machine>(
        &mut self,
        addr: u64,
        size: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Result<Option<u64>, MmError> {
        let range = self.checked_range(addr, size)?;
        let wholes = self.intersecting(range);
        if !Self::covers(range, &wholes) {
            return Err(MmError::NotMapped);
        }
        // Prepare: every region allows user writes, and the frames are there.
        let mut committed = 0;
        for whole in &wholes {
            let region = self
                .tree
                .find_region_containing(whole.base())
                .expect("region is in the tree");
            if !region.access().contains(Access::USER | Access::WRITE) {
                return Ok(Some(whole.base().get().max(addr)));
            }
            let part = whole
                .intersection(&range)
                .expect("regions intersect the range");
            let object = region.backing().expect("user regions are backed");
            let pages = object.pages_in(part.base().get(), part.last().get(), hw);
            // A copy-on-write page takes a fresh frame for its copy, like a missing one.
            let private = object.shared_id().is_none();
            let shared = pages
                .iter()
                .filter(|(_, frame)| private && hw.ref_count(*frame) > 1)
                .count();
            committed += (pages.len() - shared) as u64;
        }
        let missing = range.page_count() - committed;
        // Not even the pages fit: no need to count the tables (a walk of the whole range).
        if missing > hw.free_count() as u64 {
            return Err(MmError::OutOfFrames);
        }
        let tables =
            self.directory
                .tables_missing(range.base().get(), range.last().get(), hw.machine_ref());
        // Another CPU may take frames before the commit: they are taken now.
        hw.reserve(missing as usize + tables)?;
        // Commit: nothing below can fail.
        for page in (range.base().get()..=range.last().get()).step_by(PAGE_SIZE as usize) {
            self.populate(page, true, hw)
                .expect("the frames for every page were counted");
        }
        Ok(None)
    }

    /// Demand-zero paging for `page` (page-aligned), which lies in an accessible region: maps
    /// the page's committed frame, or commits a fresh zeroed one. For a `write`, a
    /// copy-on-write frame is copied first (or taken over, if this is its last reference).
    pub fn populate<M: Machine>(
        &mut self,
        page: u64,
        write: bool,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        // A shared object's page is found or committed under the object's lock, so two CPUs
        // faulting it in from two spaces commit one frame.
        let (frame, fresh) = self.object_at(page).with_pages(hw, |pages, hw| {
            if let Some(&frame) = pages.get(&page) {
                return Ok::<_, MmError>((frame, false));
            }
            let frame = hw.zeroed_frame()?;
            pages.insert(page, frame);
            Ok((frame, true))
        })?;
        if !fresh {
            return match write {
                true => self.break_cow(page, hw),
                false => self.map_leaf(page, frame, hw),
            };
        }
        let mapped = self.map_leaf(page, frame, hw);
        if mapped.is_err() && self.object_at(page).shared_id().is_none() {
            // No page-table frame for the mapping: undo the commit. (A shared object keeps
            // its page: another space may have mapped it already.)
            self.object_at(page).take_pages(page, page);
            hw.release_frame(frame);
        }
        mapped
    }

    /// Seeded bug (`bug-fault-no-recheck`): maps `page`, which no region holds any more, to a
    /// fresh zeroed frame with the flags of a region with `access` (the one the fault saw). No
    /// object holds the frame.
    pub(crate) fn map_orphan<M: Machine>(
        &mut self,
        page: u64,
        access: Access,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let flags = pte_flags(access).expect("the fault's region was accessible");
        let frame = hw.zeroed_frame()?;
        self.directory.map(page, frame, flags, hw)?;
        hw.machine().flush_page(page);
        Ok(())
    }

    /// The object of the (user) region containing `page`.
    pub(crate) fn object_at(&self, page: u64) -> &VMObject {
        self.tree
            .find_region_containing(VirtualAddress::new(page))
            .and_then(|region| region.backing())
            .expect("the page lies in a user region")
    }

    /// Destroys the space: clears every PTE and releases every frame and page table, after a
    /// shootdown of every CPU that may cache it (which switches a CPU that has it loaded to the
    /// kernel's tables). This CPU must have switched away already.
    pub fn destroy<M: Machine>(&mut self, hw: &mut Hardware<'_, M>) {
        self.dead = true;
        let ranges: Vec<VirtualRange> = self.tree.iter().filter_map(|r| r.range()).collect();
        for range in ranges {
            let (_, object) = self.detach(range, Some(range), hw);
            for frame in object.take_pages(range.base().get(), range.last().get()) {
                hw.release_after_shootdown(frame);
            }
            hw.release_object_after_shootdown(object);
        }
        self.directory.unmap(USER_TRAMPOLINE, hw);
        hw.destroy_everywhere(self.directory.root());
        self.directory.destroy_user(hw);
    }
}
