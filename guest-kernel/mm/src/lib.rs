//! The guest memory manager as a safe library: physical frames, page tables, regions, address
//! spaces, demand paging and ring-3 access, over one [`Machine`] trait.
//!
//! Everything the MM does to hardware goes through [`Machine`]: page-table entries and frame
//! bytes, TLB flushes and directory activation, ring-3 accesses. The guest kernel implements it
//! with real instructions (the ground truth, under KVM); the host's simulated machine implements
//! it in-process with a TLB that is as stale as the architecture allows; the unit tests use a
//! small test machine. The crate itself has no `unsafe` code.
//!
//! One MemoryManager serves every CPU at once: its state sits behind the locks of [`sync`]
//! (taken in one documented order, which [`lock_order`] checks), each CPU runs operations
//! through its own [`Cpu`] and machine, and a change to the page tables that another CPU may
//! cache is shot down before anything it mapped is freed ([`shootdown`]).
//!
//! Its modules and semantics: `docs/memory-manager.md`; its seeded bugs: `docs/checker.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod address_space;
pub mod copy_on_write;
pub mod cpu;
pub mod export;
pub mod fork;
pub mod frame_allocator;
pub mod frame_refs;
pub mod hardware;
pub mod kernel_access;
pub mod lock_order;
pub mod machine;
pub mod memory_manager;
pub mod page_directory;
pub mod page_fault;
pub mod seeded_bugs;
mod seeded_placement;
pub mod shootdown;
pub mod sync;
pub mod trace;
pub mod user_access;
pub mod vmobject;

#[cfg(test)]
mod smp_tests;
#[cfg(test)]
mod test_machine;
#[cfg(test)]
mod tests;

pub use cpu::Cpu;
pub use hardware::Hardware;
pub use lock_order::LockOrderViolation;
pub use machine::{Machine, PteSlot, UserEntry, UserTrap};
pub use memory_manager::MemoryManager;
pub use seeded_bugs::{Bug, SeededBugs};
pub use shootdown::FlushRequest;
pub use sync::LockClass;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysicalFrame(pub u64);

/// Bytes in a frame.
pub const FRAME_SIZE: u64 = 4096;
