//! Errors of RegionTree operations and of its invariant check.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use core::fmt;

use crate::address::{RangeError, VirtualRange};
use crate::region::Region;

/// Why a region could not be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionTreeError {
    /// The requested size is zero.
    ZeroSize,
    /// The requested size is not a multiple of the page size.
    MisalignedSize,
    /// The requested base is not page-aligned.
    MisalignedBase,
    /// The alignment is not a power of two, or is below the page size.
    BadAlignment,
    /// The requested range would pass the top of the 64-bit address space.
    Overflow,
    /// The requested range is not inside the tree's total range.
    OutOfRange,
    /// The requested range shares an address with a placed region.
    Overlap,
    /// No free hole fits the request.
    NoSpace,
}

impl fmt::Display for RegionTreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroSize => "size is zero",
            Self::MisalignedSize => "size is not a multiple of the page size",
            Self::MisalignedBase => "base is not page-aligned",
            Self::BadAlignment => "alignment is not a power of two of at least the page size",
            Self::Overflow => "range passes the top of the address space",
            Self::OutOfRange => "range is outside the tree's total range",
            Self::Overlap => "range overlaps a placed region",
            Self::NoSpace => "no free hole fits",
        })
    }
}

impl core::error::Error for RegionTreeError {}

impl From<RangeError> for RegionTreeError {
    fn from(error: RangeError) -> Self {
        match error {
            RangeError::ZeroSize => Self::ZeroSize,
            RangeError::MisalignedBase => Self::MisalignedBase,
            RangeError::MisalignedSize => Self::MisalignedSize,
            RangeError::Overflow => Self::Overflow,
        }
    }
}

/// A failed placement: why, and the region, handed back unchanged.
pub struct PlaceError<B> {
    /// Why the placement failed.
    pub kind: RegionTreeError,
    /// The region that was to be placed.
    pub region: Box<Region<B>>,
}

impl<B> From<PlaceError<B>> for RegionTreeError {
    /// Keeps the reason and drops the region.
    fn from(error: PlaceError<B>) -> Self {
        error.kind
    }
}

impl<B> fmt::Debug for PlaceError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaceError")
            .field("kind", &self.kind)
            .field("region", &self.region)
            .finish()
    }
}

impl<B> fmt::Display for PlaceError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot place region `{}`: {}",
            self.region.name(),
            self.kind
        )
    }
}

impl<B> core::error::Error for PlaceError<B> {}

/// A broken RegionTree invariant, as found by
/// [`check_invariants`](super::RegionTree::check_invariants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvariantViolation {
    /// A region in the tree has no range.
    Unplaced {
        /// Its position in address order.
        index: usize,
    },
    /// A region lies (partly) outside the total range.
    OutsideTotalRange {
        /// The region's range.
        range: VirtualRange,
    },
    /// Two neighbours are out of order or overlap.
    Overlapping {
        /// The earlier region in iteration order.
        previous: VirtualRange,
        /// The region after it.
        next: VirtualRange,
    },
    /// The recorded number of regions differs from the number found.
    CountMismatch {
        /// Regions found by iteration.
        counted: usize,
        /// The tree's recorded length.
        recorded: usize,
    },
    /// The recorded start of the tail hole is not the first address above the last region.
    TailMismatch {
        /// The recorded start (`None`: the last region ends at 2^64).
        recorded: Option<u64>,
        /// The start recomputed from the last region.
        actual: Option<u64>,
    },
    /// A region's recorded hole below it differs from the real one.
    GapMismatch {
        /// The region's range.
        range: VirtualRange,
        /// The recorded hole size.
        recorded: u64,
        /// The hole size recomputed from its neighbour.
        actual: u64,
    },
    /// A region is in the gap index without a hole below it, or has a hole but is not in
    /// the index.
    GapIndexMembership {
        /// The region's range.
        range: VirtualRange,
        /// Whether it is in the gap index.
        indexed: bool,
    },
    /// The gap index is not ordered by `(hole size, hole base)`.
    GapIndexOrder {
        /// The key found out of order.
        key: (u64, u64),
    },
    /// The gap index is not AVL-balanced, or records a wrong subtree height.
    GapIndexUnbalanced {
        /// The key of the subtree's root.
        key: (u64, u64),
    },
    /// A subtree summary of the gap index differs from the one recomputed from its holes.
    GapIndexSummary {
        /// The key of the subtree's root.
        key: (u64, u64),
    },
    /// The gap index holds a region that is not in the address index.
    GapIndexStale {
        /// The key of that entry.
        key: (u64, u64),
    },
    /// The gap index holds a different number of entries than there are holes below
    /// regions.
    GapIndexCount {
        /// Entries in the gap index.
        indexed: usize,
        /// Regions with a hole below them.
        expected: usize,
    },
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unplaced { index } => write!(f, "region #{index} has no range"),
            Self::OutsideTotalRange { range } => {
                write!(f, "region {range} lies outside the total range")
            }
            Self::Overlapping { previous, next } => {
                write!(f, "regions {previous} and {next} are out of order or overlap")
            }
            Self::CountMismatch { counted, recorded } => {
                write!(f, "found {counted} regions but the tree records {recorded}")
            }
            Self::TailMismatch { recorded, actual } => write!(
                f,
                "the tree records the tail hole as starting at {recorded:#x?}, but it is {actual:#x?}"
            ),
            Self::GapMismatch { range, recorded, actual } => write!(
                f,
                "region {range} records a hole of {recorded:#x} bytes below it, but it is {actual:#x}"
            ),
            Self::GapIndexMembership { range, indexed: true } => {
                write!(f, "region {range} is in the gap index without a hole below it")
            }
            Self::GapIndexMembership { range, indexed: false } => {
                write!(f, "region {range} has a hole below it but is not in the gap index")
            }
            Self::GapIndexOrder { key: (size, base) } => {
                write!(f, "gap index out of order at hole of {size:#x} bytes at {base:#x}")
            }
            Self::GapIndexUnbalanced { key: (size, base) } => write!(
                f,
                "gap index unbalanced below the hole of {size:#x} bytes at {base:#x}"
            ),
            Self::GapIndexSummary { key: (size, base) } => write!(
                f,
                "gap index summary of the subtree at the hole of {size:#x} bytes at {base:#x} is stale"
            ),
            Self::GapIndexStale { key: (size, base) } => write!(
                f,
                "gap index entry for hole of {size:#x} bytes at {base:#x} is not a region of this tree"
            ),
            Self::GapIndexCount { indexed, expected } => {
                write!(f, "gap index holds {indexed} entries, expected {expected}")
            }
        }
    }
}

impl core::error::Error for InvariantViolation {}

/// The kinds of [`InvariantViolation`], by their wire code (1 for the first): what a host that
/// receives only [`InvariantViolation::code`] reports.
const KIND_NAMES: [&str; 12] = [
    "a region has no range",
    "a region lies outside the total range",
    "regions out of order or overlapping",
    "the region count differs from the regions found",
    "the tail hole's recorded start is wrong",
    "a region's recorded hole below it is wrong",
    "gap-index membership differs from the holes",
    "the gap index is out of order",
    "the gap index is unbalanced",
    "a gap-index subtree summary is stale",
    "the gap index holds a region of no tree",
    "the gap index holds the wrong number of holes",
];

impl InvariantViolation {
    /// The violation's kind as a number for the wire, 1 for the first variant: never 0, so 0
    /// can mean "no violation".
    pub const fn code(&self) -> u64 {
        match self {
            Self::Unplaced { .. } => 1,
            Self::OutsideTotalRange { .. } => 2,
            Self::Overlapping { .. } => 3,
            Self::CountMismatch { .. } => 4,
            Self::TailMismatch { .. } => 5,
            Self::GapMismatch { .. } => 6,
            Self::GapIndexMembership { .. } => 7,
            Self::GapIndexOrder { .. } => 8,
            Self::GapIndexUnbalanced { .. } => 9,
            Self::GapIndexSummary { .. } => 10,
            Self::GapIndexStale { .. } => 11,
            Self::GapIndexCount { .. } => 12,
        }
    }

    /// The address the violation names: the base of the region or hole involved (for two
    /// regions, the second), or 0 when it names none.
    pub fn address(&self) -> u64 {
        match self {
            Self::OutsideTotalRange { range }
            | Self::Overlapping { next: range, .. }
            | Self::GapMismatch { range, .. }
            | Self::GapIndexMembership { range, .. } => range.base().get(),
            Self::GapIndexOrder { key }
            | Self::GapIndexUnbalanced { key }
            | Self::GapIndexSummary { key }
            | Self::GapIndexStale { key } => key.1,
            Self::TailMismatch { actual, .. } => actual.unwrap_or(0),
            Self::Unplaced { .. } | Self::CountMismatch { .. } | Self::GapIndexCount { .. } => 0,
        }
    }

    /// What the kind with wire code `code` means; `None` for a code no kind has.
    pub fn kind_name(code: u64) -> Option<&'static str> {
        let index = usize::try_from(code.checked_sub(1)?).ok()?;
        KIND_NAMES.get(index).copied()
    }
}
