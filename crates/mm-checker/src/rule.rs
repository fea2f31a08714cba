//! The invariants the checker holds the guest's MM to, one name each: the names findings,
//! fuzz signatures and the README use.
#![forbid(unsafe_code)]

use std::fmt;

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
    /// An incremental check kept other leaves than a full walk finds, or saw a rule broken
    /// that the full walk does not (a checker bug, or tables written behind the dirty log).
    IncrementalCheck,
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
            Rule::IncrementalCheck => "incremental-check-agrees",
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
