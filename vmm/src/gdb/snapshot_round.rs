//! The snapshot round the gdb observer takes after each batch (or round of batches, with
//! several CPUs: on CPU 0 alone): the kernel's region tree and every live space's, while the
//! guest waits with exactly those trees and tables.
#![forbid(unsafe_code)]

use mm_driver::driver::{CpuBatch, Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use shared_mm::abi::{Op, OpResult, SpaceRecord, KERNEL_SPACE};
use vm_memory::GuestMemoryMmap;

/// Where a round stands at a `Batch` hypercall.
enum RoundStep {
    /// Send these snapshot operations (the kernel's and every live space's) to take the round.
    Snapshot(Vec<Op>),
    /// The round is in: the inner driver's held-back results (by CPU), the kernel's tree and
    /// the spaces'.
    Done(Vec<(u32, Vec<OpResult>)>, SpaceSnapshot, Vec<SpaceSnapshot>),
}

/// A snapshot of the kernel and every live space after each batch of an inner driver. The
/// adapter that takes it forwards both hypercalls here with its inner driver.
#[derive(Debug, Default)]
pub struct SnapshotRound {
    /// Results of the inner driver's last batch (or round), by CPU, held back while the
    /// snapshots are taken.
    held_results: Option<Vec<(u32, Vec<OpResult>)>>,
    trees: Vec<SpaceSnapshot>,
}

impl SnapshotRound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Either starts a round (the inner driver's batch just finished with `results`), or ends
    /// the one whose snapshot operations just ran.
    fn step(
        &mut self,
        results: Vec<(u32, Vec<OpResult>)>,
        spaces: &[SpaceRecord],
    ) -> Result<RoundStep, DriverError> {
        let Some(held) = self.held_results.take() else {
            self.held_results = Some(results);
            self.trees.clear();
            let kernel = Op::Snapshot {
                space: KERNEL_SPACE,
            };
            let users = spaces.iter().map(|s| Op::Snapshot { space: s.space });
            return Ok(RoundStep::Snapshot(
                std::iter::once(kernel).chain(users).collect(),
            ));
        };
        let mut trees = std::mem::take(&mut self.trees);
        let kernel_at = trees.iter().position(|v| v.space == KERNEL_SPACE);
        let kernel = kernel_at
            .map(|i| trees.remove(i))
            .ok_or(DriverError::NoKernelSnapshot)?;
        Ok(RoundStep::Done(held, kernel, trees))
    }

    /// A `Batch` hypercall: asks for the round's snapshots, or, when they are in, hands the
    /// kernel's tree and the spaces' to `take` and then the held-back results to `inner`.
    pub fn next_batch(
        &mut self,
        inner: &mut dyn Driver,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
        take: impl FnOnce(SpaceSnapshot, Vec<SpaceSnapshot>),
    ) -> Result<Option<Vec<Op>>, DriverError> {
        match self.step(vec![(0, results.to_vec())], spaces)? {
            RoundStep::Snapshot(ops) => Ok(Some(ops)),
            RoundStep::Done(held, kernel, trees) => {
                take(kernel, trees);
                let cpu0 = held.into_iter().find(|(cpu, _)| *cpu == 0);
                inner.next_batch(mem, &cpu0.unwrap_or_default().1, spaces)
            }
        }
    }

    /// [`SnapshotRound::next_batch`] for a VM of several CPUs: the snapshots are a round of
    /// CPU 0 alone, between the inner driver's rounds.
    pub fn next_round(
        &mut self,
        inner: &mut dyn Driver,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
        take: impl FnOnce(SpaceSnapshot, Vec<SpaceSnapshot>),
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        match self.step(results.to_vec(), spaces)? {
            RoundStep::Snapshot(ops) => Ok(Some(vec![CpuBatch { cpu: 0, ops }])),
            RoundStep::Done(held, kernel, trees) => {
                take(kernel, trees);
                inner.next_round(mem, &held, spaces)
            }
        }
    }

    /// A `Snapshot` hypercall: the round's chunk while a round is in progress, else `inner`'s.
    pub fn snapshot(
        &mut self,
        inner: &mut dyn Driver,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        if self.held_results.is_none() {
            return inner.snapshot(mem, chunk);
        }
        SpaceSnapshot::collect(&mut self.trees, chunk)
    }
}
