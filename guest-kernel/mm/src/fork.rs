//! Fork: a child space with the parent's regions at the same addresses. Private memory becomes
//! copy-on-write in both (the child's objects hold the parent's frames, each referenced once
//! more, and the parent's writable PTEs lose W, flushed); shared memory stays shared (the child
//! holds the same objects). The child's page tables start empty and fill on demand.

use crate::address_space::{AddressSpace, UserRegion};
use crate::hardware::Hardware;
use crate::machine::Machine;
use crate::seeded_bugs::Bug;
use crate::vmobject::VMObject;
use alloc::boxed::Box;
use alloc::vec::Vec;
use shared_mm::pte::PageTableFlags;
use shared_mm::region::Region;

impl AddressSpace {
    /// Gives `child` (new, empty) a copy of every region of this space, the active one. Nothing
    /// here allocates a frame, so it cannot fail once the child exists.
    pub fn fork_into<M: Machine>(&mut self, child: &mut AddressSpace, hw: &mut Hardware<'_, M>) {
        let privatize = self.bugs.has(Bug::SharedBecomesPrivate);
        let copies: Vec<Box<UserRegion>> = self
            .tree
            .iter()
            .map(|region| {
                let object = region.backing().expect("user regions are backed");
                let access = region.access();
                let copy = match object.shared_id() {
                    // Seeded bug: a new object under the same id, not the same object.
                    Some(id) if self.bugs.has(Bug::ForkSharedNewObject) => VMObject::shared(id),
                    _ => object.fork(privatize, hw),
                };
                Box::new(Region::new(region.name(), access, Some(copy)))
            })
            .collect();
        let ranges: Vec<_> = self.tree.iter().filter_map(|r| r.range()).collect();
        for (region, range) in copies.into_iter().zip(ranges) {
            if let Err(e) = child
                .tree
                .place_specifically(region, range.base(), range.size())
            {
                panic!("the child's copy of {range} cannot be placed: {}", e.kind);
            }
        }
        self.write_protect_private(hw);
    }

    /// Clears W from every present PTE of private memory (its frames are copy-on-write now),
    /// flushing each on every CPU.
    fn write_protect_private<M: Machine>(&mut self, hw: &mut Hardware<'_, M>) {
        if self.bugs.has(Bug::ForkParentWritable) {
            return; // Seeded bug: the parent keeps writing into frames the child sees.
        }
        let pages: Vec<(u64, _)> = self
            .tree
            .iter()
            .filter_map(|r| r.backing())
            .filter(|object| object.shared_id().is_none())
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|object| object.pages_in(0, u64::MAX, hw))
            .collect();
        for (page, frame) in pages {
            hw.machine().progress();
            let Some((_, flags)) = self.directory.translate(page, hw.machine_ref()) else {
                continue;
            };
            if !flags.contains(PageTableFlags::WRITABLE) {
                continue;
            }
            let read_only = flags.difference(PageTableFlags::WRITABLE | PageTableFlags::PRESENT);
            self.directory
                .map(page, frame, read_only, hw)
                .expect("the page is present, so its page table exists");
            if !self.bugs.has(Bug::ForkNoFlush) {
                // Seeded bug otherwise: the W entry stays cached.
                hw.flush_everywhere(self.directory.root(), page);
            }
        }
    }
}
