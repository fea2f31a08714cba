//! `Checked<D>`: a [`Driver`] adapter that runs the agreement checker and the flush-trace
//! replay after every batch of the inner driver.
//!
//! After each inner batch it asks the guest for snapshots of the kernel and of every space the
//! batch may have changed (the spaces its operations named, new ones, and those whose tables
//! the guest wrote), then checks their tables while the guest is paused with exactly those
//! trees. It also has every live tree run its own `check_invariants` (a `check-tree` of the
//! kernel and each space), and checks every frame it learns of against the memory map the
//! host wrote at boot: those the trace shows allocated at once, during the batch, the others at
//! the check. Spaces the batch did not name keep their last check's frames in the
//! [`Agreement`], so a frame mapped by a changed and an unchanged space is still seen. A space
//! that shares an object with a changed one changed too (the other may have given the object a
//! page); every [`FULL_CHECK_EVERY`] checks, every live space is snapshotted again. A replay of
//! one op per batch thus costs a couple of snapshots per op, not one per live space.
//!
//! Where the backend keeps a record of the frames the guest wrote (the sim's machine, KVM's
//! dirty log; see [`Driver::written`]), a check is incremental: it walks again only the entries of the tables
//! written, and judges again only the pages whose region changed. A full walk still runs every
//! [`Checked::full_walk_every`] checks, at every check that finds something, and when the
//! inner driver's work ends, and compares what the incremental checks kept with what it finds
//! (`incremental-check-agrees`). Without that record every changed space is walked whole.

use crate::accounting::{Accounting, FrameReports};
use crate::agreement::{Agreement, Refs};
use crate::coherence::Coherence;
use crate::finding::{region_containing, Finding};
use crate::provenance::{self, Provenance};
use crate::rule::Rule;
use crate::trace_events::CoherenceFinding;
use mm_driver::driver::{
    results_of, CpuBatch, Driver, DriverError, FramesChunk, SnapshotChunk, SpaceSnapshot,
};
use shared_mm::abi::{Op, OpResult, SpaceRecord, Status, KERNEL_SPACE, MAX_BATCH, MAX_SPACES};
use shared_mm::boot_info::BootInfo;
use shared_mm::region_tree::InvariantViolation;
use shared_mm::trace::TraceRecord;
use std::collections::{BTreeMap, BTreeSet};
use vm_memory::GuestMemoryMmap;
use x86_paging::frame_map::FrameSet;

/// Every this many checks, every live space is snapshotted and walked whole, changed or not.
pub const FULL_CHECK_EVERY: usize = 64;

/// The most operations one check sends: a snapshot, a frame report and a `check-tree` of the
/// kernel and of each of at most [`MAX_SPACES`] live spaces. A guest claiming more is refused
/// before a check is built (by the report guard under KVM, and here), so one batch always holds
/// a whole check.
pub const MAX_CHECK_OPS: usize = 3 * (MAX_SPACES + 1);
const _: () = assert!(MAX_CHECK_OPS <= MAX_BATCH, "a check must fit one batch");

pub struct Checked<D> {
    inner: D,
    /// What the checker remembers between checks (created at the first, with RAM size known).
    agreement: Option<Agreement>,
    /// The flush trace replayed so far.
    coherence: Option<Coherence>,
    /// Results of the inner driver's last batch or round (by CPU), held back while the
    /// snapshots are taken.
    held_results: Option<Vec<(u32, Vec<OpResult>)>>,
    snapshots: Vec<SpaceSnapshot>,
    /// Spaces the inner driver's operations named since their last check.
    dirty: BTreeSet<u32>,
    /// The shared objects each space's regions held at its last snapshot.
    objects: BTreeMap<u32, BTreeSet<u64>>,
    /// What frame accounting remembers between checks, and the reports for this one.
    accounting: Accounting,
    frame_reports: FrameReports,
    /// The memory map the host wrote at boot, once the guest booted (frame provenance).
    provenance: Option<Provenance>,
    /// The operations of the check in progress, whose results come back next.
    round: Vec<Op>,
    /// The space each directory (CR3) last belonged to, so that a trace finding about the
    /// tables of a space destroyed since still names it.
    directories: BTreeMap<u64, u32>,
    /// Whether this check walks every live space.
    full: bool,
    /// The frames the guest wrote since the last check, once the backend reports them.
    written: Option<FrameSet<u64>>,
    /// The kernel's snapshot at the last check, and whether that check walked everything
    /// whole (for the full walk at the end).
    last_kernel: Option<SpaceSnapshot>,
    last_walked_whole: bool,
    /// Every this many checks (and at every check with a finding, and at the end) a check
    /// that could be incremental walks everything whole too and compares; 1 makes every check
    /// a full one (the reference the incremental checks are tested against).
    pub full_walk_every: usize,
    /// Every finding so far, with the number of the check that found it.
    pub findings: Vec<(usize, Finding)>,
    /// How many times the checker ran.
    pub checks_run: usize,
    /// How many snapshots (each with its frame report) it asked the guest for.
    pub snapshots_asked: usize,
    /// End the guest's work at the first finding instead of handing out more batches.
    pub stop_on_finding: bool,
    /// Check frame provenance, page-table lifetime and every region tree's own invariants
    /// (on by default; set it before the guest boots, and off only to measure what they cost).
    pub deep_rules: bool,
}

impl<D: Driver> Checked<D> {
    pub fn new(inner: D) -> Self {
        Checked {
            inner,
            agreement: None,
            coherence: None,
            held_results: None,
            snapshots: Vec::new(),
            dirty: BTreeSet::new(),
            objects: BTreeMap::new(),
            accounting: Accounting::default(),
            frame_reports: FrameReports::default(),
            provenance: None,
            round: Vec::new(),
            directories: BTreeMap::new(),
            full: false,
            written: None,
            last_kernel: None,
            last_walked_whole: true,
            full_walk_every: FULL_CHECK_EVERY,
            findings: Vec::new(),
            checks_run: 0,
            snapshots_asked: 0,
            stop_on_finding: false,
            deep_rules: true,
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    /// The live spaces to walk now (the changed and the new ones, or all of them on a full
    /// check), and those that need only report their frames again: the other holders of a
    /// shared object a changed space holds, whose tables did not change but whose object may
    /// have gained or lost pages. Spaces gone since the last check are forgotten.
    fn spaces_to_walk(
        &mut self,
        mem: &GuestMemoryMmap,
        spaces: &[SpaceRecord],
    ) -> (Vec<u32>, Vec<u32>) {
        // A space gone since may have given a shared object pages on its way out.
        let sharers = self.sharers_of_dirty();
        let agreement = agreement_for(&mut self.agreement, mem, &self.provenance);
        let live: BTreeSet<u32> = spaces.iter().map(|s| s.space).collect();
        let gone = agreement
            .spaces()
            .filter(|s| *s != KERNEL_SPACE && !live.contains(s));
        let gone: Vec<u32> = gone.collect();
        for space in gone {
            agreement.forget(space);
        }
        let known: BTreeSet<u32> = agreement.spaces().collect();
        let full = self.checks_run.is_multiple_of(FULL_CHECK_EVERY);
        self.full = full;
        self.objects.retain(|s, _| live.contains(s));
        let written = self.written.as_ref();
        let (walk, rest): (Vec<u32>, Vec<u32>) = live.into_iter().partition(|&s| {
            full || self.dirty.contains(&s)
                || !known.contains(&s)
                || written.is_some_and(|w| agreement.tables_written(s, w))
        });
        let report = rest.into_iter().filter(|s| sharers.contains(s)).collect();
        (walk, report)
    }

    /// Every space holding a shared object one of the dirty spaces holds.
    fn sharers_of_dirty(&self) -> BTreeSet<u32> {
        let touched: BTreeSet<u64> = self
            .dirty
            .iter()
            .filter_map(|s| self.objects.get(s))
            .flatten()
            .copied()
            .collect();
        if touched.is_empty() {
            return BTreeSet::new();
        }
        self.objects
            .iter()
            .filter(|(_, held)| !held.is_disjoint(&touched))
            .map(|(&s, _)| s)
            .collect()
    }

    /// The verdicts of the `check-tree` operations of the check in progress (`results` are its
    /// operations' results): a tree that fails its own invariant check is a finding.
    fn tree_checks(&self, results: &[OpResult]) -> Result<Vec<Finding>, DriverError> {
        if results.len() != self.round.len() {
            return Err(DriverError::ResultCount {
                got: results.len(),
                sent: self.round.len(),
            });
        }
        let broken = self
            .round
            .iter()
            .zip(results)
            .filter_map(|(op, got)| match op {
                Op::CheckTree { space } if got.status == Status::Ok && got.value != 0 => {
                    Some((*space, got))
                }
                _ => None,
            });
        Ok(broken
            .map(|(space, got)| tree_finding(space, got))
            .collect())
    }

    /// Runs the checks on the snapshots received; returns their findings, trace findings first
    /// (each was seen at the event that broke the rule, before what the tables show now).
    fn run_checks(
        &mut self,
        mem: &GuestMemoryMmap,
        spaces: &[SpaceRecord],
    ) -> Result<Vec<Finding>, DriverError> {
        let kernel_at = self.snapshots.iter().position(|v| v.space == KERNEL_SPACE);
        let kernel = kernel_at
            .map(|i| self.snapshots.remove(i))
            .ok_or(DriverError::NoKernelSnapshot)?;
        let mut found: Vec<Finding> = match &mut self.coherence {
            Some(coherence) => {
                let views = (&kernel, self.snapshots.as_slice());
                let trace = coherence.take_findings();
                let named = |found: &CoherenceFinding| {
                    let mut finding = as_finding(found, views);
                    if finding.space == 0 {
                        // A space destroyed since: the one the directory last belonged to.
                        let last = self.directories.get(&found.directory);
                        finding.space = last.copied().unwrap_or(0);
                    }
                    finding
                };
                trace.iter().map(named).collect()
            }
            None => Vec::new(),
        };
        for view in &self.snapshots {
            let held = view.regions.iter().map(|r| r.object).filter(|&o| o != 0);
            self.objects.insert(view.space, held.collect());
        }
        let agreement = agreement_for(&mut self.agreement, mem, &self.provenance);
        let refs = self.frame_reports.shared_frames();
        let views = (&kernel, self.snapshots.as_slice());
        let (agreed, whole) = match self.written.as_mut() {
            None => (check_whole(agreement, mem, refs, views), true),
            Some(written) => {
                let written = std::mem::take(written);
                let incremental = check_incrementally(agreement, mem, refs, views, &written);
                let every = self.full_walk_every.max(1);
                // This check's number: `checks_run` counts it already.
                let run = self.checks_run.saturating_sub(1);
                let cross = self.full
                    || run.is_multiple_of(every)
                    || !found.is_empty()
                    || !incremental.is_empty();
                if cross {
                    let views = self.snapshots.as_slice();
                    let cross = agreement.cross_check(mem, &kernel, views, &incremental);
                    (cross, true)
                } else {
                    (incremental, false)
                }
            }
        };
        self.last_walked_whole = whole;
        found.extend(agreed);
        let live: BTreeSet<u32> = spaces.iter().map(|s| s.space).collect();
        let reports = std::mem::take(&mut self.frame_reports);
        let mapped = if whole {
            let walked = self.snapshots.iter().map(|v| v.space);
            walked.map(|s| (s, agreement.mapped(s))).collect()
        } else {
            pages_to_judge(agreement, self.accounting.frames_changing(&reports, &live))
        };
        if let Some(provenance) = &self.provenance {
            found.extend(provenance.check_reports(&reports));
        }
        found.extend(self.accounting.check(reports, &live, &mapped, self.full));
        self.dirty.clear();
        self.last_kernel = Some(kernel);
        Ok(found)
    }
}

impl<D: Driver> Checked<D> {
    /// The inner driver's work is done: unless the last check walked everything whole, a full
    /// walk of the tables and regions it saw cross-checks the incremental ones. Its findings
    /// count as the last check's: where they disagree, and any rule not yet seen broken in
    /// that space (what was seen before is not reported again).
    fn walk_whole_at_the_end(&mut self, mem: &GuestMemoryMmap) {
        if self.last_walked_whole {
            return;
        }
        let (Some(agreement), Some(kernel)) = (&mut self.agreement, &self.last_kernel) else {
            return;
        };
        self.last_walked_whole = true;
        let found = agreement.cross_check(mem, kernel, &self.snapshots, &[]);
        let seen: BTreeSet<(u32, Rule)> = self
            .findings
            .iter()
            .map(|(_, f)| (f.space, f.rule))
            .collect();
        let new = found
            .into_iter()
            .filter(|f| f.rule == Rule::IncrementalCheck || !seen.contains(&(f.space, f.rule)));
        let run = self.checks_run.saturating_sub(1);
        self.findings
            .extend(new.map(|f| (run, f)).collect::<Vec<_>>());
    }
}

/// What comes between two of the inner driver's batches (or rounds).
enum Between {
    /// The check to run first: its operations, for CPU 0 alone.
    Check(Vec<Op>),
    /// A finding, and `stop_on_finding`: no more work.
    Stop,
    /// The check is done: the inner driver's last results, for it to go on.
    Inner(Vec<(u32, Vec<OpResult>)>),
}

impl<D: Driver> Checked<D> {
    /// The guest finished a batch or round (`results`, by CPU) and reports `spaces`: either the
    /// inner driver's work just finished (check it first), or the check did (go on).
    fn between(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Between, DriverError> {
        for record in spaces {
            self.directories.insert(record.cr3 & !0xfff, record.space);
        }
        let Some(held) = self.held_results.take() else {
            if spaces.len() > MAX_SPACES {
                return Err(DriverError::TooManySpaces {
                    count: spaces.len(),
                });
            }
            // The inner driver's work just finished: snapshot what it may have changed first.
            self.held_results = Some(results.to_vec());
            self.snapshots.clear();
            self.frame_reports = FrameReports::default();
            let (walk, report) = self.spaces_to_walk(mem, spaces);
            self.snapshots_asked += 1 + walk.len();
            let trees = std::iter::once(KERNEL_SPACE).chain(spaces.iter().map(|s| s.space));
            let trees = trees.filter(|_| self.deep_rules);
            self.round = std::iter::once(KERNEL_SPACE)
                .chain(walk)
                .flat_map(|space| [Op::Snapshot { space }, Op::Frames { space }])
                .chain(report.into_iter().map(|space| Op::Frames { space }))
                .chain(trees.map(|space| Op::CheckTree { space }))
                .collect();
            return Ok(Between::Check(self.round.clone()));
        };
        let run = self.checks_run;
        self.checks_run += 1;
        let trees = self.tree_checks(results_of(results, 0))?;
        let mut found = self.run_checks(mem, spaces)?;
        found.extend(trees);
        let seen_in_trace = self.findings.last().is_some_and(|(r, _)| *r == run);
        let stop = self.stop_on_finding && (seen_in_trace || !found.is_empty());
        self.findings.extend(found.into_iter().map(|f| (run, f)));
        if stop {
            return Ok(Between::Stop);
        }
        Ok(Between::Inner(held))
    }

    /// The spaces `ops` name (not their snapshots) changed since the last check.
    fn dirty_from<'o>(&mut self, ops: impl Iterator<Item = &'o Op>) {
        let named = ops.filter(|op| !matches!(op, Op::Snapshot { .. }));
        self.dirty.extend(named.filter_map(Op::space));
    }
}

impl<D: Driver> Driver for Checked<D> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        match self.between(mem, &[(0, results.to_vec())], spaces)? {
            Between::Check(ops) => Ok(Some(ops)),
            Between::Stop => Ok(None),
            Between::Inner(held) => {
                let own = held.first().map_or(&[][..], |(_, r)| r.as_slice());
                let next = self.inner.next_batch(mem, own, spaces)?;
                if next.is_none() {
                    self.walk_whole_at_the_end(mem);
                }
                self.dirty_from(next.iter().flatten());
                Ok(next)
            }
        }
    }

    /// As [`Driver::next_batch`], a round at a time: the check runs between rounds, on CPU 0
    /// alone, with every CPU quiescent.
    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        match self.between(mem, results, spaces)? {
            Between::Check(ops) => Ok(Some(vec![CpuBatch { cpu: 0, ops }])),
            Between::Stop => Ok(None),
            Between::Inner(held) => {
                let next = self.inner.next_round(mem, &held, spaces)?;
                if next.is_none() {
                    self.walk_whole_at_the_end(mem);
                }
                self.dirty_from(next.iter().flatten().flat_map(|b| &b.ops));
                Ok(next)
            }
        }
    }

    /// Checked wants the backend's record of what the guest wrote, for incremental checks.
    fn wants_written(&self) -> bool {
        true
    }

    fn written(&mut self, frames: &[u64]) {
        self.written.get_or_insert_default().extend(frames);
        self.inner.written(frames);
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        if self.held_results.is_none() {
            return self.inner.snapshot(mem, chunk);
        }
        SpaceSnapshot::collect(&mut self.snapshots, chunk)
    }

    fn frames(&mut self, mem: &GuestMemoryMmap, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        if self.held_results.is_none() {
            return self.inner.frames(mem, chunk);
        }
        self.frame_reports.collect(chunk)
    }

    fn booted(&mut self, info: &BootInfo) {
        if self.deep_rules {
            self.provenance = Some(Provenance::new(info));
        }
        self.inner.booted(info);
    }

    fn trace(&mut self, mem: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        // The guest's RAM size bounds what the replay may track.
        let deep = self.deep_rules;
        let coherence = self.coherence.get_or_insert_with(|| {
            let ram = vm_memory::GuestMemoryBackend::last_addr(mem).0;
            let replay = Coherence::new(ram.saturating_add(1));
            if deep {
                replay
            } else {
                replay.without_table_lifetime()
            }
        });
        let first = coherence.events_seen();
        coherence.apply_all(records)?;
        if let Some(provenance) = &self.provenance {
            // Found now, during the batch (it is the next check's): the guest may not live to
            // the check if the frame was not RAM it could write.
            let run = self.checks_run;
            let this_check = self.findings.iter().rev().take_while(|(r, _)| *r == run);
            let room = provenance::MAX_FINDINGS.saturating_sub(this_check.count());
            let found = provenance.check_allocations(first, records, room);
            self.findings.extend(found.into_iter().map(|f| (run, f)));
        }
        self.inner.trace(mem, records)
    }
}

/// The agreement state for the RAM of `mem`, made at the first check.
fn agreement_for<'a>(
    slot: &'a mut Option<Agreement>,
    mem: &GuestMemoryMmap,
    provenance: &Option<Provenance>,
) -> &'a mut Agreement {
    slot.get_or_insert_with(|| Agreement::for_memory(mem).with_provenance(provenance.clone()))
}

/// The user pages frame accounting judges after an incremental check, by space: those the
/// check found newly mapped, and those that map a frame whose owner or allocation changed
/// (`changing`). Any other page was judged before against the same frame, owner and bitmap.
fn pages_to_judge(
    agreement: &Agreement,
    changing: FrameSet<u64>,
) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let added = agreement.added().iter().copied();
    let users = changing.into_iter().flat_map(|frame| {
        let users = agreement.users_of(frame);
        users.map(move |(space, va)| (space, frame, va))
    });
    let unique: FrameSet<(u32, u64, u64)> = added.chain(users).collect();
    let mut pages: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for (space, frame, va) in unique {
        pages.entry(space).or_default().push((frame, va));
    }
    for list in pages.values_mut() {
        list.sort_unstable();
    }
    pages
}

/// Walks the kernel and each space of `views` whole (each forgotten first, before any is
/// walked, or its old frames look mapped twice); their findings.
fn check_whole(
    agreement: &mut Agreement,
    mem: &GuestMemoryMmap,
    refs: &Refs,
    views: (&SpaceSnapshot, &[SpaceSnapshot]),
) -> Vec<Finding> {
    let (kernel, spaces) = views;
    for view in spaces {
        agreement.forget(view.space);
    }
    let mut check = agreement.check(refs);
    check.kernel(mem, kernel);
    for view in spaces {
        check.space(mem, view, kernel);
    }
    check.finish()
}

/// Checks the kernel and each space of `views`: incrementally where the last walk can be
/// followed up with the tables the guest wrote (`written`), else whole. The follow-ups come
/// first, so that a whole walk judges each frame against the others' current mappings.
fn check_incrementally(
    agreement: &mut Agreement,
    mem: &GuestMemoryMmap,
    refs: &Refs,
    views: (&SpaceSnapshot, &[SpaceSnapshot]),
    written: &FrameSet<u64>,
) -> Vec<Finding> {
    let (kernel, spaces) = views;
    let all = std::iter::once(kernel).chain(spaces);
    let (follow, mut whole): (Vec<&SpaceSnapshot>, Vec<&SpaceSnapshot>) =
        all.partition(|v| agreement.can_follow(v.space, v.cr3));
    for view in &whole {
        agreement.forget(view.space);
    }
    let mut check = agreement.check(refs);
    for view in follow {
        if !check.update(mem, view, kernel, written) {
            whole.push(view);
        }
    }
    for view in whole {
        if view.space == KERNEL_SPACE {
            check.kernel(mem, view);
        } else {
            check.space(mem, view, kernel);
        }
    }
    check.finish()
}

/// A `region-tree-invariants` finding for `space`, whose `check-tree` gave `got`.
fn tree_finding(space: u32, got: &OpResult) -> Finding {
    let what = InvariantViolation::kind_name(got.value).map_or_else(
        || format!("unknown violation {}", got.value),
        str::to_string,
    );
    Finding {
        space,
        rule: Rule::RegionTreeInvariants,
        va: (got.addr != 0).then_some(got.addr),
        pte: None,
        region: None,
        detail: format!("the region tree fails its own invariant check: {what}"),
        events: Vec::new(),
    }
}

/// A coherence finding as a checker finding of the space whose directory it concerns (the
/// kernel's, a live space's, or space 0 for a directory no snapshot shows).
pub fn as_finding(found: &CoherenceFinding, views: (&SpaceSnapshot, &[SpaceSnapshot])) -> Finding {
    let (kernel, spaces) = views;
    let view = std::iter::once(kernel)
        .chain(spaces)
        .find(|v| v.cr3 & !0xfff == found.directory);
    let space = view.map_or(0, |v| v.space);
    let region = view
        .and_then(|v| region_containing(&v.regions, found.va))
        .copied();
    Finding {
        space,
        rule: found.rule,
        va: Some(found.va),
        pte: Some(found.pte),
        region,
        detail: format!("directory {:#x}: {}", found.directory, found.detail),
        events: found.events.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_driver::driver::Script;
    use vm_memory::GuestAddress;

    /// The first check (a full one: every space is walked, and every tree checked), of a guest
    /// that reports `live` spaces.
    fn first_check(live: u32) -> Result<Option<Vec<Op>>, DriverError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let spaces: Vec<SpaceRecord> = (1..=live)
            .map(|space| SpaceRecord { space, cr3: 0 })
            .collect();
        Checked::new(Script::new(Vec::new())).next_batch(&mem, &[], &spaces)
    }

    #[test]
    fn a_check_of_as_many_spaces_as_can_live_fits_one_batch() {
        let ops = first_check(MAX_SPACES as u32).unwrap().expect("a check");
        assert_eq!(ops.len(), MAX_CHECK_OPS);
        let trees = ops.iter().filter(|op| matches!(op, Op::CheckTree { .. }));
        assert_eq!(trees.count(), MAX_SPACES + 1);
        assert_eq!(
            first_check(MAX_SPACES as u32 + 1),
            Err(DriverError::TooManySpaces {
                count: MAX_SPACES + 1
            })
        );
    }
}
