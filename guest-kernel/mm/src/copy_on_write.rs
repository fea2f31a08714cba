//! Copy-on-write: a private frame held by more than one VMObject (after a fork) is mapped
//! read-only in every space; the first write copies it into a fresh frame, or takes it over
//! when no other object holds it any more. Shared memory is never copied.

use crate::address_space::{pte_flags, AddressSpace};
use crate::hardware::Hardware;
use crate::machine::Machine;
use crate::seeded_bugs::Bug;
use crate::vmobject::VMObject;
use crate::{MmError, PhysicalFrame};
use shared_mm::address::VirtualAddress;
use shared_mm::pte::PageTableFlags;

/// The leaf flags for a frame of `object` that `refs` objects hold, in a region whose access
/// gives `flags`: without W while the frame is copy-on-write.
pub fn leaf_flags(flags: PageTableFlags, object: &VMObject, refs: u32) -> PageTableFlags {
    if object.shared_id().is_none() && refs > 1 {
        flags.difference(PageTableFlags::WRITABLE)
    } else {
        flags
    }
}

impl AddressSpace {
    /// The leaf flags of `page`'s committed frame now, and the flags its region gives a page
    /// it holds alone.
    fn page_flags<M: Machine>(
        &self,
        page: u64,
        hw: &mut Hardware<'_, M>,
    ) -> (PageTableFlags, PageTableFlags) {
        let region = self
            .tree
            .find_region_containing(VirtualAddress::new(page))
            .expect("the page lies in a region");
        let flags = pte_flags(region.access()).expect("the region is accessible");
        let object = self.object_at(page);
        let frame = object.frame_at(page, hw).expect("the page is committed");
        let refs = hw.ref_count(frame);
        (leaf_flags(flags, object, refs), flags)
    }

    /// Maps `page` to its committed `frame` with the flags its region and the frame's sharing
    /// allow, and flushes it.
    pub(crate) fn map_leaf<M: Machine>(
        &mut self,
        page: u64,
        frame: PhysicalFrame,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let (flags, _) = self.page_flags(page, hw);
        self.directory.map(page, frame, flags, hw)?;
        hw.machine().flush_page(page);
        Ok(())
    }

    /// Makes the committed `page` (in a writable region) writable in this space: a
    /// copy-on-write frame is copied into a fresh one, which replaces it in this space's
    /// object (every CPU flushes the old translation before the old frame's reference goes); a
    /// frame no other object holds is mapped writable as it is. Prepare, then commit: without a
    /// frame for the copy (or a page table), nothing changes.
    pub fn break_cow<M: Machine>(
        &mut self,
        page: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Result<(), MmError> {
        let (leaf, flags) = self.page_flags(page, hw);
        let old = self.object_at(page).frame_at(page, hw).expect("committed");
        // Seeded bug: the shared frame itself becomes writable.
        if leaf == flags || self.bugs.has(Bug::CowNoCopy) {
            self.directory.map(page, old, flags, hw)?;
            hw.machine().flush_page(page);
            return Ok(());
        }
        let copy = hw.allocate()?;
        hw.machine().copy_frame(old, copy);
        if let Err(e) = self.directory.map(page, copy, flags, hw) {
            hw.free_frame(copy);
            return Err(e);
        }
        self.object_at(page).replace(page, copy, hw);
        hw.flush_everywhere(self.directory.root(), page);
        if !self.bugs.has(Bug::RefcountLeak) {
            // Seeded bug otherwise: the old frame keeps this object's reference for ever.
            hw.release_after_shootdown(old);
        }
        Ok(())
    }
}
