//! The agreement checker: the guest's exported region trees against the page tables the host
//! walks itself through guest memory (never the guest's own view). Each broken rule (the
//! README's "The agreement checker" lists them) becomes a [`Finding`] naming the space, address,
//! PTE, region and rule.
#![forbid(unsafe_code)]

mod accounting;
mod agreement;
mod checked;
mod provenance;

pub use accounting::{Accounting, FrameReports};
pub use agreement::{Agreement, Check, Refs, FRAME_BUDGET_PER_RAM_PAGE, MAX_PER_RULE};
pub use checked::{as_finding, Checked};
pub use provenance::Provenance;

use crate::coherence::Numbered;
use mm_driver::driver::SpaceSnapshot;
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{RegionRecord, KERNEL_SPACE};
use std::fmt;
use vm_memory::GuestMemory;

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
    /// A frame is mapped by more pages than it has references (a private page counts once, a
    /// page of a shared object once over every space that maps it).
    FrameOverMapped,
    /// A copy-on-write frame (referenced more than once) is mapped writable by private memory.
    CowWritable,
    /// A page of a shared object maps different frames in two spaces.
    SharedPageDiffers,
    /// The kernel half of an address space differs from the kernel's.
    KernelHalfDiffers,
    /// The trampoline page is missing or has the wrong permissions.
    Trampoline,
    /// The page tables could not be walked.
    Walk,
    /// Ring 3 ran while a possibly-cached translation was a downgrade of its PTE (flush trace).
    StaleTlbEntry,
    /// An owned or mapped frame is free, or an allocated frame has no owner (a leak).
    FrameAccounting,
    /// A destroyed space's frame is still allocated.
    NoLeakAfterDestroy,
    /// A frame has two owners, or a user page maps a frame its space does not own as data.
    FrameOwner,
    /// A frame was freed while a possibly-cached translation pointed at it (flush trace).
    FrameFreedWhileCached,
    /// A frame the MM allocated, owns, maps or uses as a page table lies outside the usable RAM
    /// of the memory map the host wrote at boot.
    FrameProvenance,
    /// A page-table frame was freed while a CPU's CR3 could still reach it, or its paging-
    /// structure caches could still hold it (flush trace).
    TableFreedWhileReachable,
    /// A region tree fails its own `check_invariants` (gap-index summaries included).
    RegionTreeInvariants,
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
            Rule::FrameOverMapped => "frame-mapped-within-refs",
            Rule::CowWritable => "cow-read-only",
            Rule::SharedPageDiffers => "shared-page-one-frame",
            Rule::KernelHalfDiffers => "kernel-half-shared",
            Rule::Trampoline => "trampoline-page",
            Rule::Walk => "page-tables-walkable",
            Rule::StaleTlbEntry => "stale-tlb-entry",
            Rule::FrameAccounting => "frame-accounting",
            Rule::NoLeakAfterDestroy => "no-leak-after-destroy",
            Rule::FrameOwner => "frame-owner",
            Rule::FrameFreedWhileCached => "frame-freed-while-cached",
            Rule::FrameProvenance => "frame-provenance",
            Rule::TableFreedWhileReachable => "table-freed-while-reachable",
            Rule::RegionTreeInvariants => "region-tree-invariants",
        })
    }
}

impl Rule {
    /// The rule that names the same defect whichever way the checks fell: a leaked frame is a
    /// `no-leak-after-destroy` finding when its space is destroyed in the same batch as the
    /// leak, and a `frame-accounting` one when a check runs between the two.
    pub fn defect(self) -> Rule {
        match self {
            Rule::NoLeakAfterDestroy => Rule::FrameAccounting,
            rule => rule,
        }
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
    /// For flush-trace findings, the trace events behind it (numbered from boot).
    pub events: Vec<Numbered>,
}

fn space_name(space: u32) -> String {
    if space == KERNEL_SPACE {
        "kernel".into()
    } else {
        format!("space {space}")
    }
}

/// `u-rwx` style text for an access mask (`usrwx` for shared memory).
pub fn access_string(access: u32) -> String {
    let bit = |b, c| if access & b != 0 { c } else { '-' };
    [
        bit(USER, 'u'),
        bit(SHARED, 's'),
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

/// Checks every invariant for the kernel and each user space, with `refs` the reference counts
/// of frames held more than once; empty means they all agree.
pub fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    kernel: &SpaceSnapshot,
    spaces: &[SpaceSnapshot],
    refs: &Refs,
) -> Vec<Finding> {
    let mut state = Agreement::for_memory(mem);
    let mut check = state.check(refs);
    check.kernel(mem, kernel);
    for view in spaces {
        check.space(mem, view, kernel);
    }
    check.finish()
}
