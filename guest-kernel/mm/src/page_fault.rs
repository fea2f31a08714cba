//! The page-fault handler for ring-3 accesses: demand-zero paging for legal accesses, a
//! segmentation fault (reported, never a crash) for the rest.

use crate::address_space::AddressSpace;
use crate::cpu::Cpu;
use crate::hardware::Hardware;
use crate::machine::{Machine, PF_FETCH, PF_PRESENT, PF_WRITE};
use crate::memory_manager::{MemoryManager, SpaceHandle};
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

/// What a fault needs, once its region was looked up.
enum Verdict {
    /// Nothing more to do (a segmentation fault, or a stale TLB entry already dropped).
    Done(FaultOutcome),
    /// Demand paging of `page`, for a write or not, in a region with `access`.
    Populate {
        page: u64,
        write: bool,
        access: Access,
    },
    /// A write to a read-only PTE of a writable region: copy-on-write.
    BreakCow { page: u64 },
}

/// Looks up the region of a fault at `address` with hardware `error_code` from ring 3 in
/// `space` (loaded on this CPU), and decides what the fault needs.
fn judge<M: Machine>(
    space: &AddressSpace,
    address: u64,
    error_code: u64,
    hw: &mut Hardware<'_, M>,
) -> Verdict {
    if address >= KERNEL_SPACE_BASE {
        return Verdict::Done(FaultOutcome::Segv(FaultKind::SegvAccess));
    }
    let Some(region) = space
        .tree()
        .find_region_containing(VirtualAddress::new(address))
    else {
        return Verdict::Done(FaultOutcome::Segv(FaultKind::SegvNoRegion));
    };
    let required = required_access(error_code);
    let access = region.access();
    if !access.contains(Access::USER) || !access.contains(required) {
        return Verdict::Done(FaultOutcome::Segv(FaultKind::SegvAccess));
    }
    let page = address & !(PAGE_SIZE - 1);
    let write = required == Access::WRITE;
    if error_code & PF_PRESENT == 0 {
        return Verdict::Populate {
            page,
            write,
            access,
        };
    }
    // A protection fault on a page the region allows. If the PTE allows it too, the TLB held an
    // older, narrower entry (an upgrade without a flush): drop it and retry. A write to a
    // read-only PTE of a writable region is copy-on-write. Otherwise the PTE disagrees with the
    // region: report it rather than retry forever.
    if pte_allows(space, page, required, hw.machine_ref()) {
        hw.machine().flush_page(page);
        return Verdict::Done(FaultOutcome::Resolved);
    }
    if !write || !pte_allows(space, page, Access::READ, hw.machine_ref()) {
        return Verdict::Done(FaultOutcome::Segv(FaultKind::SegvAccess));
    }
    Verdict::BreakCow { page }
}

/// Handles a fault at `address` with hardware `error_code` from ring 3 in `space` (locked, and
/// loaded on this CPU): its region is looked up and the fault resolved under the same lock.
pub fn handle_user_page_fault<M: Machine>(
    space: &mut AddressSpace,
    address: u64,
    error_code: u64,
    hw: &mut Hardware<'_, M>,
) -> FaultOutcome {
    match judge(space, address, error_code, hw) {
        Verdict::Done(outcome) => outcome,
        Verdict::Populate { page, write, .. } => outcome(space.populate(page, write, hw), address),
        Verdict::BreakCow { page } => outcome(space.break_cow(page, hw), address),
    }
}

/// Seeded bug (`bug-fault-no-recheck`): the fault's region is looked up with the space locked,
/// the lock is released, and the fault is resolved with the space locked again, trusting the
/// first lookup: a page whose region another CPU unmapped meanwhile is mapped anyway, to a
/// fresh frame no region holds.
pub(crate) fn without_recheck<M: Machine>(
    mm: &MemoryManager<M>,
    cpu: &mut Cpu<M>,
    space: &SpaceHandle,
    address: u64,
    error_code: u64,
) -> Result<FaultOutcome, MmError> {
    let verdict = mm.locked(cpu, space, |s, hw| Ok(judge(s, address, error_code, hw)))?;
    mm.locked(cpu, space, |s, hw| {
        let gone = |page| {
            s.tree()
                .find_region_containing(VirtualAddress::new(page))
                .is_none()
        };
        Ok(match verdict {
            Verdict::Done(outcome) => outcome,
            Verdict::Populate { page, access, .. } if gone(page) => {
                outcome(s.map_orphan(page, access, hw), address)
            }
            Verdict::BreakCow { page } if gone(page) => FaultOutcome::Resolved,
            Verdict::Populate { page, write, .. } => outcome(s.populate(page, write, hw), address),
            Verdict::BreakCow { page } => outcome(s.break_cow(page, hw), address),
        })
    })
}

/// How a fault ends once the MM tried to resolve it at `address`.
pub fn outcome(resolved: Result<(), MmError>, address: u64) -> FaultOutcome {
    match resolved {
        Ok(()) => FaultOutcome::Resolved,
        Err(MmError::OutOfFrames) => FaultOutcome::OutOfMemory,
        Err(e) => panic!("paging in {address:#x} failed: {e:?}"),
    }
}
