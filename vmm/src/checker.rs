//! The agreement checker: the guest's exported region trees against the page tables the host
//! walks itself through guest memory (never the guest's own view). Each broken invariant of
//! DESIGN.md becomes a [`Finding`] naming the space, address, PTE, region and rule.

use crate::driver::{Driver, SnapshotRound, SpaceSnapshot};
use crate::page_walk::{leaves_in, Leaf, LOWER_HALF, UPPER_HALF};
use shared_mm::abi::access_bits::{EXECUTE, READ, USER, WRITE};
use shared_mm::abi::{
    Op, OpResult, RegionRecord, SpaceRecord, KERNEL_SPACE, KERNEL_SPACE_BASE, USER_SPACE_BASE,
    USER_SPACE_END, USER_TRAMPOLINE,
};
use std::collections::HashMap;
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Which invariant a finding breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The region list is not sorted and disjoint.
    RegionsOverlap,
    /// A region lies outside the tree's total range.
    RegionOutOfRange,
    /// The snapshot's region count differs from the tree's `len()`.
    RegionCount,
    /// A present PTE where no region is (the classic stale PTE after munmap).
    PteInHole,
    /// A PTE grants an access its region does not allow.
    PteExceedsRegion,
    /// A page is writable and executable though its region does not allow both.
    WriteAndExecute,
    /// One frame is mapped by two private pages.
    FrameMappedTwice,
    /// The kernel half of an address space differs from the kernel's.
    KernelHalfDiffers,
    /// The trampoline page is missing or has the wrong permissions.
    Trampoline,
    /// The page tables could not be walked.
    Walk,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::RegionsOverlap => "regions-sorted-and-disjoint",
            Rule::RegionOutOfRange => "region-inside-total-range",
            Rule::RegionCount => "region-count",
            Rule::PteInHole => "no-pte-in-hole",
            Rule::PteExceedsRegion => "pte-within-region-access",
            Rule::WriteAndExecute => "no-write-and-execute",
            Rule::FrameMappedTwice => "frame-mapped-once",
            Rule::KernelHalfDiffers => "kernel-half-shared",
            Rule::Trampoline => "trampoline-page",
            Rule::Walk => "page-tables-walkable",
        })
    }
}

/// One broken invariant, precisely located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The address space (`KERNEL_SPACE` for the kernel).
    pub space: u32,
    pub rule: Rule,
    pub va: Option<u64>,
    /// The raw leaf PTE involved.
    pub pte: Option<u64>,
    /// The region involved.
    pub region: Option<RegionRecord>,
    pub detail: String,
}

fn space_name(space: u32) -> String {
    if space == KERNEL_SPACE {
        "kernel".into()
    } else {
        format!("space {space}")
    }
}

/// `u-rwx` style text for an access mask.
pub fn access_string(access: u32) -> String {
    let bit = |b, c| if access & b != 0 { c } else { '-' };
    [
        bit(USER, 'u'),
        '-',
        bit(READ, 'r'),
        bit(WRITE, 'w'),
        bit(EXECUTE, 'x'),
    ]
    .iter()
    .collect()
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", space_name(self.space), self.rule)?;
        if let Some(va) = self.va {
            write!(f, " at {va:#x}")?;
        }
        if let Some(pte) = self.pte {
            write!(f, " pte {pte:#x}")?;
        }
        if let Some(r) = &self.region {
            write!(
                f,
                " region {:?} {:#x}+{:#x} {}",
                r.name_str(),
                r.base,
                r.size,
                access_string(r.access)
            )?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn region_containing(regions: &[RegionRecord], va: u64) -> Option<&RegionRecord> {
    let i = regions.partition_point(|r| r.base <= va);
    regions[..i].last().filter(|r| va - r.base < r.size)
}

struct Checker {
    findings: Vec<Finding>,
    /// 4 KiB frame -> (space, va) of the first page seen mapping it.
    frame_owner: HashMap<u64, (u32, u64)>,
}

impl Checker {
    fn report(
        &mut self,
        space: u32,
        rule: Rule,
        leaf: Option<&Leaf>,
        region: Option<&RegionRecord>,
        detail: String,
    ) {
        self.findings.push(Finding {
            space,
            rule,
            va: leaf.map(|l| l.va),
            pte: leaf.map(|l| l.pte.raw()),
            region: region.copied(),
            detail,
        });
    }

    fn check_region_list(&mut self, view: &SpaceSnapshot, total: (u64, u64)) {
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

    fn check_user_leaf(&mut self, view: &SpaceSnapshot, leaf: &Leaf) {
        let space = view.space;
        if leaf.va == USER_TRAMPOLINE {
            if !leaf.perms.user || leaf.perms.writable || !leaf.perms.executable() {
                self.report(
                    space,
                    Rule::Trampoline,
                    Some(leaf),
                    None,
                    "must be user r-x".into(),
                );
            }
            return;
        }
        let Some(region) = region_containing(&view.regions, leaf.va) else {
            self.report(
                space,
                Rule::PteInHole,
                Some(leaf),
                None,
                "present page where no region is".into(),
            );
            return;
        };
        self.check_access(space, leaf, region);
        let access = region.access;
        if leaf.perms.writable
            && leaf.perms.executable()
            && access & (WRITE | EXECUTE) != WRITE | EXECUTE
        {
            self.report(
                space,
                Rule::WriteAndExecute,
                Some(leaf),
                Some(region),
                "W+X page".into(),
            );
        }
        for frame in (leaf.phys..leaf.phys + leaf.size).step_by(4096) {
            let va = leaf.va + (frame - leaf.phys);
            if let Some(&(other_space, other_va)) = self.frame_owner.get(&frame) {
                let detail = format!(
                    "frame {frame:#x} is also mapped by {} at {other_va:#x}",
                    space_name(other_space)
                );
                self.report(
                    space,
                    Rule::FrameMappedTwice,
                    Some(leaf),
                    Some(region),
                    detail,
                );
            } else {
                self.frame_owner.insert(frame, (space, va));
            }
        }
    }

    fn check_kernel_leaf(&mut self, kernel: &SpaceSnapshot, leaf: &Leaf) {
        let Some(region) = region_containing(&kernel.regions, leaf.va) else {
            let detail = "kernel page outside every kernel region".into();
            return self.report(KERNEL_SPACE, Rule::PteInHole, Some(leaf), None, detail);
        };
        self.check_access(KERNEL_SPACE, leaf, region);
    }

    /// The page must grant nothing its region does not: presence needs READ, and user, write
    /// and execute access need USER, WRITE and EXECUTE (kernel regions never have USER).
    fn check_access(&mut self, space: u32, leaf: &Leaf, region: &RegionRecord) {
        let access = region.access;
        let excess: Vec<&str> = [
            (access & READ == 0, "present"),
            (leaf.perms.user && access & USER == 0, "user"),
            (leaf.perms.writable && access & WRITE == 0, "writable"),
            (
                leaf.perms.executable() && access & EXECUTE == 0,
                "executable",
            ),
        ]
        .into_iter()
        .filter_map(|(broken, what)| broken.then_some(what))
        .collect();
        if !excess.is_empty() {
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

    fn walk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        space: u32,
        cr3: u64,
        half: std::ops::RangeInclusive<u64>,
        mut visit: impl FnMut(&mut Self, &Leaf),
    ) {
        for leaf in leaves_in(mem, cr3, half) {
            match leaf {
                Ok(leaf) => visit(self, &leaf),
                Err(e) => self.report(space, Rule::Walk, None, None, e.to_string()),
            }
        }
    }
}

fn kernel_half<M: GuestMemory + ?Sized>(mem: &M, cr3: u64) -> Option<[u8; 2048]> {
    let mut half = [0u8; 2048];
    mem.read_slice(&mut half, GuestAddress((cr3 & !0xfff) + 2048))
        .ok()?;
    Some(half)
}

/// Checks every invariant for the kernel and each user space; empty means they all agree.
pub fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    kernel: &SpaceSnapshot,
    spaces: &[SpaceSnapshot],
) -> Vec<Finding> {
    let mut checker = Checker {
        findings: Vec::new(),
        frame_owner: HashMap::new(),
    };
    checker.check_region_list(kernel, (KERNEL_SPACE_BASE, u64::MAX));
    checker.walk(mem, KERNEL_SPACE, kernel.cr3, UPPER_HALF, |c, leaf| {
        c.check_kernel_leaf(kernel, leaf)
    });
    let kernel_slots = kernel_half(mem, kernel.cr3);
    for view in spaces {
        checker.check_region_list(view, (USER_SPACE_BASE, USER_SPACE_END - 1));
        checker.walk(mem, view.space, view.cr3, LOWER_HALF, |c, leaf| {
            c.check_user_leaf(view, leaf)
        });
        if kernel_slots.is_none() || kernel_half(mem, view.cr3) != kernel_slots {
            let detail = "PML4 slots 256..511 differ from the kernel's".to_string();
            checker.report(view.space, Rule::KernelHalfDiffers, None, None, detail);
        }
        if let Ok(None) = crate::page_walk::translate(mem, view.cr3, USER_TRAMPOLINE) {
            checker.report(
                view.space,
                Rule::Trampoline,
                None,
                None,
                "trampoline page not mapped".into(),
            );
        }
    }
    checker.findings
}

/// A [`Driver`] adapter that runs the agreement checker after every batch of the inner driver:
/// it asks the guest for snapshots of the kernel and every live space, then walks the page
/// tables while the guest is paused with exactly those trees.
pub struct Checked<D> {
    inner: D,
    round: SnapshotRound,
    /// Every finding so far, with the number of the check that found it.
    pub findings: Vec<(usize, Finding)>,
    /// How many times the checker ran.
    pub checks_run: usize,
    /// End the guest's work at the first finding instead of handing out more batches.
    pub stop_on_finding: bool,
}

impl<D: Driver> Checked<D> {
    pub fn new(inner: D) -> Self {
        Checked {
            inner,
            round: SnapshotRound::new(),
            findings: Vec::new(),
            checks_run: 0,
            stop_on_finding: false,
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
}

impl<D: Driver> Driver for Checked<D> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, String> {
        let (findings, checks_run) = (&mut self.findings, &mut self.checks_run);
        let stop_on_finding = self.stop_on_finding;
        let check_trees = |kernel: SpaceSnapshot, trees: Vec<SpaceSnapshot>| {
            let run = *checks_run;
            *checks_run += 1;
            let found = check(mem, &kernel, &trees);
            let stop = stop_on_finding && !found.is_empty();
            findings.extend(found.into_iter().map(|f| (run, f)));
            !stop
        };
        self.round
            .next_batch(&mut self.inner, mem, results, spaces, check_trees)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        space: u32,
        cr3: u64,
        first: u64,
        total: u64,
        regions: &[RegionRecord],
    ) -> Result<(), String> {
        let inner = &mut self.inner;
        self.round
            .snapshot(inner, mem, space, cr3, first, total, regions)
    }
}
