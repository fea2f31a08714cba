//! The fuzz engine: generated operation batches for the guest MM on either backend, every
//! result checked against a host-side model and the page tables against the region trees, each
//! failure narrowed to its root cause and shrunk to a minimal reproducer that `vmm replay` runs
//! again; campaigns of parallel jobs with a shared corpus and coverage feedback. How each part
//! works: `docs/fuzzing.md`.
#![forbid(unsafe_code)]

pub mod campaign;
pub mod chi_square;
pub mod corpus;
pub mod coverage;
pub mod error;
pub mod exhaustion;
pub mod generate;
pub mod libfuzzer;
pub mod model;
pub mod narrow;
pub mod probe;
pub mod rebase;
pub mod repro;
pub mod self_check;
pub mod shrink;
pub mod uniformity;

use crate::coverage::{CoverageMap, CoverageSet};
use crate::error::FuzzError;
use bounded_io::files::FileError;
use corpus::{CorpusDir, Entry, NewEdges, Reader};
use generate::Generator;
use mm_checker::{Checked, Finding, Rule};
use mm_driver::driver::{Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_driver::stop::StopRequest;
use mm_driver::{Boot, GuestConfig, RunError};
use mm_scenario::ops::{op_name, op_to_line};
use model::Model;
use shared_mm::abi::{FaultKind, Op, OpResult, SpaceRecord, Status, KERNEL_SPACE};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uniformity::{Spending, Uniformity};
use vm_memory::GuestMemoryMmap;

/// What kind of failure a run hit; two runs fail "the same way" when these are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signature {
    /// A result differed from the model's prediction for this kind of operation.
    Mismatch { op: &'static str, status: String },
    /// An exported region list differed from the model's.
    SnapshotDiffers,
    /// Repeated `map-randomized` draws on one layout were not uniform (see [`uniformity`]).
    NotUniform,
    /// The agreement checker found this rule broken.
    Finding(Rule),
    /// The guest panicked, triple-faulted, hung or broke the protocol.
    Crash(&'static str),
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Mismatch { op, status } => {
                write!(f, "mismatch on {op} (guest said {status})")
            }
            Signature::SnapshotDiffers => f.write_str("region list differs from the model"),
            Signature::NotUniform => f.write_str("map-randomized is not uniform (chi-square)"),
            Signature::Finding(rule) => write!(f, "agreement checker: {rule}"),
            Signature::Crash(kind) => write!(f, "guest {kind}"),
        }
    }
}

/// A failure: its kind and a full description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub signature: Signature,
    pub description: String,
    /// For checker findings, every rule the failing check found (the signature is the first).
    pub rules: Vec<Rule>,
    /// For checker findings, the spaces the failing check named.
    pub spaces: Vec<u32>,
}

impl Failure {
    /// Whether this failure shows `target`: the same signature, or, for a checker finding, the
    /// same rule among those its check found (batches split differently as a sequence shrinks,
    /// so two findings of one check may come apart or together, and one defect may show under
    /// either of its rules: see [`Rule::defect`]).
    pub fn shows(&self, target: &Signature) -> bool {
        &self.signature == target
            || matches!(target, Signature::Finding(rule)
                if self.rules.iter().any(|found| found.defect() == rule.defect()))
    }
}

fn status_text(r: &OpResult) -> String {
    if r.fault == FaultKind::None {
        format!("{:?}", r.status)
    } else {
        format!("{:?} {:?}", r.status, r.fault)
    }
}

/// How often a job looks for entries that other campaigns wrote into its corpus directory.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// A job's link to a corpus directory: what it has taken from it, and how it names its finds.
struct Synced<'a> {
    dir: &'a CorpusDir,
    reader: Reader,
    /// Header lines of the entries this job writes.
    header: Vec<(String, String)>,
    last_scan: Instant,
    /// Entries taken after the first scan that another process wrote.
    picked_up: usize,
}

/// Feedback for one fuzz job: the edges it has reached (with a coverage guest) and its corpus,
/// the batches that reached new ones, which the generator mutates; with a corpus directory,
/// the corpus is also saved there and grows with what other campaigns save.
pub struct Feedback<'a> {
    map: Option<CoverageMap>,
    seen: CoverageSet,
    corpus: Vec<Vec<Op>>,
    /// The campaign-wide union, for reporting.
    global: &'a Mutex<CoverageSet>,
    synced: Option<Synced<'a>>,
    /// Why the corpus directory could not be written or read; ends the job.
    error: Option<FileError>,
}

impl<'a> Feedback<'a> {
    /// Feedback from the counters of `map`; none (only corpus entries) without one.
    pub fn new(map: Option<CoverageMap>, global: &'a Mutex<CoverageSet>) -> Self {
        Feedback {
            map,
            seen: CoverageSet::new(),
            corpus: Vec::new(),
            global,
            synced: None,
            error: None,
        }
    }

    /// Also saves the corpus in `dir`, each entry after `header`, and takes the entries already
    /// there and, every [`RESCAN_INTERVAL`], those that other campaigns add. Returns how many
    /// entries were there at the start.
    pub fn sync_with(
        &mut self,
        dir: &'a CorpusDir,
        header: Vec<(String, String)>,
    ) -> Result<usize, FileError> {
        let mut synced = Synced {
            dir,
            reader: Reader::default(),
            header,
            last_scan: Instant::now(),
            picked_up: 0,
        };
        let entries = synced.reader.scan(dir)?;
        let loaded = entries.len();
        self.synced = Some(synced);
        self.take(entries.into_iter().map(|(entry, _)| entry));
        Ok(loaded)
    }

    /// The corpus: batches that reached new edges, found here or taken from the directory.
    pub fn corpus(&self) -> &[Vec<Op>] {
        &self.corpus
    }

    /// Entries taken from the directory after the start that other campaigns wrote.
    pub fn picked_up(&self) -> usize {
        self.synced.as_ref().map_or(0, |s| s.picked_up)
    }

    /// The error that stopped the job's use of its corpus directory, if one did.
    pub fn take_error(&mut self) -> Option<FileError> {
        self.error.take()
    }

    /// Adds `entries` to the corpus, and the edges they reached (on this kernel) to those seen.
    fn take(&mut self, entries: impl IntoIterator<Item = Entry>) {
        let counters = self.map.map_or(0, |m| m.len());
        let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            for edge in entry.edges_for(counters) {
                self.seen.insert(edge);
                global.insert(edge);
            }
            self.corpus.push(entry.ops);
        }
    }

    /// Takes what other campaigns added to the directory, if the last look was long enough ago.
    fn rescan(&mut self) {
        let Some(synced) = &mut self.synced else {
            return;
        };
        if synced.last_scan.elapsed() < RESCAN_INTERVAL {
            return;
        }
        synced.last_scan = Instant::now();
        match synced.reader.scan(synced.dir) {
            Ok(entries) => {
                synced.picked_up += entries.iter().filter(|(_, ours)| !ours).count();
                self.take(entries.into_iter().map(|(entry, _)| entry));
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Reads and zeroes the counters after `batch`; keeps the batch if it reached new edges.
    fn observe(&mut self, mem: &GuestMemoryMmap, batch: &[Op]) -> Result<(), DriverError> {
        let Some(map) = self.map else {
            return Ok(());
        };
        let counters = map.read(mem)?;
        map.reset(mem)?;
        let new = self.seen.merge_edges(&counters);
        self.global
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(&counters);
        if new.is_empty() || batch.is_empty() {
            return Ok(());
        }
        self.corpus.push(batch.to_vec());
        if let Some(synced) = &mut self.synced {
            let entry = Entry {
                ops: batch.to_vec(),
                new_edges: Some(NewEdges::new(map.len(), &new)),
            };
            match synced.dir.save(&synced.header, &entry) {
                Ok(name) => synced.reader.know(name),
                Err(e) => self.error = Some(e),
            }
        }
        Ok(())
    }
}

/// Where a session's operations come from.
pub enum Source<'g, 'f> {
    /// Generated, up to a budget, optionally steered by coverage feedback.
    Generated {
        generator: &'g mut Generator,
        budget: usize,
        feedback: Option<&'g mut Feedback<'f>>,
    },
    /// A fixed list (a reproducer), sent in batches of the session's batch size.
    Fixed(VecDeque<Op>),
    /// A fixed list already cut into batches (a replay narrowing to one op: see [`narrow`]).
    Planned(VecDeque<Vec<Op>>),
}

/// Called after every batch with the number of operations it held.
pub type Progress<'p> = &'p (dyn Fn(usize) + Sync);

/// A driver that sends operations from a [`Source`] and checks every result against the model.
pub struct Session<'g, 'f, 'p> {
    source: Source<'g, 'f>,
    batch_size: usize,
    pub model: Model,
    /// Every operation sent, in order.
    pub sent: Vec<Op>,
    /// The guest's result for each checked operation of `sent`, in order.
    pub results: Vec<OpResult>,
    in_flight: Vec<Op>,
    /// Region trees received for the batch in flight's snapshot operations, in order, and how
    /// many of them its results have used.
    snapshots: Vec<SpaceSnapshot>,
    snapshots_used: usize,
    pub failure: Option<Failure>,
    /// The placement uniformity rule over this session's draws; `None` with the placement
    /// rules off.
    uniformity: Option<Uniformity>,
    progress: Option<Progress<'p>>,
    /// Where the batch sent last starts (an index into `sent`).
    last_batch: usize,
    /// Stop the guest under gdb when this op (an index into `sent`) is handed out.
    stop_at: Option<(usize, StopRequest)>,
    /// Set from outside (Ctrl-C): end at the next batch boundary.
    stop: Option<&'p AtomicBool>,
}

impl<'g, 'f, 'p> Session<'g, 'f, 'p> {
    pub fn new(source: Source<'g, 'f>, batch_size: usize, progress: Option<Progress<'p>>) -> Self {
        Session {
            source,
            batch_size: batch_size.clamp(1, shared_mm::abi::MAX_BATCH),
            model: Model::default(),
            sent: Vec::new(),
            results: Vec::new(),
            in_flight: Vec::new(),
            snapshots: Vec::new(),
            snapshots_used: 0,
            failure: None,
            uniformity: Some(Uniformity::default()),
            progress,
            last_batch: 0,
            stop_at: None,
            stop: None,
        }
    }

    /// This session, asking `stop` to stop the guest (under gdb) right after it is handed op
    /// `op` (counted from 0 over every op sent), before it runs it.
    pub fn stopping_at(self, op: usize, stop: StopRequest) -> Self {
        Session {
            stop_at: Some((op, stop)),
            ..self
        }
    }

    /// The same session, its uniformity tests spending what is left of `spending`.
    pub fn with_spending(self, spending: Spending) -> Self {
        Session {
            uniformity: Some(Uniformity::new(spending)),
            ..self
        }
    }

    /// The same session without the placement rules: no uniformity tests, and any valid
    /// `map-anywhere` placement accepted (the campaign then sends no probe either). Only to
    /// measure what the rules cost.
    pub fn without_placement_rules(self) -> Self {
        Session {
            uniformity: None,
            model: self.model.with_best_fit(false),
            ..self
        }
    }

    /// The same session, ending at the first batch boundary after `stop` is set.
    pub fn with_stop(self, stop: &'p AtomicBool) -> Self {
        Session {
            stop: Some(stop),
            ..self
        }
    }

    /// The same session, its model knowing the guest has `frames` frames to hand out (so an
    /// OutOfMemory far from that is a finding).
    pub fn with_frame_budget(mut self, frames: Option<usize>) -> Self {
        if let Some(frames) = frames {
            let best_fit = self.model.checks_best_fit();
            self.model = Model::with_frame_budget(frames).with_best_fit(best_fit);
        }
        self
    }

    /// Whether to send no more batches: a failure, a stop request, or a corpus that cannot be
    /// kept.
    fn done(&self) -> bool {
        let corpus_failed = matches!(
            &self.source,
            Source::Generated { feedback: Some(fb), .. } if fb.error.is_some()
        );
        self.failure.is_some()
            || corpus_failed
            || self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn fail(&mut self, signature: Signature, description: String) {
        self.fail_in(signature, description, Vec::new());
    }

    /// [`Self::fail`], naming the spaces the failure is about.
    fn fail_in(&mut self, signature: Signature, description: String, spaces: Vec<u32>) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                signature,
                description,
                rules: Vec::new(),
                spaces,
            });
        }
    }

    /// Checks the results of the batch in flight against the model, op by op.
    fn check_results(&mut self, results: &[OpResult]) {
        let batch = self.in_flight.clone();
        self.results.extend_from_slice(results);
        if results.len() != batch.len() {
            let why = format!(
                "guest returned {} results for {} operations",
                results.len(),
                batch.len()
            );
            return self.fail(Signature::Crash("protocol error"), why);
        }
        let first_index = self.sent.len() - batch.len();
        for (i, (op, got)) in batch.iter().zip(results).enumerate() {
            let index = first_index + i;
            if let (Op::Snapshot { space }, Status::Ok) = (op, got.status) {
                let received = self.snapshots.get(self.snapshots_used);
                self.snapshots_used += 1;
                if *space != KERNEL_SPACE {
                    let regions = received.map_or(&[][..], |s| &s.regions);
                    if let Err(why) = self.model.compare_snapshot(*space, regions) {
                        return self.fail(
                            Signature::SnapshotDiffers,
                            format!("op {index} ({}): {why}", op_to_line(op)),
                        );
                    }
                }
            }
            let uniformity = self.uniformity.as_mut();
            let biased = uniformity.and_then(|u| u.observe(op, got, &self.model));
            if let Some(m) = self.model.apply(op, got) {
                let why = format!(
                    "op {index} ({}): expected {}, got {:?}",
                    op_to_line(op),
                    m.expected,
                    m.got
                );
                return self.fail(
                    Signature::Mismatch {
                        op: op_name(op),
                        status: status_text(got),
                    },
                    why,
                );
            }
            if let Some(why) = biased {
                let why = format!("op {index} ({}): {why}", op_to_line(op));
                return self.fail_in(Signature::NotUniform, why, op.space().into_iter().collect());
            }
        }
    }

    fn next_ops(&mut self) -> Vec<Op> {
        let size = self.batch_size;
        let mut batch = Vec::with_capacity(size);
        match &mut self.source {
            Source::Generated {
                generator,
                budget,
                feedback,
            } => {
                // Aimed with the model as of the last batch; each op is checked for real when
                // its result arrives.
                let max = size.min(*budget);
                generator.start_batch();
                // A probe's draws must all see its layout: no corpus batch in between.
                if let Some(fb) = feedback.as_mut().filter(|_| !generator.probing()) {
                    fb.rescan();
                    if let Some(mut ops) = generator.from_corpus(&fb.corpus, &self.model, max) {
                        // An entry was recorded in another state, and mutation keeps its
                        // creates: replayed as they are, they pile up spaces past the
                        // generator's budget, whose regions make every later batch cost more guest time (README,
                        // Fuzzing results). The generator decides instead.
                        for op in ops.iter_mut().filter(|op| matches!(op, Op::CreateSpace)) {
                            *op = generator.next_op(&self.model);
                        }
                        *budget -= ops.len();
                        return ops;
                    }
                }
                while batch.len() < size && *budget > 0 {
                    batch.push(generator.next_op(&self.model));
                    *budget -= 1;
                }
            }
            Source::Fixed(ops) => {
                while batch.len() < size {
                    match ops.pop_front() {
                        Some(op) => batch.push(op),
                        None => break,
                    }
                }
            }
            Source::Planned(batches) => batch = batches.pop_front().unwrap_or_default(),
        }
        batch
    }
}

impl Driver for Session<'_, '_, '_> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        let first_call = self.sent.is_empty();
        if let Source::Generated {
            feedback: Some(fb), ..
        } = &mut self.source
        {
            if first_call {
                // The counters so far are the boot's: seen, but no batch's merit.
                fb.observe(mem, &[])?;
            }
        }
        if !self.in_flight.is_empty() {
            let n = self.in_flight.len();
            self.check_results(results);
            if let Source::Generated {
                feedback: Some(fb), ..
            } = &mut self.source
            {
                fb.observe(mem, &self.in_flight)?;
            }
            self.in_flight.clear();
            self.snapshots.clear();
            self.snapshots_used = 0;
            if let Some(progress) = self.progress {
                progress(n);
            }
        }
        if self.done() {
            return Ok(None);
        }
        let batch = self.next_ops();
        if batch.is_empty() {
            return Ok(None);
        }
        self.last_batch = self.sent.len();
        self.sent.extend_from_slice(&batch);
        if let Some((at, stop)) = &self.stop_at {
            if (self.sent.len() - batch.len()..self.sent.len()).contains(at) {
                stop.request(format!("before op {at} ({})", op_to_line(&self.sent[*at])));
            }
        }
        self.in_flight = batch.clone();
        Ok(Some(batch))
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        SpaceSnapshot::collect(&mut self.snapshots, chunk)
    }
}

/// What one session on one guest did.
#[derive(Debug)]
pub struct Run {
    /// Every operation sent.
    pub sent: Vec<Op>,
    /// The guest's results for the operations it finished, in order.
    pub results: Vec<OpResult>,
    pub failure: Option<Failure>,
    /// Where the last batch sent starts in `sent`: a failure showed in it.
    pub last_batch: usize,
    /// The uniformity tests' false-alarm budget, as the session left it.
    pub spending: Spending,
}

/// Runs `session` on a fresh guest; returns the operations it sent and how it failed, if it
/// did. Setup errors (no KVM, bad kernel) are returned as errors, not failures.
pub fn run_session(
    backends: &dyn Boot,
    config: &GuestConfig,
    session: Session<'_, '_, '_>,
    check: bool,
) -> Result<Run, FuzzError> {
    let mut vm = backends.boot(config)?;
    let session = session.with_frame_budget(guest_boot::boot_memory::available_frames(
        &config.boot_spec(),
    ));
    let mut driver = Checked::new(session);
    driver.stop_on_finding = true;
    let outcome = if check {
        vm.run(&mut driver)
    } else {
        vm.run(driver.inner_mut())
    };
    let findings = std::mem::take(&mut driver.findings);
    let session = driver.into_inner();
    if session.sent.is_empty() {
        // Before the first batch nothing was fuzzed: the guest cannot boot, and a campaign
        // that booted it again would fail the same way forever.
        if let Err(e) = outcome {
            return Err(FuzzError::FailedBeforeFirstBatch(e));
        }
    }
    let crash = match outcome {
        Ok(0) => None,
        Ok(status) => Some(("nonzero exit", format!("guest exited with status {status}"))),
        Err(e @ RunError::GuestPanic { .. }) => Some(("panic", e.to_string())),
        Err(e @ RunError::LockOrder { .. }) => Some(("lock order", e.to_string())),
        Err(e @ RunError::TripleFault { .. }) => Some(("triple fault", e.to_string())),
        Err(e @ RunError::Timeout { .. }) => Some(("hang", e.to_string())),
        Err(
            e @ (RunError::GuestHalted { .. } | RunError::GuestProtocol(_) | RunError::Driver(_)),
        ) => Some(("protocol error", e.to_string())),
        Err(setup) => return Err(FuzzError::Run(setup)),
    };
    let failure = failure_of(crash, session.failure, &findings);
    Ok(Run {
        last_batch: session.last_batch,
        spending: session
            .uniformity
            .as_ref()
            .map_or_else(Spending::default, Uniformity::spending),
        sent: session.sent,
        results: session.results,
        failure,
    })
}

/// How a session failed: its guest's crash (`kind`, and why), its own failure (a model
/// mismatch), or the checker's findings. A finding the flush trace showed before the guest
/// failed in the same batch (a frame that is not RAM, allocated and then written) is the cause:
/// the failure is the finding, and the crash follows in its description.
fn failure_of(
    crash: Option<(&'static str, String)>,
    own: Option<Failure>,
    findings: &[(usize, Finding)],
) -> Option<Failure> {
    let found = |then: Option<String>| {
        let lines = findings.iter().map(|(_, f)| f.to_string()).chain(then);
        Failure {
            signature: Signature::Finding(findings[0].1.rule),
            description: lines.collect::<Vec<_>>().join("\n"),
            rules: findings.iter().map(|(_, f)| f.rule).collect(),
            spaces: findings.iter().map(|(_, f)| f.space).collect(),
        }
    };
    match (crash, own) {
        (Some((_, why)), _) if !findings.is_empty() => {
            Some(found(Some(format!("then the guest failed: {why}"))))
        }
        (Some((kind, why)), _) => Some(Failure {
            signature: Signature::Crash(kind),
            description: why,
            rules: Vec::new(),
            spaces: Vec::new(),
        }),
        (None, Some(own)) => Some(own),
        (None, None) if !findings.is_empty() => Some(found(None)),
        (None, None) => None,
    }
}

/// Replays `ops` in batches of `batch`, with the agreement checker after each if `check`, on a
/// fresh guest. Returns the failure and how many operations had run when it showed (the failing
/// prefix, to the end of its batch). A batch of 1 pins a failure to its operation.
pub fn replay(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    batch: usize,
    check: bool,
) -> Result<Option<(Failure, usize)>, FuzzError> {
    let run = replay_run(backends, config, ops, batch, check)?;
    let prefix = run.sent.len();
    Ok(run.failure.map(|f| (f, prefix)))
}

/// [`replay`], returning the whole run: what was sent, the results and the failure.
pub fn replay_run(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    batch: usize,
    check: bool,
) -> Result<Run, FuzzError> {
    let session = Session::new(Source::Fixed(ops.iter().copied().collect()), batch, None);
    run_session(backends, config, session, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_the_trace_showed_before_the_guest_failed_is_the_cause() {
        let finding = Finding {
            space: KERNEL_SPACE,
            rule: Rule::FrameProvenance,
            va: None,
            pte: None,
            region: None,
            detail: "frame 0x34f000 lies in the kernel image".into(),
            events: Vec::new(),
        };
        let panic = || Some(("panic", "guest panicked at alloc.rs:553:9".to_string()));
        let cause = failure_of(panic(), None, &[(9, finding)]).expect("a failure");
        assert_eq!(cause.signature, Signature::Finding(Rule::FrameProvenance));
        assert_eq!(
            cause.description,
            "kernel [frame-provenance]: frame 0x34f000 lies in the kernel image\n\
             then the guest failed: guest panicked at alloc.rs:553:9"
        );
        let alone = failure_of(panic(), None, &[]).expect("a failure");
        assert_eq!(alone.signature, Signature::Crash("panic"));
        assert!(failure_of(None, None, &[]).is_none());
    }
}
