//! The agreement checker's state between checks, and one check: the region lists and the
//! host's own walk of each space's tables, rule by rule.
//!
//! The state remembers, for each space, the present leaves its last walk found and the regions
//! it was checked against, and which frames its user pages map; so a check can walk only what
//! changed since the last one (see [`update`]) and still see a frame that two spaces map. With
//! sharing, a frame may be mapped more than once: by each private page whose object holds it
//! (copy-on-write after a fork: the reference count says how many), and by the same page of a
//! shared object in every space that maps the object (which counts once). Everything it keeps
//! and does is bounded by guest RAM: frames outside RAM are not tracked, the frames tracked in
//! all are at most [`FRAME_BUDGET_PER_RAM_PAGE`] per RAM page, a walk stops at its own budget,
//! and at most [`MAX_PER_RULE`] findings per rule are kept per check (the rest are counted in
//! one more finding).

mod cross_check;
mod sharing;
mod tables;
mod update;

use crate::finding::{region_containing, Finding};
use crate::provenance::Provenance;
use crate::rule::Rule;
use mm_driver::driver::SpaceSnapshot;
use shared_mm::abi::access_bits::{EXECUTE, READ, USER, WRITE};
use shared_mm::abi::{
    RegionRecord, KERNEL_SPACE, KERNEL_SPACE_BASE, USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE,
};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use x86_paging::frame_map::{FrameMap, FrameSet};
use x86_paging::page_walk::{
    leaves_in, translate, EnteredTable, Leaf, Leaves, WalkError, LOWER_HALF, UPPER_HALF,
};

use tables::Tables;

/// Findings one check keeps per rule.
pub const MAX_PER_RULE: usize = 32;
/// Frame mappings tracked per page of guest RAM, over all spaces.
pub const FRAME_BUDGET_PER_RAM_PAGE: u64 = 4;

const PAGE: u64 = 4096;

/// The total ranges region lists must lie in: the kernel's, and a user space's.
const KERNEL_TOTAL: (u64, u64) = (KERNEL_SPACE_BASE, u64::MAX);
const USER_TOTAL: (u64, u64) = (USER_SPACE_BASE, USER_SPACE_END - 1);

/// One user page mapping a frame: its space, its address, the shared object it belongs to (0
/// for private memory), and whether it maps it writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct User {
    space: u32,
    va: u64,
    object: u64,
    writable: bool,
}

/// Reference counts of frames held more than once, as the guest reported them.
pub type Refs = FrameMap<u64, u32>;

/// What the checker remembers between checks.
pub struct Agreement {
    /// 4 KiB frame -> the user pages mapping it, in the order seen.
    frame_users: FrameMap<u64, Vec<User>>,
    /// (shared object, page) -> the (space, frame) of each space mapping that page.
    shared_pages: FrameMap<(u64, u64), Vec<(u32, u64)>>,
    /// Space -> what its walks found.
    spaces: FrameMap<u32, Walked>,
    /// The reference counts of the last check, and the frames whose count it saw change.
    last_refs: Refs,
    refs_changed: Vec<u64>,
    tracked: u64,
    /// The (space, frame, page) of every user page counted since the last check started.
    added: Vec<(u32, u64, u64)>,
    /// One past the last byte of guest RAM.
    ram_end: u64,
    /// The memory map the host wrote, when known: every walked table and user page must lie
    /// in its usable RAM (`frame-provenance`).
    provenance: Option<Provenance>,
}

/// What the checker knows of one space's tables and regions.
#[derive(Debug)]
struct Walked {
    /// The directory walked.
    cr3: u64,
    /// Its present leaves (of its half: the lower one for a user space, the upper one for the
    /// kernel), by address.
    leaves: BTreeMap<u64, Mapped>,
    /// The tables its walks entered, to tell from the frames the guest wrote what changed.
    tables: Tables,
    /// Whether its walks went through within their budget (only then can a check follow them
    /// up with the entries that changed).
    complete: bool,
    /// The regions its leaves were judged against.
    regions: Vec<RegionRecord>,
}

/// A present leaf, with the shared object of the region holding it (0: private memory, or no
/// region), and whether its frames are tracked in [`Agreement::frame_users`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapped {
    leaf: Leaf,
    object: u64,
    tracked: bool,
}

/// One check in progress.
pub struct Check<'a> {
    state: &'a mut Agreement,
    refs: &'a Refs,
    findings: Vec<Finding>,
    /// Findings past [`MAX_PER_RULE`], per (space, rule).
    dropped: BTreeMap<(u32, Rule), usize>,
    budget_reported: bool,
    /// Frames an incremental check saw gain or lose a mapper, or change reference count: the
    /// sharing rules are checked for each at the end.
    affected: FrameSet<u64>,
}

impl Agreement {
    /// A checker for a guest whose RAM ends at `ram_end`.
    pub fn new(ram_end: u64) -> Self {
        Agreement {
            frame_users: FrameMap::default(),
            shared_pages: FrameMap::default(),
            spaces: FrameMap::default(),
            last_refs: Refs::default(),
            refs_changed: Vec::new(),
            tracked: 0,
            added: Vec::new(),
            ram_end,
            provenance: None,
        }
    }

    /// The same checker, also checking frame provenance against `provenance`.
    pub fn with_provenance(self, provenance: Option<Provenance>) -> Self {
        Agreement { provenance, ..self }
    }

    /// A checker for the RAM of `mem`.
    pub fn for_memory<M: GuestMemory + ?Sized>(mem: &M) -> Self {
        let ram_end = mem
            .physical_memory()
            .map_or(shared_mm::boot_info::MAX_GUEST_RAM, |m| {
                vm_memory::GuestMemoryBackend::last_addr(m)
                    .0
                    .saturating_add(1)
            });
        Agreement::new(ram_end)
    }

    /// Drops what the walks of `space` recorded (it is walked again, or gone).
    pub fn forget(&mut self, space: u32) {
        let Some(walked) = self.spaces.remove(&space) else {
            return;
        };
        for mapped in walked.leaves.values() {
            self.untrack(space, mapped);
        }
    }

    /// Stops counting the frames of `mapped` (a leaf of `space`) as mapped.
    fn untrack(&mut self, space: u32, mapped: &Mapped) {
        if !mapped.tracked {
            return;
        }
        let leaf = &mapped.leaf;
        for frame in frames_of(leaf, self.ram_end) {
            let va = leaf.va + (frame - leaf.phys);
            if let Some(users) = self.frame_users.get_mut(&frame) {
                let before = users.len();
                users.retain(|u| (u.space, u.va) != (space, va));
                self.tracked -= (before - users.len()) as u64;
                if users.is_empty() {
                    self.frame_users.remove(&frame);
                }
            }
            if mapped.object == 0 {
                continue;
            }
            let key = (mapped.object, va);
            if let Some(mappers) = self.shared_pages.get_mut(&key) {
                mappers.retain(|&(s, _)| s != space);
                if mappers.is_empty() {
                    self.shared_pages.remove(&key);
                }
            }
        }
    }

    /// The (frame, page) pairs the user pages of `space` mapped at its last walk.
    pub fn mapped(&self, space: u32) -> Vec<(u64, u64)> {
        let leaves = self.spaces.get(&space).map(|w| w.leaves.values());
        let tracked = leaves.into_iter().flatten().filter(|m| m.tracked);
        tracked
            .flat_map(|m| {
                let leaf = m.leaf;
                frames_of(&leaf, self.ram_end)
                    .map(move |frame| (frame, leaf.va + (frame - leaf.phys)))
            })
            .filter(|(frame, va)| {
                let users = self.frame_users.get(frame);
                users.is_some_and(|u| u.iter().any(|u| (u.space, u.va) == (space, *va)))
            })
            .collect()
    }

    /// The (space, frame, page) of every user page the last check counted as newly mapped
    /// (each page a whole walk found, and those an incremental one walked again).
    pub fn added(&self) -> &[(u32, u64, u64)] {
        &self.added
    }

    /// The (space, page) of every user page that maps `frame`.
    pub fn users_of(&self, frame: u64) -> impl Iterator<Item = (u32, u64)> + '_ {
        let users = self.frame_users.get(&frame).into_iter().flatten();
        users.map(|u| (u.space, u.va))
    }

    /// The spaces whose walks are remembered.
    pub fn spaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.spaces.keys().copied()
    }

    /// Leaves and tables remembered over all spaces.
    pub fn remembered(&self) -> (usize, usize) {
        let leaves = self.spaces.values().map(|w| w.leaves.len()).sum();
        let tables = self.spaces.values().map(|w| w.tables.len()).sum();
        (leaves, tables)
    }

    /// Whether a check can follow up the last walk of `space` (see [`Check::update`]): it was
    /// walked, through the directory `cr3`, within its budget.
    pub fn can_follow(&self, space: u32, cr3: u64) -> bool {
        let walked = self.spaces.get(&space);
        walked.is_some_and(|w| w.complete && w.cr3 == cr3 & !0xfff)
    }

    /// Whether the guest wrote (`written`: frames) one of the tables the walks of `space`
    /// entered.
    pub fn tables_written(&self, space: u32, written: &FrameSet<u64>) -> bool {
        let walked = self.spaces.get(&space);
        walked.is_some_and(|w| w.tables.touched_by(written))
    }

    /// Starts a check, with the guest's reference counts of frames held more than once. The
    /// frames whose count changed since the last check are held to the sharing rules again.
    pub fn check<'a>(&'a mut self, refs: &'a Refs) -> Check<'a> {
        let changed = refs
            .iter()
            .filter(|&(f, n)| self.last_refs.get(f) != Some(n));
        let mut affected: Vec<u64> = changed.map(|(&f, _)| f).collect();
        affected.extend(self.last_refs.keys().filter(|f| !refs.contains_key(f)));
        self.last_refs.clone_from(refs);
        self.refs_changed.clone_from(&affected);
        self.check_with(refs, affected.into_iter().collect())
    }

    /// A check that holds the frames `affected` to the sharing rules at its end.
    fn check_with<'a>(&'a mut self, refs: &'a Refs, affected: FrameSet<u64>) -> Check<'a> {
        self.added.clear();
        Check {
            state: self,
            refs,
            findings: Vec::new(),
            dropped: BTreeMap::new(),
            budget_reported: false,
            affected,
        }
    }
}

/// The 4 KiB frames of `leaf` inside RAM (which ends at `ram_end`).
fn frames_of(leaf: &Leaf, ram_end: u64) -> impl Iterator<Item = u64> {
    let end = leaf.phys.saturating_add(leaf.size).min(ram_end);
    (leaf.phys..end).step_by(PAGE as usize)
}

fn kernel_half<M: GuestMemory + ?Sized>(mem: &M, cr3: u64) -> Option<[u8; 2048]> {
    let mut half = [0u8; 2048];
    mem.read_slice(&mut half, GuestAddress((cr3 & !0xfff) + 2048))
        .ok()?;
    Some(half)
}

impl Check<'_> {
    fn report(
        &mut self,
        space: u32,
        rule: Rule,
        leaf: Option<&Leaf>,
        region: Option<&RegionRecord>,
        detail: String,
    ) {
        let kept = self
            .findings
            .iter()
            .filter(|f| f.space == space && f.rule == rule)
            .count();
        if kept >= MAX_PER_RULE {
            *self.dropped.entry((space, rule)).or_default() += 1;
            return;
        }
        self.findings.push(Finding {
            space,
            rule,
            va: leaf.map(|l| l.va),
            pte: leaf.map(|l| l.pte.raw()),
            region: region.copied(),
            detail,
            events: Vec::new(),
        });
    }

    /// The findings, with one more per (space, rule) that had more than [`MAX_PER_RULE`].
    pub fn finish(mut self) -> Vec<Finding> {
        self.judge_affected();
        for ((space, rule), n) in std::mem::take(&mut self.dropped) {
            self.findings.push(Finding {
                space,
                rule,
                va: None,
                pte: None,
                region: None,
                detail: format!("{n} more findings of this rule in this space not shown"),
                events: Vec::new(),
            });
        }
        self.findings
    }

    /// The kernel's region list and the upper half of its tables.
    pub fn kernel<M: GuestMemory + ?Sized>(&mut self, mem: &M, kernel: &SpaceSnapshot) {
        self.start_space(kernel, UPPER_HALF);
        self.region_list(kernel, KERNEL_TOTAL);
        let walk = leaves_in(mem, kernel.cr3, UPPER_HALF);
        self.walk(mem, KERNEL_SPACE, walk, |c, leaf| {
            c.kernel_leaf(kernel, leaf)
        });
    }

    /// One user space: its region list, the lower half of its tables, its kernel half against
    /// the kernel's, and its trampoline. A space walked again must be [`Agreement::forget`]ten
    /// first, before any space of the check is walked, or its old frames look mapped twice.
    pub fn space<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        view: &SpaceSnapshot,
        kernel: &SpaceSnapshot,
    ) {
        self.start_space(view, LOWER_HALF);
        self.region_list(view, USER_TOTAL);
        let walk = leaves_in(mem, view.cr3, LOWER_HALF);
        self.walk(mem, view.space, walk, |c, leaf| c.user_leaf(view, leaf));
        self.kernel_half(mem, view, kernel);
        self.trampoline(mem, view);
    }

    /// Remembers `view`'s directory and regions as those its leaves are judged against, and no
    /// leaf or table yet (of `half`, the half walked).
    fn start_space(&mut self, view: &SpaceSnapshot, half: std::ops::RangeInclusive<u64>) {
        let walked = Walked {
            cr3: view.cr3 & !0xfff,
            leaves: BTreeMap::new(),
            tables: Tables::new(half),
            complete: true,
            regions: view.regions.clone(),
        };
        self.state.spaces.insert(view.space, walked);
    }

    /// PML4 slots 256..511 of `view`'s directory are the kernel's.
    fn kernel_half<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        view: &SpaceSnapshot,
        kernel: &SpaceSnapshot,
    ) {
        let kernel_slots = kernel_half(mem, kernel.cr3);
        if kernel_slots.is_none() || kernel_half(mem, view.cr3) != kernel_slots {
            let detail = "PML4 slots 256..511 differ from the kernel's".to_string();
            self.report(view.space, Rule::KernelHalfDiffers, None, None, detail);
        }
    }

    /// The trampoline page is mapped in `view`'s directory.
    fn trampoline<M: GuestMemory + ?Sized>(&mut self, mem: &M, view: &SpaceSnapshot) {
        if let Ok(None) = translate(mem, view.cr3, USER_TRAMPOLINE) {
            let detail = "trampoline page not mapped".into();
            self.report(view.space, Rule::Trampoline, None, None, detail);
        }
    }

    fn region_list(&mut self, view: &SpaceSnapshot, total: (u64, u64)) {
        let space = view.space;
        if view.regions.len() as u64 != view.reported_count {
            let detail = format!(
                "{} regions exported, tree reports {}",
                view.regions.len(),
                view.reported_count
            );
            self.report(space, Rule::RegionCount, None, None, detail);
        }
        for r in &view.regions {
            let last = r.base.checked_add(r.size.saturating_sub(1));
            if r.size == 0 || r.base < total.0 || last.is_none_or(|l| l > total.1) {
                let detail = format!("outside [{:#x}, {:#x}]", total.0, total.1);
                self.report(space, Rule::RegionOutOfRange, None, Some(r), detail);
            }
        }
        for pair in view.regions.windows(2) {
            if pair[0].base.saturating_add(pair[0].size) > pair[1].base {
                let detail = format!(
                    "overlaps or precedes the next region at {:#x}",
                    pair[1].base
                );
                self.report(space, Rule::RegionsOverlap, None, Some(&pair[0]), detail);
            }
        }
    }

    /// Visits every leaf of `walk` (a walk of `space`'s tables); reports what it cannot walk
    /// and tables that lie where none may, and remembers the tables it entered.
    fn walk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        space: u32,
        walk: Leaves<'_, M>,
        mut visit: impl FnMut(&mut Self, &Leaf),
    ) {
        let mut walk = walk.recording_tables();
        let mut complete = true;
        for leaf in walk.by_ref() {
            match leaf {
                Ok(leaf) => visit(self, &leaf),
                Err(e) => {
                    complete &= !matches!(e, WalkError::BudgetExceeded { .. });
                    self.report(space, Rule::Walk, None, None, e.to_string());
                }
            }
        }
        self.tables_provenance(space, walk.tables());
        if let Some(walked) = self.state.spaces.get_mut(&space) {
            walked.tables.enter(mem, walk.tables(), false);
            walked.complete = complete;
        }
    }

    /// Every table the walk of `space` read (its PML4 first) lies where tables may.
    fn tables_provenance(&mut self, space: u32, tables: &[EnteredTable]) {
        let Some(provenance) = &self.state.provenance else {
            return;
        };
        let misplaced: Vec<String> = tables
            .iter()
            .filter_map(|&EnteredTable { level, table, .. }| {
                let place = provenance.misplaced_table(space, table)?;
                Some(format!("{level:?} table {table:#x} lies {place}"))
            })
            .collect();
        for detail in misplaced {
            self.report(space, Rule::FrameProvenance, None, None, detail);
        }
    }

    /// A user page maps only usable RAM.
    fn leaf_provenance(&mut self, space: u32, leaf: &Leaf) {
        let place = self.state.provenance.as_ref().and_then(|p| {
            let place = p.misplaced(leaf.phys, leaf.size)?;
            Some(format!(
                "page maps frame {:#x}, which lies {place}",
                leaf.phys
            ))
        });
        if let Some(detail) = place {
            self.report(space, Rule::FrameProvenance, Some(leaf), None, detail);
        }
    }

    /// A user leaf: judged by itself and against its region, then its frames counted.
    fn user_leaf(&mut self, view: &SpaceSnapshot, leaf: &Leaf) {
        if let Some(region) = self.user_leaf_alone(view, leaf) {
            self.frames(view.space, leaf, region);
        }
    }

    /// The rules a user leaf keeps by itself and against its region; remembers it. Returns its
    /// region if its frames are to be counted (not the trampoline's, not in a hole).
    fn user_leaf_alone<'v>(
        &mut self,
        view: &'v SpaceSnapshot,
        leaf: &Leaf,
    ) -> Option<&'v RegionRecord> {
        let space = view.space;
        self.leaf_provenance(space, leaf);
        let region = (leaf.va != USER_TRAMPOLINE)
            .then(|| region_containing(&view.regions, leaf.va))
            .flatten();
        self.remember(space, leaf, region);
        if leaf.va == USER_TRAMPOLINE {
            if !leaf.perms.user || leaf.perms.writable || !leaf.perms.executable() {
                let detail = "must be user r-x".into();
                self.report(space, Rule::Trampoline, Some(leaf), None, detail);
            }
            return None;
        }
        let Some(region) = region else {
            let detail = "present page where no region is".into();
            self.report(space, Rule::PteInHole, Some(leaf), None, detail);
            return None;
        };
        self.access(space, leaf, region);
        let access = region.access;
        if leaf.perms.writable
            && leaf.perms.executable()
            && access & (WRITE | EXECUTE) != WRITE | EXECUTE
        {
            let detail = "W+X page".into();
            self.report(
                space,
                Rule::WriteAndExecute,
                Some(leaf),
                Some(region),
                detail,
            );
        }
        Some(region)
    }

    /// Remembers `leaf` as one of `space`'s, in `region` (whose frames are then counted).
    fn remember(&mut self, space: u32, leaf: &Leaf, region: Option<&RegionRecord>) {
        let mapped = Mapped {
            leaf: *leaf,
            object: region.map_or(0, |r| r.object),
            tracked: region.is_some(),
        };
        if let Some(walked) = self.state.spaces.get_mut(&space) {
            walked.leaves.insert(leaf.va, mapped);
        }
    }

    /// Counts the RAM frames `leaf` maps (in `region`) as mapped; the sharing rules look at
    /// each at the end of the check.
    fn frames(&mut self, space: u32, leaf: &Leaf, region: &RegionRecord) {
        for frame in frames_of(leaf, self.state.ram_end) {
            if !self.track(space, leaf, region.object, frame) {
                return self.over_budget(space);
            }
            self.affected.insert(frame);
        }
    }

    /// Counts `frame` (of `leaf`, a page of `space` in shared object `object`, or 0) as
    /// mapped; `false` once the frames tracked reach the budget.
    fn track(&mut self, space: u32, leaf: &Leaf, object: u64, frame: u64) -> bool {
        let budget = (self.state.ram_end / PAGE).saturating_mul(FRAME_BUDGET_PER_RAM_PAGE);
        if self.state.tracked >= budget {
            return false;
        }
        let user = User {
            space,
            va: leaf.va + (frame - leaf.phys),
            object,
            writable: leaf.perms.writable,
        };
        self.state.frame_users.entry(frame).or_default().push(user);
        self.state.tracked += 1;
        self.state.added.push((space, frame, user.va));
        if object != 0 {
            let mappers = self
                .state
                .shared_pages
                .entry((object, user.va))
                .or_default();
            mappers.push((space, frame));
        }
        true
    }

    fn over_budget(&mut self, space: u32) {
        if !std::mem::replace(&mut self.budget_reported, true) {
            let detail = format!(
                "the spaces map more than {FRAME_BUDGET_PER_RAM_PAGE} frames per page of RAM; \
                 the rest is not checked for frames mapped past their references"
            );
            self.report(space, Rule::Walk, None, None, detail);
        }
    }

    fn kernel_leaf(&mut self, kernel: &SpaceSnapshot, leaf: &Leaf) {
        self.remember(KERNEL_SPACE, leaf, None);
        let Some(region) = region_containing(&kernel.regions, leaf.va) else {
            let detail = "kernel page outside every kernel region".into();
            return self.report(KERNEL_SPACE, Rule::PteInHole, Some(leaf), None, detail);
        };
        self.access(KERNEL_SPACE, leaf, region);
    }

    /// The page must grant nothing its region does not: presence needs READ, and user, write
    /// and execute access need USER, WRITE and EXECUTE (kernel regions never have USER).
    fn access(&mut self, space: u32, leaf: &Leaf, region: &RegionRecord) {
        let access = region.access;
        let broken = [
            (access & READ == 0, "present"),
            (leaf.perms.user && access & USER == 0, "user"),
            (leaf.perms.writable && access & WRITE == 0, "writable"),
            (
                leaf.perms.executable() && access & EXECUTE == 0,
                "executable",
            ),
        ];
        // Every leaf of every check comes here: no list unless something is wrong.
        if broken.iter().all(|&(broken, _)| !broken) {
            return;
        }
        let excess: Vec<&str> = broken
            .into_iter()
            .filter_map(|(broken, what)| broken.then_some(what))
            .collect();
        let detail = format!(
            "page is {} but the region does not allow it",
            excess.join(", ")
        );
        self.report(
            space,
            Rule::PteExceedsRegion,
            Some(leaf),
            Some(region),
            detail,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::access_bits::SHARED;
    use shared_mm::pte::{PageLevel, PageTableFlags, PAGE_SIZE_4K};
    use vm_memory::GuestMemoryMmap;
    use x86_paging::page_walk::PageTableBuilder;

    fn region(base: u64, object: u64) -> RegionRecord {
        let shared = if object != 0 { SHARED } else { 0 };
        RegionRecord {
            base,
            size: PAGE,
            access: USER | READ | WRITE | shared,
            backed: 1,
            object,
            name: RegionRecord::name_field("anon"),
        }
    }

    fn view(space: u32, cr3: u64, regions: Vec<RegionRecord>) -> SpaceSnapshot {
        SpaceSnapshot {
            space,
            cr3,
            reported_count: regions.len() as u64,
            regions,
        }
    }

    /// Guest memory with two spaces' tables: space 1 maps page 0x400000, space 2 page `va2`,
    /// both to frame 0x5000, with `flags`.
    struct TwoSpaces {
        mem: GuestMemoryMmap,
        cr3: [u64; 2],
    }

    fn two_spaces(va2: u64, flags: [PageTableFlags; 2]) -> TwoSpaces {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut first = PageTableBuilder::new(&mem, (1 << 20)..(8 << 20)).unwrap();
        first
            .map(0x40_0000, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, flags[0])
            .unwrap();
        let mut second = PageTableBuilder::new(&mem, (8 << 20)..(16 << 20)).unwrap();
        second
            .map(va2, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, flags[1])
            .unwrap();
        let cr3 = [first.cr3(), second.cr3()];
        TwoSpaces { mem, cr3 }
    }

    const RW: PageTableFlags = PageTableFlags::WRITABLE.union(PageTableFlags::USER);
    const RO: PageTableFlags = PageTableFlags::USER;

    fn sharing_rules(found: Vec<Finding>) -> Vec<Rule> {
        let sharing = [
            Rule::FrameOverMapped,
            Rule::CowWritable,
            Rule::SharedPageDiffers,
        ];
        let rules = found.into_iter().map(|f| f.rule);
        rules.filter(|r| sharing.contains(r)).collect()
    }

    /// Both spaces walked in one check, with `refs` and the two regions given.
    fn check_both(t: &TwoSpaces, refs: &Refs, regions: [RegionRecord; 2]) -> Vec<Rule> {
        let kernel = view(KERNEL_SPACE, 0, Vec::new());
        let mut state = Agreement::for_memory(&t.mem);
        let mut check = state.check(refs);
        check.space(&t.mem, &view(1, t.cr3[0], vec![regions[0]]), &kernel);
        check.space(&t.mem, &view(2, t.cr3[1], vec![regions[1]]), &kernel);
        sharing_rules(check.finish())
    }

    #[test]
    fn a_frame_of_an_unchanged_space_is_still_seen_mapped_past_its_references() {
        let t = two_spaces(0x80_0000, [RW, RW]);
        let kernel = view(KERNEL_SPACE, 0, Vec::new());
        let refs = Refs::default();
        let mut state = Agreement::for_memory(&t.mem);
        let mut first = state.check(&refs);
        first.space(
            &t.mem,
            &view(1, t.cr3[0], vec![region(0x40_0000, 0)]),
            &kernel,
        );
        assert!(sharing_rules(first.finish()).is_empty());
        // Only space 2 changed: it is walked, space 1 is not, and the frame mapped twice shows.
        let mut second = state.check(&refs);
        let two = view(2, t.cr3[1], vec![region(0x80_0000, 0)]);
        second.space(&t.mem, &two, &kernel);
        assert_eq!(sharing_rules(second.finish()), [Rule::FrameOverMapped]);
        // Space 1 gone: its frames are forgotten.
        state.forget(1);
        state.forget(2);
        let mut third = state.check(&refs);
        third.space(&t.mem, &two, &kernel);
        assert!(sharing_rules(third.finish()).is_empty());
    }

    #[test]
    fn copy_on_write_frames_may_be_mapped_once_per_reference_but_only_read_only() {
        let regions = [region(0x40_0000, 0), region(0x40_0000, 0)];
        let mut refs = Refs::default();
        refs.insert(0x5000, 2);
        let read_only = two_spaces(0x40_0000, [RO, RO]);
        assert!(check_both(&read_only, &refs, regions).is_empty());
        let parent_writable = two_spaces(0x40_0000, [RW, RO]);
        assert_eq!(
            check_both(&parent_writable, &refs, regions),
            [Rule::CowWritable]
        );
        // One reference only: the second private mapping is one too many.
        assert_eq!(
            check_both(&read_only, &Refs::default(), regions),
            [Rule::FrameOverMapped]
        );
    }

    #[test]
    fn a_shared_page_counts_once_and_must_be_the_same_frame_in_every_space() {
        let refs = Refs::default();
        let shared = [region(0x40_0000, 7), region(0x40_0000, 7)];
        let same = two_spaces(0x40_0000, [RW, RW]);
        assert!(check_both(&same, &refs, shared).is_empty());
        // The same frame at another page of the object: two pages of one object on one frame.
        let moved = two_spaces(0x40_1000, [RW, RW]);
        let regions = [
            region(0x40_0000, 7),
            RegionRecord {
                base: 0x40_1000,
                ..shared[1]
            },
        ];
        assert_eq!(check_both(&moved, &refs, regions), [Rule::FrameOverMapped]);
    }

    #[test]
    fn a_shared_page_on_two_frames_is_found() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut first = PageTableBuilder::new(&mem, (1 << 20)..(8 << 20)).unwrap();
        first
            .map(0x40_0000, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let mut second = PageTableBuilder::new(&mem, (8 << 20)..(16 << 20)).unwrap();
        second
            .map(0x40_0000, 0x6000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let t = TwoSpaces {
            cr3: [first.cr3(), second.cr3()],
            mem,
        };
        let shared = [region(0x40_0000, 7), region(0x40_0000, 7)];
        assert_eq!(
            check_both(&t, &Refs::default(), shared),
            [Rule::SharedPageDiffers]
        );
    }

    #[test]
    fn findings_past_the_cap_are_counted_in_one() {
        let refs = Refs::default();
        let mut state = Agreement::new(16 << 20);
        let mut check = state.check(&refs);
        for _ in 0..MAX_PER_RULE + 5 {
            check.report(1, Rule::PteInHole, None, None, "stale".into());
        }
        let found = check.finish();
        assert_eq!(found.len(), MAX_PER_RULE + 1);
        assert!(found.last().unwrap().detail.starts_with("5 more findings"));
    }

    /// The rules among `found` that an update can change (not the trampoline's or the kernel
    /// half's, which these tables do not have).
    fn page_rules(found: Vec<Finding>) -> Vec<(Rule, Option<u64>)> {
        let page = [
            Rule::PteInHole,
            Rule::PteExceedsRegion,
            Rule::IncrementalCheck,
        ];
        let found = found.into_iter().filter(|f| page.contains(&f.rule));
        found.map(|f| (f.rule, f.va)).collect()
    }

    /// The page-table frame holding the entry that maps `va`.
    fn table_of(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> u64 {
        let path = x86_paging::page_walk::walk(mem, cr3, va).unwrap();
        path.entries().last().unwrap().addr & !0xfff
    }

    #[test]
    fn an_update_walks_again_the_tables_written_and_the_pages_whose_region_changed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut tables = PageTableBuilder::new(&mem, (1 << 20)..(8 << 20)).unwrap();
        tables
            .map(0x40_0000, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let cr3 = tables.cr3();
        let kernel = view(KERNEL_SPACE, 0, Vec::new());
        let (refs, nothing) = (Refs::default(), FrameSet::default());
        let mut state = Agreement::for_memory(&mem);
        let rwx = RegionRecord {
            access: USER | READ | WRITE | EXECUTE,
            ..region(0x40_0000, 0)
        };
        let rw = view(1, cr3, vec![rwx]);
        let mut first = state.check(&refs);
        first.space(&mem, &rw, &kernel);
        assert!(page_rules(first.finish()).is_empty());
        assert!(state.can_follow(1, cr3) && !state.can_follow(1, cr3 + 0x1000));
        // The region made read-only, the tables untouched: its page is judged again.
        let read_only = RegionRecord {
            access: USER | READ | EXECUTE,
            ..rwx
        };
        let ro = view(1, cr3, vec![read_only]);
        let mut second = state.check(&refs);
        assert!(second.update(&mem, &ro, &kernel, &nothing));
        let exceeds = (Rule::PteExceedsRegion, Some(0x40_0000));
        assert_eq!(page_rules(second.finish()), [exceeds]);
        // A page mapped where no region is: its table is written, walked again, and the page
        // found; the unchanged one is not judged again.
        tables
            .map(0x40_1000, 0x6000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let written: FrameSet<u64> = [table_of(&mem, cr3, 0x40_1000)].into_iter().collect();
        assert!(state.tables_written(1, &written));
        let mut third = state.check(&refs);
        assert!(third.update(&mem, &ro, &kernel, &written));
        let hole = (Rule::PteInHole, Some(0x40_1000));
        assert_eq!(page_rules(third.finish()), [exceeds, hole]);
        // What the updates kept is what a full walk finds.
        assert_eq!(state.remembered().0, 2);
        let cross = state.cross_check(&mem, &kernel, std::slice::from_ref(&ro), &[]);
        assert_eq!(page_rules(cross), [exceeds, hole]);
        // A table written behind the checker's back: the cross-check says so.
        tables
            .map(0x7f_0000_0000, 0x7000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let mut fourth = state.check(&refs);
        assert!(fourth.update(&mem, &ro, &kernel, &nothing));
        assert_eq!(page_rules(fourth.finish()), []);
        let cross = state.cross_check(&mem, &kernel, std::slice::from_ref(&ro), &[]);
        let rules: Vec<Rule> = page_rules(cross).into_iter().map(|(r, _)| r).collect();
        assert!(rules.contains(&Rule::IncrementalCheck), "{rules:?}");
        // A new table linked in at the top: the PML4's copy says which entry changed.
        tables
            .map(0x100_0000_0000, 0x8000, PAGE_SIZE_4K, PageLevel::Pt, RW)
            .unwrap();
        let pml4: FrameSet<u64> = [cr3].into_iter().collect();
        let mut fifth = state.check(&refs);
        assert!(fifth.update(&mem, &ro, &kernel, &pml4));
        let new_hole = (Rule::PteInHole, Some(0x100_0000_0000));
        assert_eq!(page_rules(fifth.finish()), [new_hole]);
        let cross = state.cross_check(&mem, &kernel, std::slice::from_ref(&ro), &[]);
        let far_hole = (Rule::PteInHole, Some(0x7f_0000_0000));
        assert_eq!(page_rules(cross), [exceeds, hole, far_hole, new_hole]);
    }
}
