//! AddressSpace: one process's user half, a RegionTree of anonymous regions plus its page tables.
//!
//! Partial unmap and protect split regions. Both run as *prepare, then commit*: every check
//! that can fail runs before the first change, so an error leaves the space untouched.

use super::frame_allocator::FrameAllocator;
use super::page_directory::PageDirectory;
use super::vmobject::VMObject;
use super::{MmError, PhysicalFrame};
use crate::arch::x86_64::registers::invlpg;
use alloc::boxed::Box;
use alloc::vec::Vec;
use shared_mm::abi::{USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE};
use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::pte::PageTableFlags;
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RandomSource, RegionTree, RegionTreeError};

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

/// A region piece to place during a commit: where, with what access, backed by what.
struct Piece {
    range: VirtualRange,
    access: Access,
    object: VMObject,
}

pub struct AddressSpace {
    id: u32,
    tree: RegionTree<VMObject>,
    directory: PageDirectory,
}

impl AddressSpace {
    /// A new, empty address space with the user trampoline mapped.
    pub fn new(
        id: u32,
        kernel: &PageDirectory,
        trampoline: PhysicalFrame,
        frames: &mut FrameAllocator,
    ) -> Result<Self, MmError> {
        let total = VirtualRange::new(
            VirtualAddress::new(USER_SPACE_BASE),
            USER_SPACE_END - USER_SPACE_BASE,
        )
        .expect("user range constants are valid");
        let mut directory = PageDirectory::new_user(kernel, frames)?;
        let flags = PageTableFlags::PRESENT | PageTableFlags::USER;
        if let Err(e) = directory.map(USER_TRAMPOLINE, trampoline, flags, frames) {
            directory.destroy_user(frames);
            return Err(e);
        }
        Ok(AddressSpace {
            id,
            tree: RegionTree::new(total),
            directory,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
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

    fn new_region(access: Access, object: VMObject) -> Box<UserRegion> {
        Box::new(Region::new(ANON, access, Some(object)))
    }

    /// Maps fresh demand-zero memory in the lowest-addressed hole that fits.
    pub fn map_anywhere(
        &mut self,
        size: u64,
        align: u64,
        access: u32,
    ) -> Result<VirtualRange, MmError> {
        let region = Self::new_region(normalize_access(access)?, VMObject::new());
        Ok(self.tree.place_anywhere(region, size, align)?)
    }

    /// Maps fresh demand-zero memory at exactly `[addr, addr + size)`; fails on any overlap.
    pub fn map_fixed(
        &mut self,
        addr: u64,
        size: u64,
        access: u32,
    ) -> Result<VirtualRange, MmError> {
        let region = Self::new_region(normalize_access(access)?, VMObject::new());
        Ok(self
            .tree
            .place_specifically(region, VirtualAddress::new(addr), size)?)
    }

    /// Maps fresh demand-zero memory at a uniformly random aligned position.
    pub fn map_randomized(
        &mut self,
        size: u64,
        align: u64,
        access: u32,
        rng: &mut impl RandomSource,
    ) -> Result<VirtualRange, MmError> {
        let region = Self::new_region(normalize_access(access)?, VMObject::new());
        Ok(self.tree.place_randomized(region, size, align, rng)?)
    }

    /// Checks an operation's range: aligned, non-empty, no overflow, inside the user range.
    fn checked_range(&self, addr: u64, size: u64) -> Result<VirtualRange, MmError> {
        let range =
            VirtualRange::new(VirtualAddress::new(addr), size).map_err(RegionTreeError::from)?;
        if !self.tree.total_range().contains_range(&range) {
            return Err(RegionTreeError::OutOfRange.into());
        }
        Ok(range)
    }

    /// The ranges of the regions intersecting `range`, in order.
    fn intersecting(&self, range: VirtualRange) -> Vec<VirtualRange> {
        self.tree
            .find_regions_intersecting(range)
            .filter_map(|r| r.range())
            .collect()
    }

    /// Takes the region at `whole` out of the tree, after clearing the PTEs of `cut` (a part of
    /// it, if given) and flushing them from the TLB. Returns the region's access and backing.
    fn detach(&mut self, whole: VirtualRange, cut: Option<VirtualRange>) -> (Access, VMObject) {
        let region = self
            .tree
            .find_region_containing(whole.base())
            .expect("region is in the tree");
        let object = region.backing().expect("user regions are backed");
        if let Some(cut) = cut {
            let mut last = cut.last().get();
            if cfg!(feature = "bug-split-off-by-one") && cut.size() > PAGE_SIZE {
                last -= PAGE_SIZE; // Seeded bug: the last page of the cut keeps its PTE.
            }
            for (page, _) in object.pages_in(cut.base().get(), last) {
                if !cfg!(feature = "bug-stale-pte") {
                    self.directory.unmap(page);
                }
                if !cfg!(feature = "bug-no-tlb-flush") {
                    invlpg(page);
                }
            }
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

    fn place_piece(&mut self, piece: Piece) {
        let region = Self::new_region(piece.access, piece.object);
        if let Err(e) = self
            .tree
            .place_specifically(region, piece.range.base(), piece.range.size())
        {
            panic!("re-placing split piece {} failed: {}", piece.range, e.kind);
        }
    }

    /// Unmaps every page of `[addr, addr + size)`: whole regions, parts of regions (which are
    /// split), and holes (ignored), like munmap.
    pub fn unmap(
        &mut self,
        addr: u64,
        size: u64,
        frames: &mut FrameAllocator,
    ) -> Result<(), MmError> {
        let range = self.checked_range(addr, size)?;
        // Prepare: nothing below can fail.
        for whole in self.intersecting(range) {
            let cut = whole
                .intersection(&range)
                .expect("regions intersect the range");
            let (access, object) = self.detach(whole, Some(cut));
            let (left, right) = whole.subtract(&range);
            let freed = if cfg!(feature = "bug-free-mapped") {
                // Seeded bug: frees the frames of the pieces that stay mapped, too.
                object
                    .pages_in(whole.base().get(), whole.last().get())
                    .into_iter()
                    .map(|(_, f)| f)
                    .collect()
            } else {
                object.take_pages(cut.base().get(), cut.last().get())
            };
            #[cfg(feature = "bug-free-mapped")]
            object.take_pages(cut.base().get(), cut.last().get());
            let right_object = right.map(|r| object.split_off(r.base().get()));
            if let Some(left) = left {
                self.place_piece(Piece {
                    range: left,
                    access,
                    object,
                });
            }
            if let (Some(range), Some(object)) = (right, right_object) {
                self.place_piece(Piece {
                    range,
                    access,
                    object,
                });
            }
            for frame in freed {
                frames.free(frame).expect("a region's frame was allocated");
            }
        }
        Ok(())
    }

    /// Changes the access of every page of `[addr, addr + size)`, splitting regions at the
    /// range's edges. The whole range must be mapped (no holes), like mprotect.
    pub fn protect(
        &mut self,
        addr: u64,
        size: u64,
        access: u32,
        frames: &mut FrameAllocator,
    ) -> Result<(), MmError> {
        let range = self.checked_range(addr, size)?;
        let access = normalize_access(access)?;
        let wholes = self.intersecting(range);
        // Prepare: the regions must cover the range with no gap.
        let mut expected = range.base().get();
        for whole in &wholes {
            if whole.base().get() > expected {
                return Err(MmError::NotMapped);
            }
            expected = whole.last().get().saturating_add(1);
        }
        if wholes.is_empty() || wholes.last().is_some_and(|w| w.last() < range.last()) {
            return Err(MmError::NotMapped);
        }
        // Commit.
        for whole in wholes {
            let middle = whole
                .intersection(&range)
                .expect("regions intersect the range");
            let (old_access, object) = self.detach(whole, None);
            let (left, right) = whole.subtract(&range);
            let middle_object = object.split_off(middle.base().get());
            let right_object = right.map(|r| middle_object.split_off(r.base().get()));
            let mut new_flags = pte_flags(access);
            if cfg!(feature = "bug-keep-writable") && old_access.contains(Access::WRITE) {
                new_flags = new_flags.map(|f| f | PageTableFlags::WRITABLE); // Seeded bug.
            }
            for (page, frame) in middle_object.pages_in(middle.base().get(), middle.last().get()) {
                match new_flags {
                    // A committed page was mapped before, so its page table exists (tables are
                    // only freed with the space) and this map allocates nothing: it cannot fail.
                    Some(flags) => self
                        .directory
                        .map(page, frame, flags, frames)
                        .expect("page table of a committed page exists"),
                    None => {
                        self.directory.unmap(page);
                    }
                }
                invlpg(page);
            }
            if let Some(left) = left {
                self.place_piece(Piece {
                    range: left,
                    access: old_access,
                    object,
                });
            }
            self.place_piece(Piece {
                range: middle,
                access,
                object: middle_object,
            });
            if let (Some(range), Some(object)) = (right, right_object) {
                self.place_piece(Piece {
                    range,
                    access: old_access,
                    object,
                });
            }
        }
        Ok(())
    }

    /// Demand-zero paging for `page` (page-aligned), which lies in an accessible region: maps
    /// the page's committed frame, or commits a fresh zeroed one.
    pub fn populate(&mut self, page: u64, frames: &mut FrameAllocator) -> Result<(), MmError> {
        let region = self
            .tree
            .find_region_containing(VirtualAddress::new(page))
            .expect("populate is called for a page inside a region");
        let flags =
            pte_flags(region.access()).expect("populate is called for an accessible region");
        let object = region.backing().expect("user regions are backed");
        let frame = match object.frame_at(page) {
            Some(frame) => frame,
            None => {
                let frame = frames.allocate()?;
                crate::arch::x86_64::physmap::zero_frame(frame.0);
                object.insert(page, frame);
                frame
            }
        };
        if let Err(e) = self.directory.map(page, frame, flags, frames) {
            // No page-table frame for the mapping: undo the commit of the fresh frame.
            if object.take_pages(page, page).first() == Some(&frame) {
                frames.free(frame).expect("just allocated");
            }
            return Err(e);
        }
        invlpg(page);
        Ok(())
    }

    /// Releases every frame and page table. The space must not be the active one.
    pub fn destroy(mut self, frames: &mut FrameAllocator) {
        let ranges: Vec<VirtualRange> = self.tree.iter().filter_map(|r| r.range()).collect();
        for range in ranges {
            let (_, object) = self.detach(range, Some(range));
            for frame in object.take_pages(range.base().get(), range.last().get()) {
                frames.free(frame).expect("a region's frame was allocated");
            }
        }
        self.directory.unmap(USER_TRAMPOLINE);
        self.directory.destroy_user(frames);
    }
}
