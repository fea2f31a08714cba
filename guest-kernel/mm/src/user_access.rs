//! Touches from ring 3: loads, stores and instruction fetches run in user mode through a
//! trampoline page, so the machine enforces U/S, R/W and NX. User code returns to the kernel
//! with `int3` (an exception), since `int N` and `syscall` from ring 3 do not work on the KVM
//! host this was built on.

use crate::address_space::AddressSpace;
use crate::hardware::Hardware;
use crate::machine::{
    Machine, UserEntry, UserTrap, VECTOR_BREAKPOINT, VECTOR_GENERAL_PROTECTION,
    VECTOR_INVALID_OPCODE, VECTOR_PAGE_FAULT,
};
use crate::page_fault::{handle_user_page_fault, FaultOutcome};
use shared_mm::abi::{FaultKind, OpResult, Status, KERNEL_SPACE_BASE, USER_TRAMPOLINE};
use shared_mm::address::PAGE_SIZE;
use shared_mm::pte::is_canonical;

pub use shared_mm::abi::TRAMPOLINE_CODE;

const READ_ENTRY: u64 = USER_TRAMPOLINE;
const READ_DONE: u64 = USER_TRAMPOLINE + 4;
const WRITE_ENTRY: u64 = USER_TRAMPOLINE + 8;
const WRITE_DONE: u64 = USER_TRAMPOLINE + 15;
const INT3: u8 = 0xcc;

/// Faults one touch may resolve: an unaligned access spans two pages.
const MAX_FAULTS: usize = 3;

/// What to do in ring 3.
#[derive(Clone, Copy, Debug)]
pub enum Touch {
    Read,
    Write(u64),
    Execute,
}

fn faulted(kind: FaultKind, addr: u64) -> OpResult {
    OpResult {
        status: Status::Faulted,
        fault: kind,
        addr,
        value: 0,
    }
}

/// Where ring 3 starts for `kind` at `addr`, and the `rip` its final `int3` reports.
fn entry_for(kind: Touch, addr: u64) -> (UserEntry, u64) {
    match kind {
        Touch::Read => (
            UserEntry {
                rip: READ_ENTRY,
                rdi: addr,
                rsi: 0,
            },
            READ_DONE,
        ),
        Touch::Write(value) => (
            UserEntry {
                rip: WRITE_ENTRY,
                rdi: addr,
                rsi: value,
            },
            WRITE_DONE,
        ),
        Touch::Execute => (
            UserEntry {
                rip: addr,
                rdi: 0,
                rsi: 0,
            },
            addr.wrapping_add(1),
        ),
    }
}

/// Runs one touch at `addr` in `space` (which must be the active address space).
pub fn touch<M: Machine>(
    space: &mut AddressSpace,
    addr: u64,
    kind: Touch,
    hw: &mut Hardware<M>,
) -> OpResult {
    if matches!(kind, Touch::Execute) && !is_canonical(addr) {
        // iretq to a non-canonical RIP would fault in ring 0; report what ring 3 would get.
        return faulted(FaultKind::GeneralProtection, addr);
    }
    let (entry, done) = entry_for(kind, addr);
    for _ in 0..=MAX_FAULTS {
        let trap = run_once(space, &entry, kind, hw);
        match trap.vector {
            VECTOR_BREAKPOINT if trap.rip == done => {
                let value = if matches!(kind, Touch::Execute) {
                    0
                } else {
                    trap.rax
                };
                return OpResult {
                    status: Status::Ok,
                    fault: FaultKind::None,
                    addr,
                    value,
                };
            }
            VECTOR_PAGE_FAULT => {
                match handle_user_page_fault(space, trap.fault_address, trap.error_code, hw) {
                    FaultOutcome::Resolved => continue,
                    FaultOutcome::Segv(kind) => return faulted(kind, trap.fault_address),
                    FaultOutcome::OutOfMemory => return OpResult::error(Status::OutOfMemory),
                }
            }
            VECTOR_GENERAL_PROTECTION => return faulted(FaultKind::GeneralProtection, addr),
            VECTOR_INVALID_OPCODE => return faulted(FaultKind::InvalidOpcode, trap.rip),
            _ => panic!("unexpected trap from ring 3: {trap:?}"),
        }
    }
    panic!("touch at {addr:#x} still faults after {MAX_FAULTS} resolved faults");
}

/// Enters ring 3 once. For an execute touch, plants `int3` at the target if its page is
/// present, and restores the byte afterwards, so the data stays as it was.
fn run_once<M: Machine>(
    space: &AddressSpace,
    entry: &UserEntry,
    kind: Touch,
    hw: &mut Hardware<M>,
) -> UserTrap {
    let planted = match kind {
        // Only user pages: a kernel page must never be patched on a user's behalf.
        Touch::Execute if entry.rip < KERNEL_SPACE_BASE => space
            .directory()
            .translate(entry.rip & !(PAGE_SIZE - 1), &hw.machine)
            .map(|(frame, _)| {
                let offset = (entry.rip % PAGE_SIZE) as usize;
                let mut old = [0u8];
                hw.machine.read_frame(frame, offset, &mut old);
                hw.machine.write_frame(frame, offset, &[INT3]);
                (frame, offset, old)
            }),
        _ => None,
    };
    let trap = hw.machine.enter_user(entry);
    if let Some((frame, offset, old)) = planted {
        hw.machine.write_frame(frame, offset, &old);
    }
    trap
}
