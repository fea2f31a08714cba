//! What a guest may report between two batches: region trees and frame reports only of the
//! spaces the host asked about in the batch it handed out, each once, and no more than the
//! guest's RAM could hold ([`ReportBounds`]). Every byte of a report is attacker-controlled, so
//! the KVM run loop puts this adapter between the hypercalls and every driver: a report past a
//! bound ends the run (a protocol error, exit 103) before any driver stores it.
#![forbid(unsafe_code)]

mod bounds;

pub use bounds::ReportBounds;

use mm_driver::driver::{CpuBatch, Driver, DriverError, FramesChunk, FramesPart, SnapshotChunk};
use shared_mm::abi::{Op, OpResult, SpaceRecord, KERNEL_SPACE, MAX_SPACES};
use shared_mm::trace::TraceRecord;
use std::collections::{BTreeMap, VecDeque};
use vm_memory::GuestMemoryMmap;

/// What a report is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Snapshot,
    Frames(FramesPart),
}

/// The report being received: of `space`, `received` of the `total` it announced.
#[derive(Clone, Copy, Debug)]
struct Receiving {
    space: u32,
    part: Part,
    total: u64,
    received: u64,
}

/// `total` of `what`, announced by a report of `space`, against its `bound`.
fn check(what: &'static str, space: u32, total: u64, bound: u64) -> Result<(), DriverError> {
    if total > bound {
        return Err(DriverError::ReportPastBound {
            what,
            space,
            total,
            bound,
        });
    }
    Ok(())
}

/// A [`Driver`] adapter that passes on only the reports the batch in flight asked for, within
/// the guest's [`ReportBounds`].
pub struct ReportGuard<'d> {
    inner: &'d mut dyn Driver,
    bounds: ReportBounds,
    /// The spaces whose trees the batch in flight asked for, in order, not yet sent.
    snapshots: VecDeque<u32>,
    /// The frame report parts the batch in flight asked for, not yet sent.
    frames: Vec<(u32, FramesPart)>,
    receiving: Option<Receiving>,
    /// The length of the last owned-frame report of each live space and the kernel: what the
    /// checker keeps between checks.
    owned: BTreeMap<u32, u64>,
}

impl<'d> ReportGuard<'d> {
    pub fn new(inner: &'d mut dyn Driver, bounds: ReportBounds) -> Self {
        ReportGuard {
            inner,
            bounds,
            snapshots: VecDeque::new(),
            frames: Vec::new(),
            receiving: None,
            owned: BTreeMap::new(),
        }
    }

    /// What `ops` ask the guest to report before the next batch.
    fn expect(&mut self, ops: &[Op]) {
        self.snapshots.clear();
        self.frames.clear();
        for op in ops {
            match *op {
                Op::Snapshot { space } => self.snapshots.push_back(space),
                Op::Frames { space } => {
                    self.frames.push((space, FramesPart::Owned));
                    if space == KERNEL_SPACE {
                        self.frames.push((space, FramesPart::Allocated));
                        self.frames.push((space, FramesPart::Shared));
                    }
                }
                _ => {}
            }
        }
    }

    /// A tree of `space` with `total` regions starts: it must be the next one asked for (those
    /// before it were not sent: no such space), and no larger than the guest's heap holds.
    fn start_snapshot(&mut self, space: u32, total: u64) -> Result<(), DriverError> {
        let asked = self.snapshots.iter().position(|&s| s == space);
        let at = asked.ok_or(DriverError::UnrequestedSnapshot { space })?;
        self.snapshots.drain(..=at);
        check("snapshot regions", space, total, self.bounds.regions())
    }

    /// A frame report part of `space` with `total` words starts: it must be asked for and not
    /// sent yet, within its bound.
    fn start_frames(
        &mut self,
        space: u32,
        part: FramesPart,
        total: u64,
    ) -> Result<(), DriverError> {
        let asked = self.frames.iter().position(|&asked| asked == (space, part));
        let at = asked.ok_or(DriverError::UnrequestedFrames { space })?;
        self.frames.swap_remove(at);
        let (what, bound, kept) = match part {
            FramesPart::Allocated => (
                "allocated-frame bitmap words",
                self.bounds.bitmap_words(),
                0,
            ),
            FramesPart::Shared => ("shared-frame records", self.bounds.shared_words(), 0),
            FramesPart::Owned => {
                self.owned.remove(&space);
                let kept: u64 = self.owned.values().sum();
                (
                    "owned-frame records of all spaces",
                    self.bounds.owned_words(),
                    kept,
                )
            }
        };
        check(what, space, total.saturating_add(kept), bound)?;
        if part == FramesPart::Owned {
            self.owned.insert(space, total);
        }
        Ok(())
    }

    /// One chunk of a report: a chunk at 0 starts one (see the two `start_` functions), a later
    /// chunk must continue the report in progress exactly, and no report may grow past the
    /// total it announced.
    fn take(
        &mut self,
        space: u32,
        part: Part,
        first: u64,
        total: u64,
        len: usize,
    ) -> Result<(), DriverError> {
        let (out_of_order, too_large) = match part {
            Part::Snapshot => (
                DriverError::SnapshotOutOfOrder { space, first },
                DriverError::SnapshotTooLarge { space, total },
            ),
            Part::Frames(_) => (
                DriverError::FramesOutOfOrder { space, first },
                DriverError::FramesTooLarge { space, total },
            ),
        };
        if first == 0 {
            match part {
                Part::Snapshot => self.start_snapshot(space, total)?,
                Part::Frames(frames) => self.start_frames(space, frames, total)?,
            }
            self.receiving = Some(Receiving {
                space,
                part,
                total,
                received: 0,
            });
        }
        let Some(at) = self
            .receiving
            .as_mut()
            .filter(|r| (r.space, r.part, r.total, r.received) == (space, part, total, first))
        else {
            return Err(out_of_order);
        };
        at.received = first.saturating_add(len as u64);
        if at.received > total {
            return Err(too_large);
        }
        Ok(())
    }
}

impl ReportGuard<'_> {
    /// A new batch (or round) starts with the guest reporting `spaces`: what the last one
    /// asked for is over.
    fn new_batch(&mut self, spaces: &[SpaceRecord]) -> Result<(), DriverError> {
        if spaces.len() > MAX_SPACES {
            return Err(DriverError::TooManySpaces {
                count: spaces.len(),
            });
        }
        let live = |s: &u32| *s == KERNEL_SPACE || spaces.iter().any(|r| r.space == *s);
        self.owned.retain(|s, _| live(s));
        self.receiving = None;
        Ok(())
    }
}

impl Driver for ReportGuard<'_> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.new_batch(spaces)?;
        let next = self.inner.next_batch(mem, results, spaces)?;
        self.expect(next.as_deref().unwrap_or_default());
        Ok(next)
    }

    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        self.new_batch(spaces)?;
        let next = self.inner.next_round(mem, results, spaces)?;
        // Only CPU 0 reports snapshots and frames.
        let cpu0 = next.iter().flatten().find(|b| b.cpu == 0);
        self.expect(cpu0.map_or(&[][..], |b| &b.ops));
        Ok(next)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        let len = chunk.regions.len();
        self.take(chunk.space, Part::Snapshot, chunk.first, chunk.total, len)?;
        self.inner.snapshot(mem, chunk)
    }

    fn frames(&mut self, mem: &GuestMemoryMmap, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        let part = Part::Frames(chunk.part);
        self.take(
            chunk.space,
            part,
            chunk.first,
            chunk.total,
            chunk.words.len(),
        )?;
        self.inner.frames(mem, chunk)
    }

    fn trace(&mut self, mem: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        self.inner.trace(mem, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_driver::driver::Script;
    use shared_mm::abi::RegionRecord;
    use vm_memory::GuestAddress;

    const RAM: u64 = 32 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn space(space: u32) -> SpaceRecord {
        SpaceRecord { space, cr3: 0 }
    }

    fn frames(space: u32, part: FramesPart, total: u64, words: &[u64]) -> FramesChunk<'_> {
        FramesChunk {
            space,
            part,
            first: 0,
            total,
            words,
        }
    }

    fn snapshot(space: u32, first: u64, total: u64, regions: &[RegionRecord]) -> SnapshotChunk<'_> {
        SnapshotChunk {
            space,
            cr3: 0,
            first,
            total,
            regions,
        }
    }

    /// A guard over `script`, its first batch handed out with `live` spaces.
    fn guarded<'s>(
        script: &'s mut Script,
        mem: &GuestMemoryMmap,
        live: &[SpaceRecord],
    ) -> ReportGuard<'s> {
        let mut guard = ReportGuard::new(script, ReportBounds::for_ram(RAM));
        guard.next_batch(mem, &[], live).expect("the first batch");
        guard
    }

    #[test]
    fn only_the_reports_asked_for_pass_each_once() {
        let mem = mem();
        let asked = vec![Op::Snapshot { space: 1 }, Op::Frames { space: 1 }];
        let mut script = Script::new(vec![asked]);
        let mut guard = guarded(&mut script, &mem, &[space(1)]);
        let region = RegionRecord {
            base: 0x1000,
            size: 0x1000,
            access: 0xb,
            backed: 1,
            object: 0,
            name: RegionRecord::name_field("anon"),
        };
        assert_eq!(
            guard.snapshot(&mem, snapshot(2, 0, 1, &[region])),
            Err(DriverError::UnrequestedSnapshot { space: 2 })
        );
        guard.snapshot(&mem, snapshot(1, 0, 2, &[region])).unwrap();
        guard.snapshot(&mem, snapshot(1, 1, 2, &[region])).unwrap();
        // The tree was sent; a restart at 0 is a second one nobody asked for.
        assert_eq!(
            guard.snapshot(&mem, snapshot(1, 0, 1, &[region])),
            Err(DriverError::UnrequestedSnapshot { space: 1 })
        );
        assert_eq!(
            guard.frames(&mem, frames(1, FramesPart::Allocated, 1, &[0])),
            Err(DriverError::UnrequestedFrames { space: 1 })
        );
        guard
            .frames(&mem, frames(1, FramesPart::Owned, 1, &[0]))
            .unwrap();
        assert_eq!(
            guard.frames(&mem, frames(1, FramesPart::Owned, 1, &[0])),
            Err(DriverError::UnrequestedFrames { space: 1 })
        );
        assert_eq!(script.snapshots.len(), 1, "one tree reached the driver");
    }

    #[test]
    fn a_report_past_what_the_guest_s_ram_holds_ends_the_run() {
        let mem = mem();
        let bounds = ReportBounds::for_ram(RAM);
        let asked = vec![
            Op::Snapshot {
                space: KERNEL_SPACE,
            },
            Op::Frames {
                space: KERNEL_SPACE,
            },
        ];
        let mut script = Script::new(vec![asked]);
        let mut guard = guarded(&mut script, &mem, &[]);
        let too_many = bounds.regions() + 1;
        let err = guard
            .snapshot(&mem, snapshot(KERNEL_SPACE, 0, too_many, &[]))
            .unwrap_err();
        assert!(
            matches!(err, DriverError::ReportPastBound { total, .. } if total == too_many),
            "{err}"
        );
        assert!(err.is_guest_fault());
        let bitmap = frames(KERNEL_SPACE, FramesPart::Allocated, 1 << 23, &[]);
        assert!(matches!(
            guard.frames(&mem, bitmap),
            Err(DriverError::ReportPastBound { bound: 128, .. })
        ));
    }

    /// The bound is the heap's, per tree: a batch may ask for the same large tree twice.
    #[test]
    fn each_tree_asked_for_may_be_as_large_as_the_heap_holds() {
        let mem = mem();
        let most = ReportBounds::for_ram(RAM).regions();
        let twice = vec![Op::Snapshot { space: 1 }, Op::Snapshot { space: 1 }];
        let mut script = Script::new(vec![twice]);
        let mut guard = guarded(&mut script, &mem, &[space(1)]);
        for _ in 0..2 {
            guard.snapshot(&mem, snapshot(1, 0, most, &[])).unwrap();
        }
    }

    #[test]
    fn owned_reports_kept_for_live_spaces_share_one_bound() {
        let mem = mem();
        let bound = ReportBounds::for_ram(RAM).owned_words();
        let ask = |spaces: &[u32]| spaces.iter().map(|&space| Op::Frames { space }).collect();
        let mut script = Script::new(vec![ask(&[1]), ask(&[2]), ask(&[3])]);
        let mut guard = guarded(&mut script, &mem, &[space(1), space(2)]);
        guard
            .frames(&mem, frames(1, FramesPart::Owned, bound - 10, &[]))
            .unwrap();
        // Space 1's report stays kept while it lives: space 2 may add no more than 10.
        guard.next_batch(&mem, &[], &[space(1), space(2)]).unwrap();
        assert!(matches!(
            guard.frames(&mem, frames(2, FramesPart::Owned, 11, &[])),
            Err(DriverError::ReportPastBound { total, .. }) if total == bound + 1
        ));
        // Once space 1 is gone, its report no longer counts.
        guard.next_batch(&mem, &[], &[space(3)]).unwrap();
        guard
            .frames(&mem, frames(3, FramesPart::Owned, bound, &[]))
            .unwrap();
    }

    #[test]
    fn more_live_spaces_than_can_exist_is_refused() {
        let mem = mem();
        let mut script = Script::new(Vec::new());
        let mut guard = ReportGuard::new(&mut script, ReportBounds::for_ram(RAM));
        let spaces: Vec<SpaceRecord> = (1..=MAX_SPACES as u32 + 1).map(space).collect();
        assert_eq!(
            guard.next_batch(&mem, &[], &spaces),
            Err(DriverError::TooManySpaces {
                count: MAX_SPACES + 1
            })
        );
    }
}
