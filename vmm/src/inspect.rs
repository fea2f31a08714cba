//! `vmm inspect`: runs a built-in scenario in the guest, then shows each address space's
//! region tree next to the pages the host finds present by walking the page tables itself.
//!
//! The snapshots and the walk happen while the guest is paused at one `Batch` hypercall, so the
//! trees and the tables agree in time. [`Report`] renders as an `info mem`-style table, JSON or
//! an SVG map.
#![forbid(unsafe_code)]

mod json;
pub mod plan;
pub mod sharing;
mod svg;
mod table;

use crate::VmmError;
use mm_checker::coherence::Coherence;
use mm_checker::{access_string, Finding, FrameReports, Refs};
use mm_driver::driver::{Driver, DriverError, FramesChunk, SnapshotChunk, SpaceSnapshot};
use mm_driver::{Boot, GuestConfig};
use mm_scenario::Expect;
use shared_mm::abi::{
    Op, OpResult, RegionRecord, SpaceRecord, Status, KERNEL_SPACE, USER_TRAMPOLINE,
};
use shared_mm::trace::TraceRecord;
pub use sharing::Sharing;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use x86_paging::page_walk::{coalesce, leaves_in, MappedRun, LOWER_HALF, UPPER_HALF};

const PAGE: u64 = 4096;

/// What a run of present pages belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The region at this index of [`SpaceReport::regions`].
    Region(usize),
    /// The user trampoline page, which no region covers.
    Trampoline,
    /// No region: a present page here is a bug (a stale PTE, for instance).
    Hole,
}

/// Contiguous present pages with equal effective permissions and sharing, all inside one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub run: MappedRun,
    pub owner: Owner,
    pub sharing: Sharing,
}

impl Row {
    /// `urwx` style: `-` for a missing permission; `r` is always set for a present page.
    pub fn perms(&self) -> String {
        // The last field of `MappedRun`'s `info mem` line.
        let line = self.run.to_string();
        line.rsplit(' ').next().unwrap_or_default().to_string()
    }

    /// One past the last byte, wrapping to 0 at the top of the address space.
    pub fn end(&self) -> u64 {
        self.run.range_base.wrapping_add(self.run.size)
    }
}

/// One address space (or the kernel) as inspected.
#[derive(Clone, Debug)]
pub struct SpaceReport {
    /// The space id, [`KERNEL_SPACE`] for the kernel.
    pub space: u32,
    pub cr3: u64,
    /// The exported region tree, in address order.
    pub regions: Vec<RegionRecord>,
    /// Present pages from the host's own walk, split at region boundaries.
    pub rows: Vec<Row>,
    /// What the agreement checker and the flush-trace replay found in this space.
    pub findings: Vec<Finding>,
    /// Translations of this space the TLB model holds as possibly cached (only the active
    /// directory has any: a CR3 load drops the rest).
    pub possibly_cached: usize,
}

impl SpaceReport {
    pub fn is_kernel(&self) -> bool {
        self.space == KERNEL_SPACE
    }

    /// `kernel` or `space N`.
    pub fn name(&self) -> String {
        if self.is_kernel() {
            "kernel".into()
        } else {
            format!("space {}", self.space)
        }
    }

    /// `space 1: cr3 0x..., 11 regions, 11 pages present (44 KiB)`.
    pub fn summary(&self) -> String {
        let pages = self.present_pages();
        format!(
            "{}: cr3 {:#x}, {} regions, {} pages present ({})",
            self.name(),
            self.cr3,
            self.regions.len(),
            pages,
            human_size(u128::from(pages * PAGE)),
        )
    }

    /// `agreement: ok` or `agreement: N finding(s)`.
    pub fn verdict(&self) -> String {
        match self.findings.len() {
            0 => "agreement: ok".into(),
            n => format!("agreement: {n} finding(s)"),
        }
    }

    /// `tlb: N translations possibly cached` (see [`SpaceReport::possibly_cached`]).
    pub fn tlb_line(&self) -> String {
        match self.possibly_cached {
            0 => "tlb: nothing possibly cached (not the active directory)".into(),
            n => format!("tlb: {n} translations possibly cached (the active directory)"),
        }
    }

    /// Present 4 KiB pages (a 2 MiB page counts 512).
    pub fn present_pages(&self) -> u64 {
        self.rows.iter().map(|r| r.run.size / PAGE).sum()
    }

    /// The rows inside region `index`.
    pub fn rows_in(&self, index: usize) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(move |r| r.owner == Owner::Region(index))
    }

    /// Present 4 KiB pages in region `index`.
    pub fn region_pages(&self, index: usize) -> u64 {
        self.rows_in(index).map(|r| r.run.size / PAGE).sum()
    }

    /// The region at `base`, with its index.
    pub fn region_at(&self, base: u64) -> Option<(usize, &RegionRecord)> {
        self.regions
            .iter()
            .enumerate()
            .find(|(_, r)| r.base == base)
    }
}

/// Everything `vmm inspect` learned from one guest.
#[derive(Clone, Debug)]
pub struct Report {
    /// The user spaces in id order, then the kernel.
    pub spaces: Vec<SpaceReport>,
    /// Scenario steps run.
    pub steps: usize,
    /// Scenario steps whose result differed from the expectation.
    pub mismatches: Vec<String>,
    /// The guest's exit status.
    pub exit_status: u32,
}

impl Report {
    pub fn space(&self, space: u32) -> Option<&SpaceReport> {
        self.spaces.iter().find(|s| s.space == space)
    }

    /// Each mismatch and each finding, one line apiece; empty for a correct guest.
    pub fn problems(&self) -> Vec<String> {
        let findings = self.spaces.iter().flat_map(|s| &s.findings);
        self.mismatches
            .iter()
            .cloned()
            .chain(findings.map(Finding::to_string))
            .collect()
    }
}

/// `name base+size access`, the way every view labels a region.
pub fn region_label(region: &RegionRecord) -> String {
    format!(
        "{} {:#x}+{:#x} {}",
        region.name_str(),
        region.base,
        region.size,
        access_string(region.access)
    )
}

/// `4 KiB`, `1.5 MiB`, ...: a byte count for people.
pub(crate) fn human_size(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut scaled = bytes as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if scaled.fract() == 0.0 {
        format!("{scaled} {}", UNITS[unit])
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// The owner of `va` and where that owner ends (exclusive, up to 2^64).
fn owner_at(va: u64, regions: &[RegionRecord], trampoline: bool) -> (Owner, u128) {
    let tramp = u128::from(USER_TRAMPOLINE);
    if trampoline && (tramp..tramp + u128::from(PAGE)).contains(&u128::from(va)) {
        return (Owner::Trampoline, tramp + u128::from(PAGE));
    }
    let i = regions.partition_point(|r| r.base <= va);
    if let Some(r) = i.checked_sub(1).map(|j| &regions[j]) {
        if va - r.base < r.size {
            return (
                Owner::Region(i - 1),
                u128::from(r.base) + u128::from(r.size),
            );
        }
    }
    let next_region = regions.get(i).map_or(1 << 64, |r| u128::from(r.base));
    let next_tramp = if trampoline && u128::from(va) < tramp {
        tramp
    } else {
        1 << 64
    };
    (Owner::Hole, next_region.min(next_tramp))
}

/// Splits coalesced runs where their owner changes, so each row lies in one region, the
/// trampoline page (when `trampoline`) or one hole.
pub fn split_rows(runs: &[MappedRun], regions: &[RegionRecord], trampoline: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in runs {
        let end = u128::from(run.range_base) + u128::from(run.size);
        let mut at = u128::from(run.range_base);
        while at < end {
            let (owner, owner_end) = owner_at(at as u64, regions, trampoline);
            let piece_end = owner_end.min(end);
            rows.push(Row {
                run: MappedRun {
                    range_base: at as u64,
                    size: (piece_end - at) as u64,
                    ..*run
                },
                owner,
                sharing: Sharing::Private,
            });
            at = piece_end;
        }
    }
    rows
}

/// What the rest of the guest says about a space's pages: the flush trace replayed, and the
/// reference counts of frames held more than once.
pub(crate) struct Context<'a> {
    pub coherence: &'a Coherence,
    pub refs: &'a Refs,
}

/// The report of one space (or the kernel): its tree beside the present pages the host walks
/// now (shared and copy-on-write pages marked), with the checker's `findings` for it and what
/// the flush trace says may be cached.
pub(crate) fn space_report(
    mem: &GuestMemoryMmap,
    view: SpaceSnapshot,
    findings: Vec<Finding>,
    context: Context<'_>,
) -> SpaceReport {
    let coherence = context.coherence;
    let user = view.space != KERNEL_SPACE;
    let half = if user { LOWER_HALF } else { UPPER_HALF };
    // A walk error stops the walk here; the agreement checker reports it as a finding.
    let leaves: Vec<_> = leaves_in(mem, view.cr3, half)
        .map_while(Result::ok)
        .collect();
    let mut rows = split_rows(&coalesce(leaves.iter().copied()), &view.regions, user);
    if user {
        rows = sharing::mark(rows, &leaves, &view.regions, context.refs);
    }
    SpaceReport {
        space: view.space,
        cr3: view.cr3,
        possibly_cached: coherence.possibly_cached(view.cr3 & !0xfff),
        regions: view.regions,
        rows,
        findings,
    }
}

/// The driver: runs the scenario's batches, then snapshots every space and the kernel, then
/// walks the page tables while the guest waits for its next batch.
struct Inspector {
    batches: Vec<Vec<plan::Planned>>,
    /// Batches sent so far.
    sent: usize,
    /// Index (over all batches) of the first step of the batch in flight.
    first_in_flight: usize,
    /// Placed address per step, over all batches (0 for steps that place nothing).
    placed: Vec<u64>,
    mismatches: Vec<String>,
    /// `Some` once the snapshots have been asked for.
    snapshots: Option<Vec<SpaceSnapshot>>,
    /// The flush trace replayed so far.
    coherence: Option<Coherence>,
    /// The kernel's frame report, for the reference counts of shared frames.
    frames: FrameReports,
    report: Option<Report>,
}

impl Inspector {
    fn new(batches: Vec<Vec<plan::Planned>>) -> Self {
        Inspector {
            batches,
            sent: 0,
            first_in_flight: 0,
            placed: Vec::new(),
            mismatches: Vec::new(),
            snapshots: None,
            coherence: None,
            frames: FrameReports::default(),
            report: None,
        }
    }

    fn check_batch(&mut self, results: &[OpResult]) -> Result<(), DriverError> {
        let batch = &self.batches[self.sent - 1];
        if results.len() != batch.len() {
            return Err(DriverError::ResultCount {
                got: results.len(),
                sent: batch.len(),
            });
        }
        for (i, (planned, got)) in batch.iter().zip(results).enumerate() {
            let index = self.first_in_flight + i;
            if !planned.expect.holds(got) {
                let (what, expected) = (planned.what, planned.expect);
                let got = Expect::observed(&planned.op, got);
                self.mismatches.push(format!(
                    "step {index} ({what}): expected {expected}, got {got}"
                ));
            }
            self.placed.push(got.addr);
        }
        Ok(())
    }

    fn next_scenario_batch(&mut self) -> Vec<Op> {
        self.first_in_flight = self.placed.len();
        let batch = &self.batches[self.sent];
        self.sent += 1;
        batch
            .iter()
            .map(|p| match p.placed_by {
                Some(by) => plan::relocate(p.op, self.placed[by]),
                None => p.op,
            })
            .collect()
    }

    fn finish(
        &mut self,
        mem: &GuestMemoryMmap,
        mut views: Vec<SpaceSnapshot>,
        results: &[OpResult],
    ) -> Result<(), DriverError> {
        if let Some(bad) = results.iter().find(|r| r.status != Status::Ok) {
            return Err(DriverError::SnapshotFailed { status: bad.status });
        }
        let kernel_at = views.iter().position(|v| v.space == KERNEL_SPACE);
        let kernel = kernel_at
            .map(|i| views.remove(i))
            .ok_or(DriverError::NoKernelSnapshot)?;
        views.sort_by_key(|v| v.space);
        let coherence = self.coherence.get_or_insert_with(|| Coherence::new(0));
        let trace = coherence.take_findings();
        let mut findings: Vec<Finding> = trace
            .iter()
            .map(|f| mm_checker::as_finding(f, (&kernel, &views)))
            .collect();
        let refs = self.frames.shared_frames();
        findings.extend(mm_checker::check(mem, &kernel, &views, refs));
        let coherence = &*coherence;
        let context = || Context { coherence, refs };
        let mut take = |space: u32| {
            let (mine, rest) = std::mem::take(&mut findings)
                .into_iter()
                .partition(|f: &Finding| f.space == space);
            findings = rest;
            mine
        };
        let mut spaces: Vec<SpaceReport> = views
            .into_iter()
            .map(|v| {
                let found = take(v.space);
                space_report(mem, v, found, context())
            })
            .collect();
        let mut found = take(KERNEL_SPACE);
        // Trace findings of a directory no live space has (destroyed since) go to the kernel's.
        found.extend(findings);
        spaces.push(space_report(mem, kernel, found, context()));
        self.report = Some(Report {
            spaces,
            steps: self.placed.len(),
            mismatches: std::mem::take(&mut self.mismatches),
            exit_status: 0,
        });
        Ok(())
    }
}

impl Driver for Inspector {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        if let Some(views) = self.snapshots.take() {
            // The guest is paused with exactly the trees it just exported: walk now.
            self.finish(mem, views, results)?;
            return Ok(None);
        }
        if self.sent > 0 {
            self.check_batch(results)?;
        }
        if self.sent < self.batches.len() {
            return Ok(Some(self.next_scenario_batch()));
        }
        self.snapshots = Some(Vec::new());
        let mut ops = vec![Op::Snapshot {
            space: KERNEL_SPACE,
        }];
        ops.extend(spaces.iter().map(|s| Op::Snapshot { space: s.space }));
        ops.push(Op::Frames {
            space: KERNEL_SPACE,
        });
        Ok(Some(ops))
    }

    fn frames(&mut self, _: &GuestMemoryMmap, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        if self.snapshots.is_none() {
            return Err(DriverError::UnrequestedSnapshot { space: chunk.space });
        }
        self.frames.collect(chunk)
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        let views = self
            .snapshots
            .as_mut()
            .ok_or(DriverError::UnrequestedSnapshot { space: chunk.space })?;
        SpaceSnapshot::collect(views, chunk)
    }

    fn trace(&mut self, mem: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        let ram = GuestMemoryBackend::last_addr(mem).0.saturating_add(1);
        let coherence = self.coherence.get_or_insert_with(|| Coherence::new(ram));
        Ok(coherence.apply_all(records)?)
    }
}

/// Boots the guest of `config` on `backends`, runs the inspect scenario and reports every space
/// and the kernel.
pub fn inspect(backends: &dyn Boot, config: &GuestConfig) -> Result<Report, VmmError> {
    let mut vm = backends.boot(config)?;
    let mut inspector = Inspector::new(plan::batches());
    let status = vm.run(&mut inspector)?;
    let mut report = inspector
        .report
        .ok_or(DriverError::ExitedEarly { status })?;
    report.exit_status = status;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::access_bits::{READ, USER, WRITE};

    fn region(base: u64, size: u64) -> RegionRecord {
        RegionRecord {
            base,
            size,
            access: USER | READ | WRITE,
            backed: 1,
            object: 0,
            name: RegionRecord::name_field("anon"),
        }
    }

    fn run(range_base: u64, size: u64) -> MappedRun {
        MappedRun {
            range_base,
            size,
            user: true,
            writable: true,
            executable: false,
        }
    }

    fn spans(rows: &[Row]) -> Vec<(u64, u64, Owner)> {
        rows.iter()
            .map(|r| (r.run.range_base, r.run.size, r.owner))
            .collect()
    }

    #[test]
    fn runs_split_at_region_boundaries_and_holes() {
        let regions = [region(0x1000, 0x2000), region(0x3000, 0x1000)];
        // One run over both regions, then into a hole.
        let rows = split_rows(&[run(0x2000, 0x4000)], &regions, false);
        assert_eq!(
            spans(&rows),
            [
                (0x2000, 0x1000, Owner::Region(0)),
                (0x3000, 0x1000, Owner::Region(1)),
                (0x4000, 0x2000, Owner::Hole),
            ]
        );
        // A run that starts in a hole before the first region.
        let rows = split_rows(&[run(0, 0x2000)], &regions, false);
        assert_eq!(
            spans(&rows),
            [(0, 0x1000, Owner::Hole), (0x1000, 0x1000, Owner::Region(0))]
        );
        assert_eq!(rows[1].perms(), "urw-");
    }

    #[test]
    fn trampoline_page_is_its_own_owner() {
        let regions = [region(USER_TRAMPOLINE - 0x1000, 0x1000)];
        let rows = split_rows(&[run(USER_TRAMPOLINE - 0x1000, 0x3000)], &regions, true);
        assert_eq!(
            spans(&rows),
            [
                (USER_TRAMPOLINE - 0x1000, 0x1000, Owner::Region(0)),
                (USER_TRAMPOLINE, 0x1000, Owner::Trampoline),
                (USER_TRAMPOLINE + 0x1000, 0x1000, Owner::Hole),
            ]
        );
        // Without the trampoline (the kernel), the same page is a hole.
        let rows = split_rows(&[run(USER_TRAMPOLINE, 0x1000)], &[], false);
        assert_eq!(spans(&rows), [(USER_TRAMPOLINE, 0x1000, Owner::Hole)]);
    }

    #[test]
    fn a_run_ending_at_the_top_of_the_address_space_does_not_overflow() {
        let top = u64::MAX - 0x1fff;
        let regions = [region(top, 0x2000)];
        let rows = split_rows(&[run(top - 0x1000, 0x3000)], &regions, false);
        assert_eq!(
            spans(&rows),
            [
                (top - 0x1000, 0x1000, Owner::Hole),
                (top, 0x2000, Owner::Region(0))
            ]
        );
        assert_eq!(rows[1].end(), 0);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(0x18_0000), "1.5 MiB");
        assert_eq!(human_size(1 << 64), "16 EiB");
        assert_eq!(human_size(12), "12 B");
    }
}
