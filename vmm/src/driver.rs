//! The Driver trait: what hands the guest MM its work and receives the results, whichever
//! backend runs it; plus the snapshot collector drivers share and the simplest drivers.

use shared_mm::abi::{Op, OpResult, RegionRecord, SpaceRecord};
use shared_mm::trace::TraceEvent;
use std::collections::VecDeque;
use vm_memory::GuestMemoryMmap;

/// One address space's exported region tree, with the root of its page tables.
#[derive(Clone, Debug)]
pub struct SpaceSnapshot {
    pub space: u32,
    pub cr3: u64,
    /// The region count the guest reported with the snapshot.
    pub reported_count: u64,
    pub regions: Vec<RegionRecord>,
}

impl SpaceSnapshot {
    /// Adds one `Snapshot` hypercall chunk to `list`: a chunk that starts at region 0 opens a
    /// new snapshot; a later chunk extends the last one, which must be of the same space.
    pub fn collect(
        list: &mut Vec<SpaceSnapshot>,
        space: u32,
        cr3: u64,
        first: u64,
        total: u64,
        regions: &[RegionRecord],
    ) -> Result<(), String> {
        if first == 0 {
            list.push(SpaceSnapshot {
                space,
                cr3,
                reported_count: total,
                regions: Vec::new(),
            });
        }
        match list.last_mut() {
            Some(snapshot) if snapshot.space == space => {
                snapshot.regions.extend_from_slice(regions);
                Ok(())
            }
            _ => Err(format!(
                "snapshot chunk at {first} for space {space} arrived without its start"
            )),
        }
    }
}

/// What the host does with the guest's MM work: hands out operation batches, receives results
/// and region-tree snapshots. Implemented by the self-check scenario, the fuzzer and the tests;
/// served by either backend.
pub trait Driver {
    /// The guest finished the previous batch (`results`, empty on the first call) and reports
    /// its live address spaces. Return the next batch, or `None` when there is no more work.
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, String>;

    /// A chunk of the region tree of `space` (whose page tables are rooted at `cr3`), starting at
    /// region index `first` of `total` (see [`SpaceSnapshot::collect`]). The default ignores it.
    fn snapshot(
        &mut self,
        _mem: &GuestMemoryMmap,
        _space: u32,
        _cr3: u64,
        _first: u64,
        _total: u64,
        _regions: &[RegionRecord],
    ) -> Result<(), String> {
        Ok(())
    }

    /// The next events of the guest's flush trace, in order (every event since boot reaches the
    /// driver exactly once). The default ignores them.
    fn trace(&mut self, _mem: &GuestMemoryMmap, _events: &[TraceEvent]) -> Result<(), String> {
        Ok(())
    }
}

/// A driver with no work: the guest's agent loop ends at once.
pub struct IdleDriver;

impl Driver for IdleDriver {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        _: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, String> {
        Ok(None)
    }
}

/// A driver that sends fixed batches of operations and keeps every result and every region tree
/// its snapshot operations export: the building block of the scenario runner and of targeted
/// tests and benchmarks.
#[derive(Default)]
pub struct Script {
    batches: VecDeque<Vec<Op>>,
    in_flight: bool,
    /// Results, one vector per batch sent.
    pub results: Vec<Vec<OpResult>>,
    /// Region trees received, in arrival order.
    pub snapshots: Vec<SpaceSnapshot>,
}

impl Script {
    pub fn new(batches: Vec<Vec<Op>>) -> Self {
        Script {
            batches: batches.into(),
            ..Script::default()
        }
    }
}

impl Driver for Script {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, String> {
        if self.in_flight {
            self.results.push(results.to_vec());
        }
        let next = self.batches.pop_front();
        self.in_flight = next.is_some();
        Ok(next)
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        space: u32,
        cr3: u64,
        first: u64,
        total: u64,
        regions: &[RegionRecord],
    ) -> Result<(), String> {
        SpaceSnapshot::collect(&mut self.snapshots, space, cr3, first, total, regions)
    }
}
