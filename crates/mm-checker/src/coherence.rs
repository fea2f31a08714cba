//! TLB coherence checking: the flush trace replayed against the TLB rules of
//! [`x86_paging::tlb`], with one TLB model per CPU.
//!
//! Without PCID a CPU's TLB holds only translations of the directory it has loaded, and any
//! present translation of it may be cached from the moment it is loaded (speculatively too).
//! When a PTE of a directory changes, the old translation may stay cached on every CPU that has
//! the directory loaded (whether it runs it or idles on it, lazily) until that CPU flushes the
//! page (`invlpg`) or loads CR3 again. The CPU that changed the PTE flushes its own TLB; the
//! others flush when they serve its shootdown. Replaying the trace with those rules gives two
//! findings:
//!
//! - `stale-tlb-entry`: CPU c enters ring 3 while a translation c may cache is a downgrade of
//!   what the PTE says now (cleared, another frame, or W, U or X lost);
//! - `frame-freed-while-cached`: a frame goes back to the allocator while a translation some
//!   CPU may cache, stale or present, still points at it.
//!
//! Only user-half 4 KiB, 2 MiB and 1 GiB leaves are tracked here: the direct map in the kernel
//! half maps every frame by design, and ring 3 cannot use supervisor translations. Table
//! entries (PML4E, PDPTE, PDE pointing to tables) and CR3 are the business of
//! [`crate::table_lifetime`], which the replay runs on the same events:
//! `table-freed-while-reachable`. The trace is attacker-controlled, so the state it can grow
//! is bounded (by RAM size) and an excess is an error, not a slow host.
#![forbid(unsafe_code)]

use crate::rule::Rule;
use crate::table_lifetime::TableLifetime;
use crate::trace_events::{CoherenceFinding, Numbered};
use mm_driver::driver::TraceTooLarge;
use shared_mm::pte::{PageLevel, PageTableEntry, LOWER_HALF_LAST};
use shared_mm::smp::{CpuSet, MAX_CPUS};
use shared_mm::trace::{TraceEvent, TraceRecord};
use std::collections::{HashMap, VecDeque};
use x86_paging::page_walk::EffectivePerms;
use x86_paging::tlb::Translation;

/// A translation that may still be cached although its PTE changed, and the write that did it.
#[derive(Clone, Copy, Debug)]
struct Stale {
    translation: Translation,
    pte: u64,
    write: Numbered,
}

/// Findings kept at most; later ones are only counted.
const MAX_FINDINGS: usize = 64;
/// Recent events kept to explain a finding.
const RECENT: usize = 32;

/// A translation the TLB may hold now, as `monitor tlb` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    pub translation: Translation,
    /// The PTE value it came from.
    pub pte: u64,
    /// Whether the PTE has changed since (the translation is stale until a flush), with the
    /// number of the trace event that changed it.
    pub stale_since: Option<u64>,
}

/// What one CPU's TLB may hold beyond the present translations of its directory.
#[derive(Clone, Default)]
struct CpuTlb {
    /// The directory it has loaded.
    active: Option<u64>,
    /// Possibly-cached old translations of it, by (page size, page).
    stale: HashMap<(u64, u64), Vec<Stale>>,
}

/// The replay state of one guest's trace.
#[derive(Clone)]
pub struct Coherence {
    /// Present user-half leaves per directory: page -> (translation, PTE value).
    leaves: HashMap<u64, HashMap<u64, (Translation, u64)>>,
    /// Per directory, the pages mapping each frame.
    frames: HashMap<u64, HashMap<u64, Vec<u64>>>,
    /// Each CPU's TLB, by index (as many as the trace named).
    cpus: Vec<CpuTlb>,
    tracked: usize,
    limit: usize,
    next_event: u64,
    /// The last [`RECENT`] flushes, activations and frees, to explain findings.
    recent: VecDeque<Numbered>,
    findings: Vec<CoherenceFinding>,
    /// Findings past `MAX_FINDINGS`.
    pub dropped: usize,
    /// Page-table lifetime, replayed on the same events (`None`: not checked).
    tables: Option<TableLifetime>,
}

/// The translation a user-half leaf PTE at `level` for `va` gives; `None` if it is not present,
/// not a leaf, or not in the user half.
fn leaf(level: u8, va: u64, raw: u64) -> Option<Translation> {
    let level = *PageLevel::ALL.get(usize::from(level))?;
    let entry = PageTableEntry::from_raw(raw);
    if va > LOWER_HALF_LAST || !entry.is_present() || !entry.is_leaf(level) {
        return None;
    }
    Some(Translation {
        page: va & !(level.entry_span() - 1),
        size: level.entry_span(),
        frame: entry.leaf_frame(level),
        perms: EffectivePerms {
            writable: entry.is_writable(),
            user: entry.is_user(),
            no_execute: entry.is_no_execute(),
        },
    })
}

/// The (size, first address) of the pages of every size that contain `va`.
fn pages_of(va: u64) -> [(u64, u64); 3] {
    [1 << 12, 1 << 21, 1 << 30].map(|size| (size, va & !(size - 1)))
}

impl Coherence {
    /// A replay for a guest with `ram_bytes` of RAM (which bounds what it may track).
    pub fn new(ram_bytes: u64) -> Self {
        let frames = (ram_bytes / 4096) as usize;
        let limit = frames.saturating_mul(4).max(1 << 16);
        Coherence {
            leaves: HashMap::new(),
            frames: HashMap::new(),
            cpus: vec![CpuTlb::default()],
            tracked: 0,
            limit,
            next_event: 0,
            recent: VecDeque::new(),
            findings: Vec::new(),
            dropped: 0,
            tables: Some(TableLifetime::new(MAX_CPUS as usize, limit)),
        }
    }

    /// The same replay without the page-table lifetime rule (to measure what it costs).
    pub fn without_table_lifetime(self) -> Self {
        Coherence {
            tables: None,
            ..self
        }
    }

    /// The directory CPU 0 loaded last.
    pub fn active(&self) -> Option<u64> {
        self.cpus[0].active
    }

    /// The CPUs that have `directory` loaded, so may cache its translations.
    pub fn cpus_caching(&self, directory: u64) -> CpuSet {
        (0..)
            .zip(&self.cpus)
            .filter(|(_, tlb)| tlb.active == Some(directory))
            .fold(CpuSet::EMPTY, |set, (cpu, _)| set.with(cpu))
    }

    /// How many translations of `directory` may be cached now, on any CPU: all of its present
    /// user translations and its stale ones if a CPU has it loaded, none otherwise.
    pub fn possibly_cached(&self, directory: u64) -> usize {
        let mut loading = self.cpus.iter().filter(|t| t.active == Some(directory));
        let Some(first) = loading.next() else {
            return 0;
        };
        let present = self.leaves.get(&directory).map_or(0, HashMap::len);
        let stale = |t: &CpuTlb| t.stale.values().map(Vec::len).sum::<usize>();
        present + stale(first) + loading.map(stale).sum::<usize>()
    }

    /// Every translation of `directory` CPU 0's TLB may hold now, by page: none unless it has
    /// it loaded; else its present user translations and the stale ones no flush has dropped.
    pub fn cached(&self, directory: u64) -> Vec<Cached> {
        let tlb = &self.cpus[0];
        if tlb.active != Some(directory) {
            return Vec::new();
        }
        let present = self.leaves.get(&directory).into_iter().flatten();
        let present = present.map(|(_, &(translation, pte))| Cached {
            translation,
            pte,
            stale_since: None,
        });
        let stale = tlb.stale.values().flatten().map(|s| Cached {
            translation: s.translation,
            pte: s.pte,
            stale_since: Some(s.write.0),
        });
        let mut all: Vec<Cached> = present.chain(stale).collect();
        all.sort_by_key(|c| (c.translation.page, c.stale_since));
        all
    }

    /// Events replayed so far.
    pub fn events_seen(&self) -> u64 {
        self.next_event
    }

    /// Takes the findings so far.
    pub fn take_findings(&mut self) -> Vec<CoherenceFinding> {
        std::mem::take(&mut self.findings)
    }

    /// Replays `records`, which continue the trace.
    pub fn apply_all(&mut self, records: &[TraceRecord]) -> Result<(), TraceTooLarge> {
        records.iter().try_for_each(|&record| self.apply(record))
    }

    fn apply(&mut self, record: TraceRecord) -> Result<(), TraceTooLarge> {
        let TraceRecord { cpu, event } = record;
        let numbered = (self.next_event, event);
        self.next_event += 1;
        let table_finding = match &mut self.tables {
            Some(tables) => tables.apply(cpu as usize, numbered)?,
            None => None,
        };
        // The CPU index is below MAX_CPUS (checked when the record was decoded).
        let cpu = cpu as usize;
        if self.cpus.len() <= cpu {
            self.cpus.resize_with(cpu + 1, CpuTlb::default);
        }
        if let Some(found) = table_finding {
            self.report(found);
        }
        let noted = !matches!(
            event,
            TraceEvent::PteWrite { .. } | TraceEvent::EnterUser | TraceEvent::FrameAllocated { .. }
        );
        if noted {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(numbered);
        }
        match event {
            TraceEvent::PteWrite {
                directory,
                va,
                level,
                old,
                new,
            } => self.pte_write(numbered, directory, va, level, old, new)?,
            TraceEvent::Flush { va } => {
                for page in pages_of(va) {
                    let gone = self.cpus[cpu].stale.remove(&page).map_or(0, |s| s.len());
                    self.untrack(gone);
                }
            }
            TraceEvent::Activate { directory } => {
                self.cpus[cpu].active = Some(directory);
                self.flush_all(cpu);
            }
            TraceEvent::FlushAll => self.flush_all(cpu),
            TraceEvent::FrameFreed { frame } => self.frame_freed(numbered, frame),
            TraceEvent::EnterUser => self.enter_user(cpu, numbered),
            // Frame provenance is judged from the same events by the checker.
            TraceEvent::FrameAllocated { .. } => {}
            // What a shootdown changes is in the targets' own flushes, before their acks.
            TraceEvent::ShootdownRequest { .. } | TraceEvent::ShootdownAck { .. } => {}
        }
        Ok(())
    }

    /// A CR3 load or reload on `cpu`: every translation it cached goes.
    fn flush_all(&mut self, cpu: usize) {
        let stale = std::mem::take(&mut self.cpus[cpu].stale);
        self.untrack(stale.values().map(Vec::len).sum());
    }

    fn track(&mut self) -> Result<(), TraceTooLarge> {
        self.tracked += 1;
        if self.tracked > self.limit {
            return Err(TraceTooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn untrack(&mut self, n: usize) {
        self.tracked = self.tracked.saturating_sub(n);
    }

    fn pte_write(
        &mut self,
        write: Numbered,
        directory: u64,
        va: u64,
        level: u8,
        old: u64,
        new: u64,
    ) -> Result<(), TraceTooLarge> {
        if let Some(before) = leaf(level, va, old) {
            self.forget_leaf(directory, before);
            let stale = Stale {
                translation: before,
                pte: old,
                write,
            };
            let key = (before.size, before.page);
            // Every CPU that has the directory loaded may keep the old translation.
            for cpu in 0..self.cpus.len() {
                if self.cpus[cpu].active == Some(directory) {
                    self.cpus[cpu].stale.entry(key).or_default().push(stale);
                    self.track()?;
                }
            }
        }
        if let Some(after) = leaf(level, va, new) {
            let previous = self
                .leaves
                .entry(directory)
                .or_default()
                .insert(after.page, (after, new));
            match previous {
                Some((replaced, _)) => self.unindex(directory, replaced),
                None => self.track()?,
            }
            let pages = self.frames.entry(directory).or_default();
            pages.entry(after.frame).or_default().push(after.page);
        }
        Ok(())
    }

    fn forget_leaf(&mut self, directory: u64, translation: Translation) {
        let removed = self
            .leaves
            .get_mut(&directory)
            .and_then(|l| l.remove(&translation.page));
        if let Some((present, _)) = removed {
            self.untrack(1);
            self.unindex(directory, present);
        }
    }

    fn unindex(&mut self, directory: u64, translation: Translation) {
        if let Some(pages) = self.frames.get_mut(&directory) {
            if let Some(list) = pages.get_mut(&translation.frame) {
                list.retain(|&p| p != translation.page);
                if list.is_empty() {
                    pages.remove(&translation.frame);
                }
            }
        }
    }

    /// `write`, the flushes, activations and frees after it that are still remembered, and
    /// `trigger`: the events that explain a finding.
    fn explain(&self, write: Numbered, trigger: Numbered) -> Vec<Numbered> {
        let between = self
            .recent
            .iter()
            .filter(|(n, _)| *n > write.0 && *n < trigger.0)
            .copied();
        std::iter::once(write)
            .chain(between)
            .chain(std::iter::once(trigger))
            .collect()
    }

    fn report(&mut self, finding: CoherenceFinding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.dropped += 1;
        }
    }

    /// Every translation `cpu` may cache that is a downgrade of its PTE now is a finding.
    fn enter_user(&mut self, cpu: usize, entry: Numbered) {
        let Some(directory) = self.cpus[cpu].active else {
            return;
        };
        let leaves = self.leaves.get(&directory);
        let mut used: Vec<((u64, u64), Stale, Option<u64>)> = Vec::new();
        for (&key, list) in &self.cpus[cpu].stale {
            let now = leaves.and_then(|l| l.get(&key.1));
            let broken = list
                .iter()
                .find(|s| s.translation.is_downgraded_by(now.map(|(t, _)| t)));
            if let Some(stale) = broken {
                used.push((key, *stale, now.map(|&(_, pte)| pte)));
            }
        }
        used.sort_by_key(|(key, _, _)| *key);
        for (key, stale, now) in used {
            let gone = self.cpus[cpu].stale.remove(&key).map_or(0, |s| s.len());
            self.untrack(gone);
            let now = now.map_or("not present".into(), |pte| format!("{pte:#x}"));
            self.report(CoherenceFinding {
                rule: Rule::StaleTlbEntry,
                directory,
                va: key.1,
                pte: stale.pte,
                detail: format!(
                    "PTE changed from {:#x} to {now} at trace event {}, and ring 3 was entered{} \
                     at event {} with no flush of the page or CR3 load on that CPU in between",
                    stale.pte,
                    stale.write.0,
                    self.on(cpu),
                    entry.0
                ),
                events: self.explain(stale.write, entry),
            });
        }
    }

    /// ` on cpu N` when the trace has named more than one CPU (so a one-CPU finding reads as
    /// it always did).
    fn on(&self, cpu: usize) -> String {
        if self.cpus.len() > 1 {
            format!(" on cpu {cpu}")
        } else {
            String::new()
        }
    }

    /// The frame must not be reachable through a translation any CPU may cache. A freed PML4
    /// ends its directory: what the trace knew of it goes (the frame may become another one).
    fn frame_freed(&mut self, freed: Numbered, frame: u64) {
        if let Some(leaves) = self.leaves.remove(&frame) {
            self.untrack(leaves.len());
            self.frames.remove(&frame);
        }
        for cpu in 0..self.cpus.len() {
            if let Some(finding) = self.cached_frame(cpu, freed, frame) {
                return self.report(finding);
            }
        }
    }

    /// The finding if `cpu` may cache a translation to `frame`, freed at `freed`.
    fn cached_frame(&self, cpu: usize, freed: Numbered, frame: u64) -> Option<CoherenceFinding> {
        let tlb = &self.cpus[cpu];
        let directory = tlb.active?;
        let inside = |t: &Translation| (t.frame..t.frame.saturating_add(t.size)).contains(&frame);
        let stale = tlb
            .stale
            .values()
            .flatten()
            .filter(|s| inside(&s.translation))
            .min_by_key(|s| s.write.0);
        if let Some(stale) = stale {
            return Some(CoherenceFinding {
                rule: Rule::FrameFreedWhileCached,
                directory,
                va: stale.translation.page,
                pte: stale.pte,
                detail: format!(
                    "frame {frame:#x} freed at trace event {} while the translation its PTE lost \
                     at event {} may still be cached{} (no flush of the page or CR3 load there yet)",
                    freed.0,
                    stale.write.0,
                    self.on(cpu)
                ),
                events: self.explain(stale.write, freed),
            });
        }
        let page = *self.frames.get(&directory)?.get(&frame)?.first()?;
        let pte = self.leaves[&directory][&page].1;
        Some(CoherenceFinding {
            rule: Rule::FrameFreedWhileCached,
            directory,
            va: page,
            pte,
            detail: format!(
                "frame {frame:#x} freed at trace event {} while page {page:#x} of the active \
                 directory{} still maps it",
                freed.0,
                self.on(cpu)
            ),
            events: vec![freed],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u64 = 0x42000;
    const PAGE: u64 = 0x40_0000;
    const PTE: u64 = 0x8000_0000_0004_6007; // frame 0x46000, present, writable, user, NX
    const PT: u8 = 3;

    fn write(old: u64, new: u64) -> TraceEvent {
        TraceEvent::PteWrite {
            directory: DIR,
            va: PAGE,
            level: PT,
            old,
            new,
        }
    }

    /// `events` as CPU 0 made them.
    fn cpu0(events: &[TraceEvent]) -> Vec<TraceRecord> {
        on(0, events)
    }

    fn on(cpu: u32, events: &[TraceEvent]) -> Vec<TraceRecord> {
        events
            .iter()
            .map(|&event| TraceRecord { cpu, event })
            .collect()
    }

    fn replay(events: &[TraceEvent]) -> Vec<Rule> {
        replay_records(&cpu0(events))
    }

    fn replay_records(records: &[TraceRecord]) -> Vec<Rule> {
        let mut c = Coherence::new(64 << 20);
        c.apply_all(records).expect("small trace");
        c.take_findings().iter().map(|f| f.rule).collect()
    }

    const ACTIVATE: TraceEvent = TraceEvent::Activate { directory: DIR };
    const FLUSH: TraceEvent = TraceEvent::Flush { va: PAGE };
    const FREE: TraceEvent = TraceEvent::FrameFreed { frame: 0x46000 };

    #[test]
    fn cached_lists_present_and_stale_translations_of_the_active_directory_only() {
        let mut c = Coherence::new(64 << 20);
        c.apply_all(&cpu0(&[ACTIVATE, write(0, PTE)]))
            .expect("small trace");
        let present = c.cached(DIR);
        assert_eq!(present.len(), 1);
        assert_eq!(
            (present[0].translation.page, present[0].stale_since),
            (PAGE, None)
        );
        // Cleared without a flush: the old translation stays, stale since event 2.
        c.apply_all(&cpu0(&[write(PTE, 0)])).expect("small trace");
        let stale = c.cached(DIR);
        assert_eq!(stale.len(), 1);
        assert_eq!((stale[0].pte, stale[0].stale_since), (PTE, Some(2)));
        c.apply_all(&cpu0(&[FLUSH])).expect("small trace");
        assert!(c.cached(DIR).is_empty());
        assert!(c.cached(0x99000).is_empty(), "not the active directory");
        assert_eq!(c.events_seen(), 4);
    }

    #[test]
    fn a_correct_unmap_is_clean() {
        let events = [
            ACTIVATE,
            write(0, PTE),
            FLUSH,
            write(PTE, 0),
            FLUSH,
            FREE,
            TraceEvent::EnterUser,
        ];
        assert!(replay(&events).is_empty());
    }

    #[test]
    fn ring_3_before_the_flush_uses_a_stale_entry() {
        let events = [
            ACTIVATE,
            write(0, PTE),
            write(PTE, 0),
            TraceEvent::EnterUser,
        ];
        assert_eq!(replay(&events), [Rule::StaleTlbEntry]);
    }

    #[test]
    fn a_flush_of_the_wrong_page_leaves_the_entry() {
        let wrong = TraceEvent::Flush { va: PAGE + 0x1000 };
        let events = [
            ACTIVATE,
            write(0, PTE),
            write(PTE, 0),
            wrong,
            TraceEvent::EnterUser,
        ];
        assert_eq!(replay(&events), [Rule::StaleTlbEntry]);
    }

    #[test]
    fn a_cr3_load_drops_everything() {
        let other = TraceEvent::Activate { directory: 0x99000 };
        let events = [
            ACTIVATE,
            write(0, PTE),
            write(PTE, 0),
            other,
            ACTIVATE,
            TraceEvent::EnterUser,
        ];
        assert!(replay(&events).is_empty());
    }

    #[test]
    fn a_write_to_an_inactive_directory_caches_nothing() {
        let other = TraceEvent::Activate { directory: 0x99000 };
        let events = [other, write(0, PTE), write(PTE, 0), TraceEvent::EnterUser];
        assert!(replay(&events).is_empty());
    }

    #[test]
    fn losing_write_is_a_downgrade_and_gaining_it_is_not() {
        let read_only = PTE & !2;
        let down = [
            ACTIVATE,
            write(0, PTE),
            write(PTE, read_only),
            TraceEvent::EnterUser,
        ];
        assert_eq!(replay(&down), [Rule::StaleTlbEntry]);
        let up = [
            ACTIVATE,
            write(0, read_only),
            write(read_only, PTE),
            TraceEvent::EnterUser,
        ];
        assert!(replay(&up).is_empty());
    }

    #[test]
    fn freeing_before_the_flush_frees_a_cached_frame() {
        let events = [ACTIVATE, write(0, PTE), FLUSH, write(PTE, 0), FREE, FLUSH];
        assert_eq!(replay(&events), [Rule::FrameFreedWhileCached]);
    }

    #[test]
    fn freeing_a_frame_still_mapped_in_the_active_directory_is_a_finding() {
        let events = [ACTIVATE, write(0, PTE), FLUSH, FREE];
        assert_eq!(replay(&events), [Rule::FrameFreedWhileCached]);
    }

    #[test]
    fn the_kernel_half_is_not_tracked() {
        let kernel = TraceEvent::PteWrite {
            directory: DIR,
            va: 0xffff_8000_0000_0000,
            level: 2,
            old: 0x8000_0000_0000_0083,
            new: 0,
        };
        assert!(replay(&[ACTIVATE, kernel, TraceEvent::EnterUser]).is_empty());
    }

    #[test]
    fn a_hostile_trace_cannot_grow_the_state_without_bound() {
        let mut c = Coherence::new(16 << 20);
        let flood = (0..1u64 << 20).map(|i| TraceEvent::PteWrite {
            directory: DIR,
            va: i << 12,
            level: PT,
            old: 0,
            new: PTE,
        });
        let result = flood.into_iter().try_for_each(|e| c.apply_all(&cpu0(&[e])));
        assert!(result.is_err());
    }

    /// CPU 1 ran the directory (and idles on it); CPU 0 clears the PTE and flushes its own TLB.
    fn cleared_on_cpu0_while_cpu1_has_it_loaded() -> Vec<TraceRecord> {
        let mut records = cpu0(&[ACTIVATE, write(0, PTE)]);
        records.extend(on(1, &[ACTIVATE, TraceEvent::EnterUser]));
        records.extend(cpu0(&[write(PTE, 0), FLUSH]));
        records
    }

    #[test]
    fn a_frame_freed_before_the_other_cpu_flushed_is_freed_while_cached() {
        let mut records = cleared_on_cpu0_while_cpu1_has_it_loaded();
        records.extend(cpu0(&[FREE]));
        assert_eq!(replay_records(&records), [Rule::FrameFreedWhileCached]);
        let mut c = Coherence::new(64 << 20);
        c.apply_all(&records).expect("small trace");
        let found = c.take_findings();
        assert!(found[0].detail.contains("on cpu 1"), "{}", found[0].detail);
    }

    #[test]
    fn a_shootdown_served_before_the_free_is_clean() {
        let mut records = cleared_on_cpu0_while_cpu1_has_it_loaded();
        let request = TraceEvent::ShootdownRequest {
            directory: DIR,
            targets: CpuSet::EMPTY.with(1),
            scope: shared_mm::trace::FlushScope::Pages(1),
        };
        records.extend(cpu0(&[request]));
        records.extend(on(1, &[FLUSH, TraceEvent::ShootdownAck { sender: 0 }]));
        records.extend(cpu0(&[FREE, TraceEvent::EnterUser]));
        records.extend(on(1, &[TraceEvent::EnterUser]));
        assert!(replay_records(&records).is_empty());
    }

    #[test]
    fn the_other_cpu_entering_ring_3_before_its_flush_uses_a_stale_entry() {
        let mut records = cleared_on_cpu0_while_cpu1_has_it_loaded();
        records.extend(cpu0(&[TraceEvent::EnterUser]));
        assert!(replay_records(&records).is_empty(), "CPU 0 flushed");
        records.extend(on(1, &[TraceEvent::EnterUser]));
        assert_eq!(replay_records(&records), [Rule::StaleTlbEntry]);
    }

    #[test]
    fn a_cpu_that_loaded_another_directory_caches_nothing_of_this_one() {
        let mut records = cpu0(&[ACTIVATE, write(0, PTE)]);
        let other = TraceEvent::Activate { directory: 0x99000 };
        records.extend(on(1, &[ACTIVATE, TraceEvent::EnterUser, other]));
        records.extend(cpu0(&[write(PTE, 0), FLUSH, FREE]));
        records.extend(on(1, &[TraceEvent::EnterUser]));
        assert!(replay_records(&records).is_empty());
        let mut c = Coherence::new(64 << 20);
        c.apply_all(&records).expect("small trace");
        assert_eq!(c.cpus_caching(DIR), CpuSet::EMPTY.with(0));
    }
}
