//! The page-fault handler for ring-3 accesses: demand-zero paging for legal accesses, a
//! segmentation fault (reported, never a crash) for the rest.

use super::address_space::AddressSpace;
use super::frame_allocator::FrameAllocator;
use super::MmError;
use shared_mm::abi::{FaultKind, KERNEL_SPACE_BASE};
use shared_mm::address::{VirtualAddress, PAGE_SIZE};
use shared_mm::region::Access;

/// Page-fault error code bits (Intel SDM Vol. 3A, 4.7).
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
const PF_FETCH: u64 = 1 << 4;

/// How a user page fault ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The page is now mapped; retry the access.
    Resolved,
    /// The access is illegal.
    Segv(FaultKind),
    /// Legal, but no frame was left to back it.
    OutOfMemory,
}

/// Handles a fault at `address` with hardware `error_code` from ring 3 in `space`.
pub fn handle_user_page_fault(
    space: &mut AddressSpace,
    address: u64,
    error_code: u64,
    frames: &mut FrameAllocator,
) -> FaultOutcome {
    if address >= KERNEL_SPACE_BASE {
        return FaultOutcome::Segv(FaultKind::SegvAccess);
    }
    let Some(region) = space
        .tree()
        .find_region_containing(VirtualAddress::new(address))
    else {
        return FaultOutcome::Segv(FaultKind::SegvNoRegion);
    };
    let required = if error_code & PF_FETCH != 0 {
        Access::EXECUTE
    } else if error_code & PF_WRITE != 0 {
        Access::WRITE
    } else {
        Access::READ
    };
    let access = region.access();
    // A protection fault on a present page the region allows would mean the PTE disagrees with
    // the region: report it rather than retry forever.
    if !access.contains(Access::USER) || !access.contains(required) || error_code & PF_PRESENT != 0
    {
        return FaultOutcome::Segv(FaultKind::SegvAccess);
    }
    match space.populate(address & !(PAGE_SIZE - 1), frames) {
        Ok(()) => FaultOutcome::Resolved,
        Err(MmError::OutOfFrames) => FaultOutcome::OutOfMemory,
        Err(e) => panic!("demand paging at {address:#x} failed: {e:?}"),
    }
}
