//! Exporting region trees to the host: the records a snapshot carries, whatever transport
//! (mailbox chunks under KVM, a direct call in the host's simulated machine) delivers them.

use crate::machine::Machine;
use crate::memory_manager::MemoryManager;
use crate::seeded_bugs::Bug;
use crate::vmobject::VMObject;
use shared_mm::abi::{RegionRecord, SpaceRecord, KERNEL_SPACE};
use shared_mm::region::Region;

/// One region as a snapshot record.
pub fn region_record(region: &Region<VMObject>) -> RegionRecord {
    let range = region.range().expect("regions in a tree are placed");
    RegionRecord {
        base: range.base().get(),
        size: range.size(),
        access: region.access().bits() as u32,
        backed: region.is_backed() as u32,
        object: region.backing().and_then(VMObject::shared_id).unwrap_or(0),
        name: RegionRecord::name_field(region.name()),
    }
}

/// What a snapshot of one space exports.
pub struct Export<'a> {
    /// The root of its page tables.
    pub cr3: u64,
    /// How many regions its tree holds.
    pub total: usize,
    /// Its regions in address order.
    pub regions: alloc::boxed::Box<dyn Iterator<Item = RegionRecord> + 'a>,
}

impl<M: Machine> MemoryManager<M> {
    /// The region tree of `space` ([`KERNEL_SPACE`] for the kernel's), or `None` if no such
    /// space is alive.
    pub fn export(&self, space: u32) -> Option<Export<'_>> {
        let (tree, cr3) = if space == KERNEL_SPACE {
            (self.kernel_tree(), self.kernel_cr3())
        } else {
            let s = self.space(space)?;
            (s.tree(), s.cr3())
        };
        // Seeded bug otherwise: the export ends a page short of the tree's total range.
        let short = self.bugs.has(Bug::ExportShortRange);
        let end = tree.total_range().last().get();
        let inside = move |r: &&Region<VMObject>| r.range().is_some_and(|r| r.last().get() < end);
        let exported = tree.iter().filter(move |r| !short || inside(r));
        Some(Export {
            cr3,
            total: tree.len(),
            regions: alloc::boxed::Box::new(exported.map(region_record)),
        })
    }

    /// One record per live address space, in id order.
    pub fn space_records(&self) -> impl Iterator<Item = SpaceRecord> + '_ {
        self.spaces().map(|s| SpaceRecord {
            space: s.id(),
            cr3: s.cr3(),
        })
    }
}
