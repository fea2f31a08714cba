//! The agreement checker's state between checks, and one check: the region lists and the
//! host's own walk of each space's tables, rule by rule.
//!
//! The state remembers which frames each space's user pages mapped at its last walk, so a check
//! can walk only the spaces that changed since the last one and still see a frame that two
//! spaces map. With sharing, a frame may be mapped more than once: by each private page whose
//! object holds it (copy-on-write after a fork: the reference count says how many), and by the
//! same page of a shared object in every space that maps the object (which counts once). Everything it keeps and does is bounded by guest RAM: frames outside RAM are not
//! tracked, the frames tracked in all are at most [`FRAME_BUDGET_PER_RAM_PAGE`] per RAM page,
//! the walk stops at its own budget, and at most [`MAX_PER_RULE`] findings per rule are kept
//! per check (the rest are counted in one more finding).

use crate::finding::{region_containing, space_name, Finding};
use crate::provenance::Provenance;
use crate::rule::Rule;
use mm_driver::driver::SpaceSnapshot;
use shared_mm::abi::access_bits::{EXECUTE, READ, USER, WRITE};
use shared_mm::abi::{
    RegionRecord, KERNEL_SPACE, KERNEL_SPACE_BASE, USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE,
};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use x86_paging::frame_map::FrameMap;
use x86_paging::page_walk::{leaves_in, translate, EnteredTable, Leaf, LOWER_HALF, UPPER_HALF};

/// Findings one check keeps per rule.
pub const MAX_PER_RULE: usize = 32;
/// Frame mappings tracked per page of guest RAM, over all spaces.
pub const FRAME_BUDGET_PER_RAM_PAGE: u64 = 4;

const PAGE: u64 = 4096;

/// One user page mapping a frame: its space, its address, and the shared object it belongs to
/// (0 for private memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct User {
    space: u32,
    va: u64,
    object: u64,
}

/// Reference counts of frames held more than once, as the guest reported them.
pub type Refs = FrameMap<u64, u32>;

/// What the checker remembers between checks.
pub struct Agreement {
    /// 4 KiB frame -> the user pages mapping it, in the order seen.
    frame_users: FrameMap<u64, Vec<User>>,
    /// Space -> the frames its user pages mapped at its last walk.
    space_frames: FrameMap<u32, Vec<u64>>,
    /// (shared object, page) -> the (space, frame) of each space mapping that page.
    shared_pages: FrameMap<(u64, u64), Vec<(u32, u64)>>,
    /// Space -> the shared pages it mapped at its last walk.
    space_shared: FrameMap<u32, Vec<(u64, u64)>>,
    tracked: u64,
    /// One past the last byte of guest RAM.
    ram_end: u64,
    /// The memory map the host wrote, when known: every walked table and user page must lie
    /// in its usable RAM (`frame-provenance`).
    provenance: Option<Provenance>,
}

/// One check in progress.
pub struct Check<'a> {
    state: &'a mut Agreement,
    refs: &'a Refs,
    findings: Vec<Finding>,
    /// Findings past [`MAX_PER_RULE`], per (space, rule).
    dropped: BTreeMap<(u32, Rule), usize>,
    budget_reported: bool,
}

impl Agreement {
    /// A checker for a guest whose RAM ends at `ram_end`.
    pub fn new(ram_end: u64) -> Self {
        Agreement {
            frame_users: FrameMap::default(),
            space_frames: FrameMap::default(),
            shared_pages: FrameMap::default(),
            space_shared: FrameMap::default(),
            tracked: 0,
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

    /// Drops what the last walk of `space` recorded (it is walked again, or gone).
    pub fn forget(&mut self, space: u32) {
        for frame in self.space_frames.remove(&space).unwrap_or_default() {
            if let Some(users) = self.frame_users.get_mut(&frame) {
                let before = users.len();
                users.retain(|u| u.space != space);
                self.tracked -= (before - users.len()) as u64;
                if users.is_empty() {
                    self.frame_users.remove(&frame);
                }
            }
        }
        for key in self.space_shared.remove(&space).unwrap_or_default() {
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
        self.space_frames
            .get(&space)
            .into_iter()
            .flatten()
            .filter_map(|&frame| {
                let users = self.frame_users.get(&frame)?;
                let user = users.iter().find(|u| u.space == space)?;
                Some((frame, user.va))
            })
            .collect()
    }

    /// The spaces whose frames are remembered.
    pub fn spaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.space_frames.keys().copied()
    }

    /// Starts a check, with the guest's reference counts of frames held more than once.
    pub fn check<'a>(&'a mut self, refs: &'a Refs) -> Check<'a> {
        Check {
            state: self,
            refs,
            findings: Vec::new(),
            dropped: BTreeMap::new(),
            budget_reported: false,
        }
    }
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
        self.region_list(kernel, (KERNEL_SPACE_BASE, u64::MAX));
        self.walk(mem, KERNEL_SPACE, kernel.cr3, UPPER_HALF, |c, leaf| {
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
        self.state.space_frames.insert(view.space, Vec::new());
        self.region_list(view, (USER_SPACE_BASE, USER_SPACE_END - 1));
        self.walk(mem, view.space, view.cr3, LOWER_HALF, |c, leaf| {
            c.user_leaf(view, leaf)
        });
        let kernel_slots = kernel_half(mem, kernel.cr3);
        if kernel_slots.is_none() || kernel_half(mem, view.cr3) != kernel_slots {
            let detail = "PML4 slots 256..511 differ from the kernel's".to_string();
            self.report(view.space, Rule::KernelHalfDiffers, None, None, detail);
        }
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

    fn walk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        space: u32,
        cr3: u64,
        half: std::ops::RangeInclusive<u64>,
        mut visit: impl FnMut(&mut Self, &Leaf),
    ) {
        let mut walk = leaves_in(mem, cr3, half);
        if self.state.provenance.is_some() {
            walk = walk.recording_tables();
        }
        for leaf in walk.by_ref() {
            match leaf {
                Ok(leaf) => visit(self, &leaf),
                Err(e) => self.report(space, Rule::Walk, None, None, e.to_string()),
            }
        }
        self.tables_provenance(space, walk.tables());
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

    fn user_leaf(&mut self, view: &SpaceSnapshot, leaf: &Leaf) {
        let space = view.space;
        self.leaf_provenance(space, leaf);
        if leaf.va == USER_TRAMPOLINE {
            if !leaf.perms.user || leaf.perms.writable || !leaf.perms.executable() {
                let detail = "must be user r-x".into();
                self.report(space, Rule::Trampoline, Some(leaf), None, detail);
            }
            return;
        }
        let Some(region) = region_containing(&view.regions, leaf.va) else {
            let detail = "present page where no region is".into();
            return self.report(space, Rule::PteInHole, Some(leaf), None, detail);
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
        self.frames(space, leaf, region);
    }

    /// Records the RAM frames `leaf` maps (in `region`), and checks the sharing rules for each.
    fn frames(&mut self, space: u32, leaf: &Leaf, region: &RegionRecord) {
        let end = leaf.phys.saturating_add(leaf.size).min(self.state.ram_end);
        for frame in (leaf.phys..end).step_by(PAGE as usize) {
            let budget = (self.state.ram_end / PAGE).saturating_mul(FRAME_BUDGET_PER_RAM_PAGE);
            if self.state.tracked >= budget {
                return self.over_budget(space);
            }
            let user = User {
                space,
                va: leaf.va + (frame - leaf.phys),
                object: region.object,
            };
            let users = self.state.frame_users.entry(frame).or_default();
            users.push(user);
            self.state.tracked += 1;
            self.state
                .space_frames
                .entry(space)
                .or_default()
                .push(frame);
            self.references(frame, leaf, region);
            if region.object != 0 {
                self.shared_page(user, frame, leaf, region);
            } else if leaf.perms.writable && self.refs.get(&frame).is_some_and(|&n| n > 1) {
                let detail = format!(
                    "frame {frame:#x} is copy-on-write ({} references) but mapped writable",
                    self.refs[&frame]
                );
                self.report(space, Rule::CowWritable, Some(leaf), Some(region), detail);
            }
        }
    }

    /// A frame may be mapped once per reference: each private page counts, and each page of a
    /// shared object once however many spaces map it.
    fn references(&mut self, frame: u64, leaf: &Leaf, region: &RegionRecord) {
        let users = &self.state.frame_users[&frame];
        let last = *users.last().expect("just added");
        let mut shared: Vec<(u64, u64)> = users
            .iter()
            .filter(|u| u.object != 0)
            .map(|u| (u.object, u.va))
            .collect();
        shared.sort_unstable();
        shared.dedup();
        let private = users.iter().filter(|u| u.object == 0).count();
        let mappings = private + shared.len();
        let refs = self.refs.get(&frame).copied().unwrap_or(1) as usize;
        // Only a page that added a mapping is reported: a shared page another space already
        // maps added none.
        let same_page = users
            .iter()
            .filter(|u| u.object == last.object && u.va == last.va)
            .count();
        let added = last.object == 0 || same_page == 1;
        if mappings <= refs || !added {
            return;
        }
        let other = users[0];
        let detail = format!(
            "frame {frame:#x} is mapped {mappings} times ({private} private, {} shared) with \
             {refs} reference(s); also by {} at {:#x}",
            shared.len(),
            space_name(other.space),
            other.va
        );
        self.report(
            last.space,
            Rule::FrameOverMapped,
            Some(leaf),
            Some(region),
            detail,
        );
    }

    /// Every space that maps a page of a shared object maps the same frame there.
    fn shared_page(&mut self, user: User, frame: u64, leaf: &Leaf, region: &RegionRecord) {
        let key = (user.object, user.va);
        let mappers = self.state.shared_pages.entry(key).or_default();
        let differs = mappers.iter().find(|&&(_, f)| f != frame).copied();
        mappers.push((user.space, frame));
        self.state
            .space_shared
            .entry(user.space)
            .or_default()
            .push(key);
        if let Some((other, other_frame)) = differs {
            let detail = format!(
                "page of shared object {} maps frame {frame:#x}, but {} maps it to {other_frame:#x}",
                user.object,
                space_name(other)
            );
            self.report(
                user.space,
                Rule::SharedPageDiffers,
                Some(leaf),
                Some(region),
                detail,
            );
        }
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
}
