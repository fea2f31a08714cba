//! The kernel reading and writing user memory, the way Linux's `access_process_vm` and
//! `get_user_pages` do it: in software, through the space's own page tables, with the checks
//! uaccess makes (the range is user memory, the region allows the access, a page not present
//! yet is faulted in), and the data moved through the kernel's direct map.

use crate::address_space::AddressSpace;
use crate::hardware::Hardware;
use crate::machine::Machine;
use crate::page_fault::{outcome, FaultOutcome};
use shared_mm::abi::{FaultKind, OpResult, Status, USER_SPACE_BASE, USER_SPACE_END};
use shared_mm::address::{VirtualAddress, PAGE_SIZE};
use shared_mm::pte::PageTableFlags;
use shared_mm::region::Access;

/// What the kernel does at the user address.
#[derive(Clone, Copy, Debug)]
pub enum KernelAccess {
    Read,
    Write(u64),
}

fn faulted(kind: FaultKind, addr: u64) -> OpResult {
    OpResult {
        status: Status::Faulted,
        fault: kind,
        addr,
        value: 0,
    }
}

/// Makes the page at `page` present with `required` access for a kernel access, faulting it in
/// if needed; the fault a user access would get otherwise.
fn make_present<M: Machine>(
    space: &mut AddressSpace,
    page: u64,
    required: Access,
    hw: &mut Hardware<'_, M>,
) -> FaultOutcome {
    let Some(region) = space
        .tree()
        .find_region_containing(VirtualAddress::new(page))
    else {
        return FaultOutcome::Segv(FaultKind::SegvNoRegion);
    };
    let access = region.access();
    if !access.contains(Access::USER) || !access.contains(required) {
        return FaultOutcome::Segv(FaultKind::SegvAccess);
    }
    let write = required == Access::WRITE;
    match space.directory().translate(page, hw.machine_ref()) {
        Some((_, flags)) if !write || flags.contains(PageTableFlags::WRITABLE) => {
            FaultOutcome::Resolved
        }
        // A write to a read-only page of a writable region: copy-on-write, as for ring 3.
        Some(_) => outcome(space.break_cow(page, hw), page),
        None => outcome(space.populate(page, write, hw), page),
    }
}

/// Runs one kernel access to the u64 at `addr` of `space`.
pub fn kernel_access<M: Machine>(
    space: &mut AddressSpace,
    addr: u64,
    kind: KernelAccess,
    hw: &mut Hardware<'_, M>,
) -> OpResult {
    // access_ok: the whole range must be user memory.
    let in_user =
        addr >= USER_SPACE_BASE && addr.checked_add(8).is_some_and(|e| e <= USER_SPACE_END);
    if !in_user {
        return faulted(FaultKind::SegvAccess, addr);
    }
    let required = match kind {
        KernelAccess::Read => Access::READ,
        KernelAccess::Write(_) => Access::WRITE,
    };
    let last = addr + 7;
    let second = (last / PAGE_SIZE != addr / PAGE_SIZE).then_some(last & !(PAGE_SIZE - 1));
    for at in core::iter::once(addr).chain(second) {
        match make_present(space, at & !(PAGE_SIZE - 1), required, hw) {
            FaultOutcome::Resolved => {}
            FaultOutcome::Segv(fault) => return faulted(fault, at),
            FaultOutcome::OutOfMemory => return OpResult::error(Status::OutOfMemory),
        }
    }
    if let KernelAccess::Write(value) = kind {
        move_bytes(space, addr, Some(value), hw);
    }
    OpResult {
        value: move_bytes(space, addr, None, hw),
        ..OpResult::ok()
    }
}

/// Writes `value` (if given) or reads the 8 bytes at `addr`, page by page through the direct
/// map; both pages are present. Returns what was read (0 for a write).
fn move_bytes<M: Machine>(
    space: &AddressSpace,
    addr: u64,
    value: Option<u64>,
    hw: &mut Hardware<'_, M>,
) -> u64 {
    let mut bytes = value.unwrap_or(0).to_le_bytes();
    let mut done = 0;
    while done < bytes.len() {
        let at = addr + done as u64;
        let offset = (at % PAGE_SIZE) as usize;
        let len = (PAGE_SIZE as usize - offset).min(bytes.len() - done);
        let (frame, flags) = space
            .directory()
            .translate(at & !(PAGE_SIZE - 1), hw.machine_ref())
            .expect("the page was made present");
        let chunk = &mut bytes[done..done + len];
        match value {
            Some(_) => {
                debug_assert!(flags.contains(PageTableFlags::WRITABLE));
                hw.machine().write_frame(frame, offset, chunk);
            }
            None => hw.machine().read_frame(frame, offset, chunk),
        }
        done += len;
    }
    u64::from_le_bytes(bytes)
}
