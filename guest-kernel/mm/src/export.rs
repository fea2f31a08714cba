//! Exporting region trees to the host: the records a snapshot carries, whatever transport
//! (mailbox chunks under KVM, a direct call in the host's simulated machine) delivers them.

use crate::cpu::Cpu;
use crate::machine::Machine;
use crate::memory_manager::MemoryManager;
use crate::seeded_bugs::Bug;
use crate::vmobject::VMObject;
use shared_mm::abi::{RegionRecord, KERNEL_SPACE};
use shared_mm::region::Region;
use shared_mm::region_tree::RegionTree;

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
    /// Runs `f` on the region tree of `space` ([`KERNEL_SPACE`] for the kernel's), locked; `None`
    /// if no such space is alive.
    pub fn export<R>(
        &self,
        cpu: &mut Cpu<M>,
        space: u32,
        f: impl FnOnce(Export<'_>) -> R,
    ) -> Option<R> {
        let short = self.bugs().has(Bug::ExportShortRange);
        let export = move |tree: &RegionTree<VMObject>, cr3| {
            // Seeded bug otherwise: the export ends a page short of the tree's total range.
            let end = tree.total_range().last().get();
            let inside =
                move |r: &&Region<VMObject>| r.range().is_some_and(|r| r.last().get() < end);
            let exported = tree.iter().filter(move |r| !short || inside(r));
            f(Export {
                cr3,
                total: tree.len(),
                regions: alloc::boxed::Box::new(exported.map(region_record)),
            })
        };
        if space == KERNEL_SPACE {
            let cr3 = self.kernel_cr3();
            return Some(self.kernel_tree(cpu, |tree| export(tree, cr3)));
        }
        self.inspect_space(cpu, space, |s, _| export(s.tree(), s.cr3()))
    }
}
