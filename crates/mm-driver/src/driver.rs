//! The Driver trait: what hands the guest MM its work and receives the results, whichever
//! backend runs it; plus the snapshot collector drivers share and the simplest drivers.
#![forbid(unsafe_code)]

use shared_mm::abi::{Op, OpResult, RegionRecord, SpaceRecord, Status};
use shared_mm::boot_info::BootInfo;
use shared_mm::trace::TraceRecord;
use std::collections::VecDeque;
use std::fmt;
use vm_memory::GuestMemoryMmap;

/// Why a driver cannot go on. The guest's part of the protocol is attacker-controlled, so most
/// of these are the guest breaking it ([`DriverError::is_guest_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// The guest sent a number of results that is not the number of operations it was given.
    ResultCount { got: usize, sent: usize },
    /// A snapshot chunk that does not continue the snapshot in progress.
    SnapshotOutOfOrder { space: u32, first: u64 },
    /// A snapshot with more regions than it announced.
    SnapshotTooLarge { space: u32, total: u64 },
    /// A snapshot nothing asked for.
    UnrequestedSnapshot { space: u32 },
    /// A frame report (or a part of one) nothing asked for.
    UnrequestedFrames { space: u32 },
    /// A report announcing more than the guest's RAM could hold (the kvm backend's report
    /// guard bounds each by RAM size): `total` of `what`, at most `bound`.
    ReportPastBound {
        what: &'static str,
        space: u32,
        total: u64,
        bound: u64,
    },
    /// More live spaces than the ABI allows.
    TooManySpaces { count: usize },
    /// A snapshot of the kernel was asked for and none came.
    NoKernelSnapshot,
    /// The guest could not export a snapshot it was asked for.
    SnapshotFailed { status: Status },
    /// The flush trace asked for more state than the guest's RAM can map.
    Trace(TraceTooLarge),
    /// A frame report chunk that does not continue the part in progress.
    FramesOutOfOrder { space: u32, first: u64 },
    /// A frame report larger than it announced.
    FramesTooLarge { space: u32, total: u64 },
    /// A frame report word that is not a frame with a known use.
    MalformedFrameRecord { space: u32, word: u64 },
    /// The guest exited before the driver's work was done.
    ExitedEarly { status: u32 },
    /// The guest's coverage counters could not be read or reset.
    Coverage(String),
    /// The driver's round is not one the VM can run (a host bug): `why`.
    BadRound(String),
}

impl DriverError {
    /// Whether the guest broke the protocol (exit 103), rather than the host failing (exit 2).
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, DriverError::Coverage(_) | DriverError::BadRound(_))
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::ResultCount { got, sent } => {
                write!(f, "guest returned {got} results for {sent} operations")
            }
            DriverError::SnapshotOutOfOrder { space, first } => write!(
                f,
                "snapshot chunk at {first} for space {space} does not continue the snapshot in progress"
            ),
            DriverError::SnapshotTooLarge { space, total } => write!(
                f,
                "snapshot of space {space} is larger than the {total} regions it announced"
            ),
            DriverError::UnrequestedSnapshot { space } => {
                write!(f, "unrequested snapshot of space {space}")
            }
            DriverError::UnrequestedFrames { space } => {
                write!(f, "unrequested frame report of space {space}")
            }
            DriverError::ReportPastBound {
                what,
                space,
                total,
                bound,
            } => write!(
                f,
                "a report of space {space} makes {total} {what}, more than this guest's RAM can \
                 hold ({bound} at most)"
            ),
            DriverError::TooManySpaces { count } => write!(
                f,
                "the guest reports {count} live spaces; at most {} can exist",
                shared_mm::abi::MAX_SPACES
            ),
            DriverError::NoKernelSnapshot => f.write_str("the guest sent no kernel snapshot"),
            DriverError::SnapshotFailed { status } => {
                write!(f, "the guest could not export a snapshot: {status:?}")
            }
            DriverError::Trace(e) => write!(f, "{e}"),
            DriverError::FramesOutOfOrder { space, first } => write!(
                f,
                "frame report chunk at {first} for space {space} does not continue the part in progress"
            ),
            DriverError::FramesTooLarge { space, total } => write!(
                f,
                "frame report of space {space} is larger than the {total} words it announced"
            ),
            DriverError::MalformedFrameRecord { space, word } => {
                write!(f, "frame report of space {space} holds a malformed word {word:#x}")
            }
            DriverError::ExitedEarly { status } => write!(
                f,
                "the guest exited with status {status} before the driver's work was done"
            ),
            DriverError::Coverage(why) => write!(f, "coverage counters: {why}"),
            DriverError::BadRound(why) => write!(f, "a round the VM cannot run: {why}"),
        }
    }
}

impl std::error::Error for DriverError {}

impl From<TraceTooLarge> for DriverError {
    fn from(e: TraceTooLarge) -> Self {
        DriverError::Trace(e)
    }
}

/// The trace asked for more state than a guest of this size can honestly need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceTooLarge {
    pub limit: usize,
}

impl fmt::Display for TraceTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flush trace tracks more than {} translations, more than guest RAM can map",
            self.limit
        )
    }
}

impl std::error::Error for TraceTooLarge {}

/// One `Snapshot` hypercall's worth of a region tree: regions `first..first + regions.len()`
/// of the `total` that `space` (whose page tables are rooted at `cr3`) holds.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotChunk<'a> {
    pub space: u32,
    pub cr3: u64,
    pub first: u64,
    pub total: u64,
    pub regions: &'a [RegionRecord],
}

/// Which part of a frame report a [`FramesChunk`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramesPart {
    /// The allocator's bitmap of allocated frames (words, frame 0 first).
    Allocated,
    /// [`FrameRecord`](shared_mm::abi::FrameRecord) words of the frames the space owns.
    Owned,
    /// [`FrameRefs`](shared_mm::abi::FrameRefs) words of the frames held more than once.
    Shared,
}

/// One `Frames` hypercall's worth of a frame report: words `first..first + words.len()` of the
/// `total` of `part` for `space`.
#[derive(Clone, Copy, Debug)]
pub struct FramesChunk<'a> {
    pub space: u32,
    pub part: FramesPart,
    pub first: u64,
    pub total: u64,
    pub words: &'a [u64],
}

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
    /// new snapshot; a later chunk must continue the last one exactly (same space, `first` the
    /// number of regions received so far), and no snapshot may grow past the `total` it
    /// announced. (How much a guest may announce is bounded by its RAM, before any driver sees
    /// it: the kvm backend's report guard.)
    pub fn collect(
        list: &mut Vec<SpaceSnapshot>,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        let SnapshotChunk {
            space,
            cr3,
            first,
            total,
            regions,
        } = chunk;
        if first == 0 {
            list.push(SpaceSnapshot {
                space,
                cr3,
                reported_count: total,
                regions: Vec::new(),
            });
        }
        let Some(snapshot) = list.last_mut().filter(|s| {
            s.space == space && s.regions.len() as u64 == first && s.reported_count == total
        }) else {
            return Err(DriverError::SnapshotOutOfOrder { space, first });
        };
        if first.saturating_add(regions.len() as u64) > total {
            return Err(DriverError::SnapshotTooLarge { space, total });
        }
        snapshot.regions.extend_from_slice(regions);
        Ok(())
    }
}

/// The results CPU `cpu` returned in a round's `results` (none if it ran no batch).
pub fn results_of(results: &[(u32, Vec<OpResult>)], cpu: u32) -> &[OpResult] {
    results
        .iter()
        .find(|(c, _)| *c == cpu)
        .map_or(&[][..], |(_, r)| r.as_slice())
}

/// One CPU's batch of a round: what CPU `cpu` runs while the round's other CPUs run theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuBatch {
    pub cpu: u32,
    pub ops: Vec<Op>,
}

/// What the host does with the guest's MM work: hands out operation batches, receives results
/// and region-tree snapshots. Implemented by the self-check scenario, the fuzzer and the tests;
/// served by either backend.
pub trait Driver {
    /// The guest boots with `info`, the boot info the host wrote (its memory map says which
    /// RAM the MM may use). Called once, before the first batch; the default ignores it.
    fn booted(&mut self, _info: &BootInfo) {}

    /// The guest finished the previous batch (`results`, empty on the first call) and reports
    /// its live address spaces. Return the next batch, or `None` when there is no more work.
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError>;

    /// With several CPUs, work comes in rounds: up to one batch per CPU, run at the same time.
    /// Every CPU of the last round returned its results (`results`: one entry per batch of the
    /// last round, by CPU; empty before the first), and the guest reports its live spaces. All
    /// CPUs are quiescent now. Return the next round (a CPU at most once; snapshot and frame
    /// requests only in CPU 0's batch, alone in its round), or `None` when there is no more
    /// work. The default hands every batch of [`Driver::next_batch`] to CPU 0.
    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        let next = self.next_batch(mem, results_of(results, 0), spaces)?;
        Ok(next.map(|ops| vec![CpuBatch { cpu: 0, ops }]))
    }

    /// A chunk of a region tree (see [`SpaceSnapshot::collect`]). The default ignores it.
    fn snapshot(
        &mut self,
        _mem: &GuestMemoryMmap,
        _chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// A chunk of a frame report. The default ignores it.
    fn frames(
        &mut self,
        _mem: &GuestMemoryMmap,
        _chunk: FramesChunk<'_>,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// The next events of the guest's flush trace, in order (every event since boot reaches the
    /// driver exactly once). The default ignores them.
    fn trace(
        &mut self,
        _mem: &GuestMemoryMmap,
        _records: &[TraceRecord],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// Whether this driver wants [`Driver::written`]: a backend keeps its record of the frames
    /// the guest writes (which costs the kvm backend a write-protect fault per page and round)
    /// only for a driver that asks. The default does not.
    fn wants_written(&self) -> bool {
        false
    }

    /// The frames of guest RAM (4 KiB-aligned guest-physical addresses, ascending) the guest
    /// wrote since the last call, or since it booted: the backend's own record (KVM's dirty
    /// log, the simulated machine's), which the guest can neither forge nor skip. A backend
    /// that keeps one calls this before every [`Driver::next_batch`] of a driver that
    /// [wants it](Driver::wants_written), and may call it more often; the default ignores it.
    fn written(&mut self, _frames: &[u64]) {}
}

/// A driver with no work: the guest's agent loop ends at once.
pub struct IdleDriver;

impl Driver for IdleDriver {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        _: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
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
    ) -> Result<Option<Vec<Op>>, DriverError> {
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
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        SpaceSnapshot::collect(&mut self.snapshots, chunk)
    }
}

/// A driver that sends fixed rounds of per-CPU batches and keeps every round's results: the
/// several-CPU counterpart of [`Script`], for tests and scenarios that place operations on CPUs.
#[derive(Default)]
pub struct RoundScript {
    rounds: VecDeque<Vec<CpuBatch>>,
    in_flight: bool,
    /// Results, one entry per round sent: each batch's results by CPU.
    pub results: Vec<Vec<(u32, Vec<OpResult>)>>,
    /// Trace records received, in order.
    pub trace: Vec<TraceRecord>,
}

impl RoundScript {
    pub fn new(rounds: Vec<Vec<CpuBatch>>) -> Self {
        RoundScript {
            rounds: rounds.into(),
            ..RoundScript::default()
        }
    }
}

impl Driver for RoundScript {
    /// One CPU: the rounds' batches in order, each on CPU 0.
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        if self.in_flight {
            self.results.push(vec![(0, results.to_vec())]);
        }
        let next = self.rounds.pop_front();
        self.in_flight = next.is_some();
        Ok(next.map(|round| round.into_iter().flat_map(|b| b.ops).collect()))
    }

    fn next_round(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        if self.in_flight {
            self.results.push(results.to_vec());
        }
        let next = self.rounds.pop_front();
        self.in_flight = next.is_some();
        Ok(next)
    }

    fn trace(&mut self, _: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        self.trace.extend_from_slice(records);
        Ok(())
    }
}
