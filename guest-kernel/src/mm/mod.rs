//! The memory manager: physical frames, page tables, regions, address spaces, demand paging.

pub mod address_space;
pub mod frame_allocator;
pub mod heap;
pub mod memory_manager;
pub mod page_directory;
pub mod page_fault;
pub mod user_access;
pub mod vmobject;

use shared_mm::abi::Status;
use shared_mm::region_tree::{PlaceError, RegionTreeError};

/// Why an MM operation failed. Every variant leaves the MM as it was before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The region tree refused the range or placement.
    Tree(RegionTreeError),
    /// No physical frame left.
    OutOfFrames,
    /// No address space has this id.
    NoSuchSpace,
    /// Protect over a range with a hole in it.
    NotMapped,
    /// The access mask has unknown bits.
    BadAccess,
}

impl From<RegionTreeError> for MmError {
    fn from(e: RegionTreeError) -> Self {
        MmError::Tree(e)
    }
}

impl<B> From<PlaceError<B>> for MmError {
    /// Keeps the reason; the refused region is dropped.
    fn from(e: PlaceError<B>) -> Self {
        MmError::Tree(e.kind)
    }
}

impl From<MmError> for Status {
    fn from(e: MmError) -> Status {
        match e {
            MmError::Tree(t) => match t {
                RegionTreeError::ZeroSize
                | RegionTreeError::MisalignedSize
                | RegionTreeError::MisalignedBase => Status::InvalidArgument,
                RegionTreeError::BadAlignment => Status::BadAlignment,
                RegionTreeError::Overflow => Status::Overflow,
                RegionTreeError::OutOfRange => Status::OutOfRange,
                RegionTreeError::Overlap => Status::Overlap,
                RegionTreeError::NoSpace => Status::NoSpace,
            },
            MmError::OutOfFrames => Status::OutOfMemory,
            MmError::NoSuchSpace => Status::NoSuchSpace,
            MmError::NotMapped => Status::NotMapped,
            MmError::BadAccess => Status::BadAccess,
        }
    }
}

/// A 4 KiB physical frame, by its physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PhysicalFrame(pub u64);
