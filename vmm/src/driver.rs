//! The Driver trait: what hands the guest MM its work and receives the results, whichever
//! backend runs it; plus the snapshot collector and the snapshot round drivers share.

use shared_mm::abi::{Op, OpResult, RegionRecord, SpaceRecord, KERNEL_SPACE};
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

/// Where a round stands at a `Batch` hypercall.
enum RoundStep {
    /// Send these snapshot operations (the kernel's and every live space's) to take the round.
    Snapshot(Vec<Op>),
    /// The round is in: the inner driver's held-back results, the kernel's tree and the spaces'.
    Done(Vec<OpResult>, SpaceSnapshot, Vec<SpaceSnapshot>),
}

/// A snapshot of the kernel and every live space after each batch of an inner driver: the
/// round an adapter such as `checker::Checked` takes before it hands the batch's results on.
/// The adapter forwards both hypercalls here with its inner driver.
#[derive(Debug, Default)]
pub struct SnapshotRound {
    /// Results of the inner driver's last batch, held back while the snapshots are taken.
    held_results: Option<Vec<OpResult>>,
    trees: Vec<SpaceSnapshot>,
}

impl SnapshotRound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Either starts a round (the inner driver's batch just finished with `results`), or ends
    /// the one whose snapshot operations just ran.
    fn step(&mut self, results: &[OpResult], spaces: &[SpaceRecord]) -> Result<RoundStep, String> {
        let Some(held) = self.held_results.take() else {
            self.held_results = Some(results.to_vec());
            self.trees.clear();
            let mut ops = vec![Op::Snapshot {
                space: KERNEL_SPACE,
            }];
            ops.extend(spaces.iter().map(|s| Op::Snapshot { space: s.space }));
            return Ok(RoundStep::Snapshot(ops));
        };
        let mut trees = std::mem::take(&mut self.trees);
        let kernel_at = trees.iter().position(|v| v.space == KERNEL_SPACE);
        let kernel = kernel_at
            .map(|i| trees.remove(i))
            .ok_or("the guest sent no kernel snapshot")?;
        Ok(RoundStep::Done(held, kernel, trees))
    }

    /// A `Batch` hypercall: asks for the round's snapshots, or, when they are in, hands the
    /// kernel's tree and the spaces' to `take` (taken while the guest waits with exactly these
    /// trees and tables) and then, if `take` says the work goes on, the held-back results to
    /// `inner`.
    pub fn next_batch(
        &mut self,
        inner: &mut dyn Driver,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
        take: impl FnOnce(SpaceSnapshot, Vec<SpaceSnapshot>) -> bool,
    ) -> Result<Option<Vec<Op>>, String> {
        match self.step(results, spaces)? {
            RoundStep::Snapshot(ops) => Ok(Some(ops)),
            RoundStep::Done(held, kernel, trees) => match take(kernel, trees) {
                true => inner.next_batch(mem, &held, spaces),
                false => Ok(None),
            },
        }
    }

    /// A `Snapshot` hypercall: the round's chunk while a round is in progress, else `inner`'s.
    // The arguments of `Driver::snapshot`, plus the driver the chunk may belong to.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot(
        &mut self,
        inner: &mut dyn Driver,
        mem: &GuestMemoryMmap,
        space: u32,
        cr3: u64,
        first: u64,
        total: u64,
        regions: &[RegionRecord],
    ) -> Result<(), String> {
        if self.held_results.is_none() {
            return inner.snapshot(mem, space, cr3, first, total, regions);
        }
        SpaceSnapshot::collect(&mut self.trees, space, cr3, first, total, regions)
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
