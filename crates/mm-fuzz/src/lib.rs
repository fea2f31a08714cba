//! The fuzz engine: generated operation batches for the guest MM on either backend, every
//! result checked against a host-side model and the page tables against the region trees, each
//! failure narrowed to its root cause and shrunk to a minimal reproducer that `vmm replay` runs
//! again; campaigns of parallel jobs with a shared corpus and coverage feedback. How each part
//! works: `docs/fuzzing.md`.
#![forbid(unsafe_code)]

pub mod campaign;
pub mod chi_square;
pub mod confirm;
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
pub mod reduce_rounds;
pub mod repro;
pub mod self_check;
pub mod shrink;
pub mod shrink_rounds;
pub mod uniformity;

use crate::coverage::{CoverageMap, CoverageSet};
use crate::error::FuzzError;
use bounded_io::files::FileError;
use corpus::{CorpusDir, Entry, NewEdges, Reader};
use generate::Generator;
use mm_checker::{Checked, Finding, Rule};
use mm_driver::driver::{CpuBatch, Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_driver::stop::StopRequest;
use mm_driver::{Boot, GuestConfig, RunError};
use mm_scenario::ops::{op_name, op_to_line};
use model::Model;
use shared_mm::abi::{FaultKind, Op, OpResult, SpaceRecord, Status, KERNEL_SPACE, MAX_BATCH};
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

/// SplitMix64's finalizer: a well-mixed hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    /// Fixed rounds, each op on the CPU it names (a reproducer of several CPUs, replayed as it
    /// was found).
    Rounds(VecDeque<Vec<CpuBatch>>),
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
    /// The guest's CPUs: with several, each batch runs as a round ([`Session::split`]).
    cpus: u32,
    /// The CPU that ran each op of `sent`.
    pub sent_cpus: Vec<u32>,
    /// Where each batch (a round, with several CPUs) starts in `sent`.
    pub batch_starts: Vec<usize>,
    /// Whether some batches race a touch against an unmap or protect of its page on another
    /// CPU ([`Session::race`]): on the sim, whose scheduler chooses the interleaving.
    races: bool,
    /// Rounds of the current batch still to hand out.
    queued: VecDeque<Vec<CpuBatch>>,
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
            cpus: 1,
            sent_cpus: Vec::new(),
            batch_starts: Vec::new(),
            races: false,
            queued: VecDeque::new(),
        }
    }

    /// The same session racing touches against unmaps and protects of their pages in one
    /// batch of four (with several CPUs): for the sim, where every such round replays exactly.
    pub fn with_races(self, races: bool) -> Self {
        Session { races, ..self }
    }

    /// The same session for a guest of `cpus` CPUs: each batch runs as a round, its ops spread
    /// over the CPUs where that keeps the model's verdicts exact (`Session::split`).
    pub fn on_cpus(self, cpus: u32) -> Self {
        Session {
            cpus: cpus.max(1),
            ..self
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
        if self.judge_race(&batch, results).is_some() {
            return;
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
            Source::Rounds(_) => unreachable!("rounds are handed out whole: Session::next_round"),
        }
        batch
    }

    /// With races on, one batch in four whose ops include an unmap or protect and a touch of a
    /// page it covers, in the same space: the ops before the unmap or protect, a round of two
    /// where CPU 0 runs it and CPU 1 the touch, and the ops after. The model judges that round
    /// in either order ([`Session::judge_race`]); the sim's scheduler chooses the interleaving,
    /// so a fault path that races the unmap is found and replays.
    fn race(&self, batch: &[Op]) -> Option<(Vec<Op>, Vec<CpuBatch>, Vec<Op>)> {
        let round = self.batch_starts.len() as u64;
        if !self.races || self.cpus < 2 || !splitmix(round ^ 0x7ace).is_multiple_of(4) {
            return None;
        }
        let covers = |change: &Op, touch: &Op| match (change, touch) {
            (
                Op::Unmap { space, addr, size }
                | Op::Protect {
                    space, addr, size, ..
                },
                Op::TouchRead { space: s, addr: at }
                | Op::TouchWrite {
                    space: s, addr: at, ..
                },
            ) => space == s && (*addr..addr.saturating_add(*size)).contains(at),
            _ => false,
        };
        let (change, touch) = (0..batch.len()).find_map(|c| {
            let t = (0..batch.len()).find(|&t| t != c && covers(&batch[c], &batch[t]))?;
            Some((c, t))
        })?;
        let rest = |range: std::ops::Range<usize>| -> Vec<Op> {
            range.filter(|&i| i != touch).map(|i| batch[i]).collect()
        };
        let race = vec![
            CpuBatch {
                cpu: 0,
                ops: vec![batch[change]],
            },
            CpuBatch {
                cpu: 1,
                ops: vec![batch[touch]],
            },
        ];
        Some((rest(0..change), race, rest(change + 1..batch.len())))
    }

    /// A round of two ops on one space on two CPUs: its results hold if either order explains
    /// them (the model then follows that order). `None` if the round is not one, or neither
    /// order does (then the ops are judged as sent, and the mismatch shows).
    fn judge_race(&mut self, batch: &[Op], results: &[OpResult]) -> Option<()> {
        let start = self.sent.len() - batch.len();
        let cpus = &self.sent_cpus[start..];
        let ([a, b], [ra, rb]) = (batch, results) else {
            return None;
        };
        if cpus[0] == cpus[1] || a.space()? != b.space()? {
            return None;
        }
        let explains = |first: (&Op, &OpResult), second: (&Op, &OpResult)| {
            let mut model = self.model.clone();
            let holds = model.apply(first.0, first.1).is_none()
                && model.apply(second.0, second.1).is_none();
            holds.then_some(model)
        };
        let model = explains((a, ra), (b, rb)).or_else(|| explains((b, rb), (a, ra)))?;
        self.model = model;
        Some(())
    }

    /// `batch` as a round for the guest's CPUs. Ops on different spaces commute, so the model
    /// judges a round as if CPU 0's ops ran first, then CPU 1's, and so on, when the spaces the
    /// CPUs work on are disjoint and nothing of one space reaches another: only a space whose
    /// ops in the batch are all local to it (no fork, which numbers a new space, no
    /// `map-randomized`, which draws from the one placement RNG) and that holds no shared
    /// memory (which a fork shares between spaces) may go to a CPU other than 0, and every such
    /// space goes to one CPU, chosen by a hash of the round and the space. Creates, forks and
    /// ops on spaces not live yet stay on CPU 0, in order. A batch with a snapshot or a frame
    /// report runs on CPU 0 alone (those are CPU 0's, between rounds). Same-space races are
    /// the directed tests' (tests/tests/smp.rs), not the fuzzer's.
    fn split(&self, batch: Vec<Op>) -> Vec<CpuBatch> {
        if batch.is_empty() {
            return Vec::new();
        }
        let reports = batch
            .iter()
            .any(|op| matches!(op, Op::Snapshot { .. } | Op::Frames { .. }));
        if self.cpus == 1 || reports {
            return vec![CpuBatch { cpu: 0, ops: batch }];
        }
        let pinned: Vec<u32> = batch
            .iter()
            .filter(|op| matches!(op, Op::Fork { .. } | Op::MapRandomized { .. }))
            .filter_map(Op::space)
            .collect();
        let round = self.batch_starts.len() as u64;
        let cpu_of = |space: u32| -> u32 {
            let movable = !pinned.contains(&space)
                && self
                    .model
                    .spaces
                    .get(&space)
                    .is_some_and(|s| s.regions.values().all(|r| r.object.is_none()));
            if !movable {
                return 0;
            }
            let mixed = splitmix(round.wrapping_mul(0x1_0000_0001) ^ u64::from(space));
            (mixed % u64::from(self.cpus)) as u32
        };
        let mut batches: Vec<CpuBatch> = (0..self.cpus)
            .map(|cpu| CpuBatch {
                cpu,
                ops: Vec::new(),
            })
            .collect();
        for op in batch {
            let cpu = op.space().map_or(0, cpu_of);
            batches[cpu as usize].ops.push(op);
        }
        batches.retain(|b| !b.ops.is_empty());
        batches
    }

    /// Hands out the next round, or `None` when done; remembers what it sent.
    fn hand_out(&mut self) -> Option<Vec<CpuBatch>> {
        if self.done() {
            return None;
        }
        let round = match (self.queued.pop_front(), &mut self.source) {
            (Some(round), _) => round,
            (None, Source::Rounds(rounds)) => rounds.pop_front()?,
            (None, _) => {
                let batch = self.next_ops();
                if batch.is_empty() {
                    return None;
                }
                match self.race(&batch) {
                    Some((before, race, after)) => {
                        let after = self.split(after);
                        self.queued.push_back(race);
                        self.queued.extend((!after.is_empty()).then_some(after));
                        match self.split(before) {
                            round if round.is_empty() => self.queued.pop_front()?,
                            round => round,
                        }
                    }
                    None => self.split(batch),
                }
            }
        };
        self.last_batch = self.sent.len();
        self.batch_starts.push(self.sent.len());
        for CpuBatch { cpu, ops } in &round {
            self.sent.extend_from_slice(ops);
            self.sent_cpus.extend(std::iter::repeat_n(*cpu, ops.len()));
        }
        let sent = self.last_batch..self.sent.len();
        if let Some((at, stop)) = &self.stop_at {
            if sent.contains(at) {
                stop.request(format!("before op {at} ({})", op_to_line(&self.sent[*at])));
            }
        }
        self.in_flight = self.sent[sent].to_vec();
        Some(round)
    }

    /// Takes the results of the round in flight (in its CPUs' order, as `sent` holds its ops),
    /// checks them, and feeds coverage back.
    fn receive(&mut self, mem: &GuestMemoryMmap, results: &[OpResult]) -> Result<(), DriverError> {
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
        if self.in_flight.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }
}

impl Driver for Session<'_, '_, '_> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.receive(mem, results)?;
        let round = self.hand_out();
        Ok(round.map(|round| round.into_iter().flat_map(|b| b.ops).collect()))
    }

    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        // The round in flight's ops are in `sent` by CPU, lowest first: so are its results.
        let start = self.sent.len() - self.in_flight.len();
        let mut ordered = Vec::with_capacity(self.in_flight.len());
        let mut cpus: Vec<u32> = self.sent_cpus[start..].to_vec();
        cpus.dedup();
        for cpu in cpus {
            let sent = self.sent_cpus[start..]
                .iter()
                .filter(|&&c| c == cpu)
                .count();
            let got = results
                .iter()
                .find(|(c, _)| *c == cpu)
                .map_or(&[][..], |(_, r)| r);
            if got.len() != sent {
                return Err(DriverError::ResultCount {
                    got: got.len(),
                    sent,
                });
            }
            ordered.extend_from_slice(got);
        }
        self.receive(mem, &ordered)?;
        Ok(self.hand_out())
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
#[derive(Clone, Debug)]
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
    /// The CPU that ran each op of `sent`.
    pub cpus: Vec<u32>,
    /// Where each batch (a round, with several CPUs) starts in `sent`.
    pub batch_starts: Vec<usize>,
    /// The schedule the sim's CPUs ran (its rounds that did not run as the default would);
    /// `None` where the backend does not choose it.
    pub schedule: Option<mm_driver::Schedule>,
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
    let session = session
        .with_frame_budget(guest_boot::boot_memory::available_frames(
            &config.boot_spec(),
        ))
        .on_cpus(config.cpus)
        .with_races(config.backend == mm_driver::Backend::Sim);
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
        Err(e @ RunError::Deadlock { .. }) => Some(("deadlock", e.to_string())),
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
        cpus: session.sent_cpus,
        batch_starts: session.batch_starts,
        schedule: vm.schedule(),
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

/// Replays `rounds` as they are (each op on its CPU), with the agreement checker after each if
/// `check`, on a fresh guest of `config.cpus` CPUs.
pub fn replay_rounds(
    backends: &dyn Boot,
    config: &GuestConfig,
    rounds: Vec<Vec<CpuBatch>>,
    check: bool,
) -> Result<Run, FuzzError> {
    let session = Session::new(Source::Rounds(rounds.into()), MAX_BATCH, None);
    run_session(backends, config, session, check)
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
