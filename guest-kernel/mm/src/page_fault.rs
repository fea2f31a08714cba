//! The page-fault handler for ring-3 accesses: demand-zero paging for legal accesses, a
//! segmentation fault (reported, never a crash) for the rest.

use crate::address_space::AddressSpace;
use crate::hardware::Hardware;
use crate::machine::{Machine, PF_FETCH, PF_PRESENT, PF_WRITE};
use crate::MmError;
use shared_mm::abi::{FaultKind, KERNEL_SPACE_BASE};
use shared_mm::address::{VirtualAddress, PAGE_SIZE};
use shared_mm::pte::PageTableFlags;
use shared_mm::region::Access;

/// How a user page fault ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The page is now mapped (or was, and a stale TLB entry was dropped); retry the access.
    Resolved,
    /// The access is illegal.
    Segv(FaultKind),
    /// Legal, but no frame was left to back it.
    OutOfMemory,
}

/// The access a fault's error code says was attempted.
fn required_access(error_code: u64) -> Access {
    if error_code & PF_FETCH != 0 {
        Access::EXECUTE
    } else if error_code & PF_WRITE != 0 {
        Access::WRITE
    } else {
        Access::READ
    }
}

/// Whether the PTE of `page` already grants a ring-3 `required` access.
fn pte_allows<M: Machine>(space: &AddressSpace, page: u64, required: Access, machine: &M) -> bool {
    let Some((_, flags)) = space.directory().translate(page, machine) else {
        return false;
    };
    flags.contains(PageTableFlags::USER)
        && (required != Access::WRITE || flags.contains(PageTableFlags::WRITABLE))
        && (required != Access::EXECUTE || !flags.contains(PageTableFlags::NO_EXECUTE))
}

/// Handles a fault at `address` with hardware `error_code` from ring 3 in `space` (the active
/// space).
pub fn handle_user_page_fault<M: Machine>(
    space: &mut AddressSpace,
    address: u64,
    error_code: u64,
    hw: &mut Hardware<M>,
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
    let required = required_access(error_code);
    let access = region.access();
    if !access.contains(Access::USER) || !access.contains(required) {
        return FaultOutcome::Segv(FaultKind::SegvAccess);
    }
    let page = address & !(PAGE_SIZE - 1);
    let write = required == Access::WRITE;
    if error_code & PF_PRESENT != 0 {
        // A protection fault on a page the region allows. If the PTE allows it too, the TLB
        // held an older, narrower entry (an upgrade without a flush): drop it and retry. A
        // write to a read-only PTE of a writable region is copy-on-write. Otherwise the PTE
        // disagrees with the region: report it rather than retry forever.
        if pte_allows(space, page, required, &hw.machine) {
            hw.machine.flush_page(page);
            return FaultOutcome::Resolved;
        }
        if !write || !pte_allows(space, page, Access::READ, &hw.machine) {
            return FaultOutcome::Segv(FaultKind::SegvAccess);
        }
        return outcome(space.break_cow(page, hw), address);
    }
    outcome(space.populate(page, write, hw), address)
}

/// How a fault ends once the MM tried to resolve it at `address`.
pub fn outcome(resolved: Result<(), MmError>, address: u64) -> FaultOutcome {
    match resolved {
        Ok(()) => FaultOutcome::Resolved,
        Err(MmError::OutOfFrames) => FaultOutcome::OutOfMemory,
        Err(e) => panic!("paging in {address:#x} failed: {e:?}"),
    }
}
