//! Seeded bugs: classic MM bugs planted on purpose, by cargo feature or at run time, so tests
//! can show that the host's checker and model catch each one.

/// One seeded bug; its cargo feature has the same name as [`Bug::feature`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// Unmap leaves the PTEs.
    StalePte,
    /// Protect to read-only keeps the W bit.
    KeepWritable,
    /// Unmap skips the TLB flush.
    NoTlbFlush,
    /// Fixed placement misses a one-page overlap with the left neighbour (in the RegionTree).
    Overlap,
    /// Partial unmap frees the frames of the pieces that stay mapped.
    FreeMapped,
    /// Partial unmap keeps the PTE of the cut's last page.
    SplitOffByOne,
    /// Unmap flushes the neighbouring page instead of the one it cleared.
    FlushWrongPage,
    /// Unmap frees the frames before it flushes their translations.
    FreeBeforeFlush,
    /// Unmap flushes before it clears the PTE: a window in which the entry can be refilled.
    FlushBeforeClear,
    /// Unmap forgets the frames it takes out of the region instead of freeing them.
    LeakOnUnmap,
    /// The frame allocator hands out the last frame of RAM without marking it allocated, so it
    /// is handed out again.
    DoubleAllocEndOfRam,
    /// Fork leaves the parent's private pages writable, so its writes leak into the child.
    ForkParentWritable,
    /// Fork write-protects the parent's pages without flushing their writable translations.
    ForkNoFlush,
    /// A write to a copy-on-write page makes the shared frame writable instead of copying it.
    CowNoCopy,
    /// A copy-on-write break keeps its reference to the old frame, which is then never freed.
    RefcountLeak,
    /// Fork gives the child a private copy-on-write copy of shared memory.
    SharedBecomesPrivate,
    /// The frame allocator's setup takes the first free frame after the kernel image from the
    /// image's last byte instead of its end, so it hands out the image's last frame (the top of
    /// the guest's trap stack) once the frames below the image are used.
    KernelEndOffByOne,
    /// Destroying the space whose tables are loaded frees them without loading other tables
    /// first: the CPU keeps walking freed page tables.
    DestroyActiveSpace,
    /// A gap-index removal in the RegionTree keeps a stale room summary (in `shared-mm`).
    StaleGapSummary,
    /// `map-anywhere` takes the lowest-addressed hole that fits (first fit), not the best fit.
    AnywhereFirstFit,
    /// Randomized placement's random words lose their top bit (a signed conversion), so it
    /// draws from the first half of the valid positions only: in one hole, the low half.
    AslrLowHalf,
    /// A new space's directory copies the kernel half's PML4 entries with the user bit added,
    /// as its own user-half tables have it (ring 3 still cannot reach kernel pages: U is ANDed
    /// down the levels).
    KernelHalfUser,
    /// The user trampoline page is mapped writable, like a data page: ring 3 can rewrite the
    /// code every space runs.
    TrampolineWritable,
    /// The export stops a page short of its tree's total range (an exclusive end taken for an
    /// inclusive one): a region in the range's top page is not exported.
    ExportShortRange,
    /// A user tree's total range ends after the trampoline's page, not before it (the top of
    /// user space taken as inclusive): a fixed map may cover the trampoline.
    UserRangePastTop,
    /// Protect to a writable access keeps an executable page executable (the new rights are
    /// added to the old ones' NX), so the page becomes writable and executable.
    ProtectKeepsExec,
    /// Fork gives the child a new, empty shared object under the parent's id instead of a
    /// handle to the same object: the child's faults commit frames of their own.
    ForkSharedNewObject,
    /// A TLB shootdown flushes only the CPU that changed the page tables: no IPI is sent.
    ShootdownLocalOnly,
    /// A shootdown skips the CPUs that ran the space and switched away lazily (still have its
    /// tables loaded, but run no operation in it now).
    ShootdownMissesLazy,
    /// Frames and page tables are freed before the shootdown's acknowledgements arrive (before
    /// its IPIs are even sent).
    FreeBeforeAck,
    /// The page-fault path trusts the region it looked up before it took the space's lock
    /// again to resolve the fault, so a concurrent unmap or protect goes unseen.
    FaultNoRecheck,
    /// Releasing a shared object's last handle takes the frame allocator's lock and then the
    /// object's, against the documented order (object, then frames) that a fault on shared
    /// memory follows.
    LockOrder,
}

impl Bug {
    /// Every seeded bug, in feature order.
    pub const ALL: [Bug; 32] = [
        Bug::StalePte,
        Bug::KeepWritable,
        Bug::NoTlbFlush,
        Bug::Overlap,
        Bug::FreeMapped,
        Bug::SplitOffByOne,
        Bug::FlushWrongPage,
        Bug::FreeBeforeFlush,
        Bug::FlushBeforeClear,
        Bug::LeakOnUnmap,
        Bug::DoubleAllocEndOfRam,
        Bug::ForkParentWritable,
        Bug::ForkNoFlush,
        Bug::CowNoCopy,
        Bug::RefcountLeak,
        Bug::SharedBecomesPrivate,
        Bug::KernelEndOffByOne,
        Bug::DestroyActiveSpace,
        Bug::StaleGapSummary,
        Bug::AnywhereFirstFit,
        Bug::AslrLowHalf,
        Bug::KernelHalfUser,
        Bug::TrampolineWritable,
        Bug::ExportShortRange,
        Bug::UserRangePastTop,
        Bug::ProtectKeepsExec,
        Bug::ForkSharedNewObject,
        Bug::ShootdownLocalOnly,
        Bug::ShootdownMissesLazy,
        Bug::FreeBeforeAck,
        Bug::FaultNoRecheck,
        Bug::LockOrder,
    ];

    /// Whether only another CPU can show it: the shootdown bugs and the fault race need a
    /// second CPU to cache a translation or to change the space under a fault. (The lock-order
    /// bug shows on one CPU too: the checker sees both paths' orders.)
    pub const fn needs_several_cpus(self) -> bool {
        matches!(
            self,
            Bug::ShootdownLocalOnly
                | Bug::ShootdownMissesLazy
                | Bug::FreeBeforeAck
                | Bug::FaultNoRecheck
        )
    }

    /// The cargo feature that plants it.
    pub const fn feature(self) -> &'static str {
        match self {
            Bug::StalePte => "bug-stale-pte",
            Bug::KeepWritable => "bug-keep-writable",
            Bug::NoTlbFlush => "bug-no-tlb-flush",
            Bug::Overlap => "bug-overlap",
            Bug::FreeMapped => "bug-free-mapped",
            Bug::SplitOffByOne => "bug-split-off-by-one",
            Bug::FlushWrongPage => "bug-flush-wrong-page",
            Bug::FreeBeforeFlush => "bug-free-before-flush",
            Bug::FlushBeforeClear => "bug-flush-before-clear",
            Bug::LeakOnUnmap => "bug-leak-on-unmap",
            Bug::DoubleAllocEndOfRam => "bug-double-alloc-end-of-ram",
            Bug::ForkParentWritable => "bug-fork-parent-writable",
            Bug::ForkNoFlush => "bug-fork-no-flush",
            Bug::CowNoCopy => "bug-cow-no-copy",
            Bug::RefcountLeak => "bug-refcount-leak",
            Bug::SharedBecomesPrivate => "bug-shared-becomes-private",
            Bug::KernelEndOffByOne => "bug-kernel-end-off-by-one",
            Bug::DestroyActiveSpace => "bug-destroy-active-space",
            Bug::StaleGapSummary => "bug-stale-gap-summary",
            Bug::AnywhereFirstFit => "bug-anywhere-first-fit",
            Bug::AslrLowHalf => "bug-aslr-low-half",
            Bug::KernelHalfUser => "bug-kernel-half-user",
            Bug::TrampolineWritable => "bug-trampoline-writable",
            Bug::ExportShortRange => "bug-export-short-range",
            Bug::UserRangePastTop => "bug-user-range-past-top",
            Bug::ProtectKeepsExec => "bug-protect-keeps-exec",
            Bug::ForkSharedNewObject => "bug-fork-shared-new-object",
            Bug::ShootdownLocalOnly => "bug-shootdown-local-only",
            Bug::ShootdownMissesLazy => "bug-shootdown-misses-lazy",
            Bug::FreeBeforeAck => "bug-free-before-ack",
            Bug::FaultNoRecheck => "bug-fault-no-recheck",
            Bug::LockOrder => "bug-lock-order",
        }
    }

    /// The bug whose cargo feature is `name`.
    pub fn from_feature(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.feature() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of seeded bugs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeededBugs(u32);

impl SeededBugs {
    /// No bug: the correct MM.
    pub const NONE: SeededBugs = SeededBugs(0);

    /// The bugs this build's cargo features plant.
    pub const fn compiled() -> SeededBugs {
        let features = [
            cfg!(feature = "bug-stale-pte"),
            cfg!(feature = "bug-keep-writable"),
            cfg!(feature = "bug-no-tlb-flush"),
            cfg!(feature = "bug-overlap"),
            cfg!(feature = "bug-free-mapped"),
            cfg!(feature = "bug-split-off-by-one"),
            cfg!(feature = "bug-flush-wrong-page"),
            cfg!(feature = "bug-free-before-flush"),
            cfg!(feature = "bug-flush-before-clear"),
            cfg!(feature = "bug-leak-on-unmap"),
            cfg!(feature = "bug-double-alloc-end-of-ram"),
            cfg!(feature = "bug-fork-parent-writable"),
            cfg!(feature = "bug-fork-no-flush"),
            cfg!(feature = "bug-cow-no-copy"),
            cfg!(feature = "bug-refcount-leak"),
            cfg!(feature = "bug-shared-becomes-private"),
            cfg!(feature = "bug-kernel-end-off-by-one"),
            cfg!(feature = "bug-destroy-active-space"),
            cfg!(feature = "bug-stale-gap-summary"),
            cfg!(feature = "bug-anywhere-first-fit"),
            cfg!(feature = "bug-aslr-low-half"),
            cfg!(feature = "bug-kernel-half-user"),
            cfg!(feature = "bug-trampoline-writable"),
            cfg!(feature = "bug-export-short-range"),
            cfg!(feature = "bug-user-range-past-top"),
            cfg!(feature = "bug-protect-keeps-exec"),
            cfg!(feature = "bug-fork-shared-new-object"),
            cfg!(feature = "bug-shootdown-local-only"),
            cfg!(feature = "bug-shootdown-misses-lazy"),
            cfg!(feature = "bug-free-before-ack"),
            cfg!(feature = "bug-fault-no-recheck"),
            cfg!(feature = "bug-lock-order"),
        ];
        let mut set = SeededBugs::NONE;
        let mut i = 0;
        while i < features.len() {
            if features[i] {
                set = set.with(Bug::ALL[i]);
            }
            i += 1;
        }
        set
    }

    /// This set plus `bug`.
    pub const fn with(self, bug: Bug) -> SeededBugs {
        SeededBugs(self.0 | bug.bit())
    }

    /// Whether `bug` is planted.
    pub const fn has(self, bug: Bug) -> bool {
        self.0 & bug.bit() != 0
    }

    /// The planted bugs, in feature order.
    pub fn iter(self) -> impl Iterator<Item = Bug> {
        Bug::ALL.into_iter().filter(move |b| self.has(*b))
    }
}
