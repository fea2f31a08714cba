//! What the host knows of the guest MM while gdb holds the guest stopped: the live spaces and
//! their CR3s from the last `Batch` hypercall, and every region tree from a snapshot round the
//! [`Observed`] driver takes after each batch, and the flush trace replayed so far. The page
//! tables themselves are never kept: the monitor commands walk them live.
#![forbid(unsafe_code)]

use super::snapshot_round::SnapshotRound;
use mm_checker::coherence::Coherence;
use mm_checker::{FrameReports, Refs};
use mm_driver::driver::{
    CpuBatch, Driver, DriverError, FramesChunk, FramesPart, SnapshotChunk, SpaceSnapshot,
};
use shared_mm::abi::{Op, OpResult, SpaceRecord, KERNEL_SPACE};
use shared_mm::trace::TraceRecord;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

/// The MM as of the last batch boundary.
#[derive(Default)]
pub struct MmView {
    /// `Batch` hypercalls served so far.
    pub batches: u64,
    /// The live user spaces and their CR3s, as the guest reported them with its last batch.
    pub spaces: Vec<SpaceRecord>,
    /// The kernel's region tree from the last snapshot round.
    pub kernel: Option<SpaceSnapshot>,
    /// Every live user space's tree from the same round, in the order the guest listed them.
    pub trees: Vec<SpaceSnapshot>,
    /// The batch after which that round was taken.
    pub trees_at: u64,
    /// The flush trace replayed against the TLB model, up to the last event the host drained
    /// (`None` until the first); `monitor tlb` adds what the guest's buffer holds beyond it.
    pub tlb: Option<Coherence>,
    /// The trace grew past what the replay may track, so `tlb` stopped following it.
    pub tlb_lost: bool,
    /// The reference counts of frames held more than once, from the last kernel frame report.
    pub refs: Refs,
}

impl MmView {
    /// The tree of `space` from the last round.
    pub fn tree(&self, space: u32) -> Option<&SpaceSnapshot> {
        self.kernel
            .iter()
            .chain(&self.trees)
            .find(|tree| tree.space == space)
    }
}

/// The view one gdb session shares between its driver and its monitor commands.
pub type SharedView = Arc<Mutex<MmView>>;

/// Wraps the driver of a debugged guest: everything passes through unchanged, and after each
/// of its batches the kernel and every live space are snapshotted into the shared [`MmView`],
/// so `monitor regions` and `monitor check` see the trees of the last batch boundary.
pub struct Observed<'d> {
    inner: &'d mut dyn Driver,
    round: SnapshotRound,
    view: SharedView,
    /// The kernel frame report being received.
    frames: FrameReports,
}

impl<'d> Observed<'d> {
    pub fn new(inner: &'d mut dyn Driver, view: SharedView) -> Self {
        Observed {
            inner,
            round: SnapshotRound::new(),
            view,
            frames: FrameReports::default(),
        }
    }
}

impl Observed<'_> {
    /// A batch (or round) boundary: counts it and keeps the live spaces; returns what keeps
    /// the trees of the snapshot round.
    fn boundary(&self, spaces: &[SpaceRecord]) -> impl FnOnce(SpaceSnapshot, Vec<SpaceSnapshot>) {
        let lock = |view: &SharedView| {
            let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
            view.batches += 1;
            view.spaces = spaces.to_vec();
        };
        lock(&self.view);
        let view = self.view.clone();
        move |kernel, trees| {
            let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
            view.trees_at = view.batches;
            view.kernel = Some(kernel);
            view.trees = trees;
        }
    }
}

impl Driver for Observed<'_> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        let keep_trees = self.boundary(spaces);
        self.round
            .next_batch(self.inner, mem, results, spaces, keep_trees)
    }

    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        let keep_trees = self.boundary(spaces);
        self.round
            .next_round(self.inner, mem, results, spaces, keep_trees)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.round.snapshot(self.inner, mem, chunk)
    }

    fn frames(&mut self, mem: &GuestMemoryMmap, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        if chunk.space == KERNEL_SPACE && chunk.part != FramesPart::Owned {
            if chunk.part == FramesPart::Allocated && chunk.first == 0 {
                self.frames = FrameReports::default();
            }
            // The checker inside reports a malformed report; this copy only stops following.
            let whole = chunk.first + chunk.words.len() as u64 == chunk.total;
            if self.frames.collect(chunk).is_ok() && chunk.part == FramesPart::Shared && whole {
                let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
                view.refs = self.frames.shared_frames().clone();
            }
        }
        self.inner.frames(mem, chunk)
    }

    fn trace(&mut self, mem: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            let ram = GuestMemoryBackend::last_addr(mem).0.saturating_add(1);
            if !view.tlb_lost {
                let tlb = view.tlb.get_or_insert_with(|| Coherence::new(ram));
                // The inner driver's own replay reports a trace too large to follow; this
                // one only stops following it.
                if tlb.apply_all(records).is_err() {
                    view.tlb = None;
                    view.tlb_lost = true;
                }
            }
        }
        self.inner.trace(mem, records)
    }
}
