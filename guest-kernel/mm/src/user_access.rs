//! Touches from ring 3: loads, stores and instruction fetches run in user mode through a
//! trampoline page, so the machine enforces U/S, R/W and NX. User code returns to the kernel
//! with `int3` (an exception), since `int N` and `syscall` from ring 3 do not work on the KVM
//! host this was built on.
//!
//! A touch holds its space's lock only to load the space and to resolve a fault: it runs ring 3
//! with no MM lock held, so another CPU may unmap, protect, fork or destroy the space meanwhile,
//! and the fault path looks its region up again under the lock.

use crate::address_space::AddressSpace;
use crate::cpu::Cpu;
use crate::hardware::Hardware;
use crate::machine::{
    Machine, UserEntry, UserTrap, VECTOR_BREAKPOINT, VECTOR_GENERAL_PROTECTION,
    VECTOR_INVALID_OPCODE, VECTOR_PAGE_FAULT,
};
use crate::memory_manager::{MemoryManager, SpaceHandle};
use crate::page_fault::{handle_user_page_fault, FaultOutcome};
use crate::seeded_bugs::Bug;
use crate::{MmError, PhysicalFrame};
use shared_mm::abi::{FaultKind, OpResult, Status, KERNEL_SPACE_BASE, MAX_BATCH, USER_TRAMPOLINE};
use shared_mm::address::PAGE_SIZE;
use shared_mm::pte::is_canonical;
use shared_mm::smp::MAX_CPUS;

pub use shared_mm::abi::TRAMPOLINE_CODE;

const READ_ENTRY: u64 = USER_TRAMPOLINE;
const READ_DONE: u64 = USER_TRAMPOLINE + 4;
const WRITE_ENTRY: u64 = USER_TRAMPOLINE + 8;
const WRITE_DONE: u64 = USER_TRAMPOLINE + 15;
const INT3: u8 = 0xcc;

/// Faults one touch may resolve with no other CPU taking a page away meanwhile: an unaligned
/// access spans two pages (3). A fault that is resolved and never sticks is a bug, reported by
/// a panic.
const MAX_UNDONE_BY_NOBODY: usize = 3;

/// Faults one touch may resolve in all: another CPU may take a resolved page away again
/// (unmap, protect) before the retry, once per operation it runs meanwhile, so every other
/// CPU's batch more.
const MAX_FAULTS: usize = MAX_UNDONE_BY_NOBODY + MAX_BATCH * MAX_CPUS as usize;

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

/// Runs one touch at `addr` in `space` on `cpu`.
pub fn touch<M: Machine>(
    mm: &MemoryManager<M>,
    cpu: &mut Cpu<M>,
    space: &SpaceHandle,
    addr: u64,
    kind: Touch,
) -> OpResult {
    if matches!(kind, Touch::Execute) && !is_canonical(addr) {
        // iretq to a non-canonical RIP would fault in ring 0; report what ring 3 would get.
        return faulted(FaultKind::GeneralProtection, addr);
    }
    let (entry, done) = entry_for(kind, addr);
    // Load the space (and plant the `int3`), under its lock; ring 3 runs with no lock held.
    let loaded = mm.locked(cpu, space, |s, hw| Ok(plant(s, &entry, kind, hw)));
    let Retry {
        mut planted,
        mut downgrades,
    } = match loaded {
        Ok(retry) => retry,
        Err(e) => return OpResult::error(e.into()),
    };
    let mut undone_by_nobody = 0;
    for resolved in 0..=MAX_FAULTS {
        let trap = cpu.machine.enter_user(&entry);
        if let Some((frame, offset, old)) = planted.take() {
            cpu.machine.write_frame(frame, offset, &old);
        }
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
            VECTOR_PAGE_FAULT => match page_fault(mm, cpu, space, &trap, &entry, kind) {
                Ok((FaultOutcome::Resolved, again)) => {
                    if again.downgrades == downgrades {
                        undone_by_nobody += 1;
                        if undone_by_nobody > MAX_UNDONE_BY_NOBODY {
                            panic!(
                                "touch at {addr:#x} still faults after {resolved} resolved \
                                 faults, {MAX_UNDONE_BY_NOBODY} of which no other CPU undid"
                            );
                        }
                    }
                    (planted, downgrades) = (again.planted, again.downgrades);
                }
                Ok((FaultOutcome::Segv(kind), _)) => return faulted(kind, trap.fault_address),
                Ok((FaultOutcome::OutOfMemory, _)) => return OpResult::error(Status::OutOfMemory),
                Err(e) => return OpResult::error(e.into()),
            },
            VECTOR_GENERAL_PROTECTION => return faulted(FaultKind::GeneralProtection, addr),
            VECTOR_INVALID_OPCODE => return faulted(FaultKind::InvalidOpcode, trap.rip),
            _ => panic!("unexpected trap from ring 3: {trap:?}"),
        }
    }
    panic!("touch at {addr:#x} still faults after {MAX_FAULTS} resolved faults");
}

/// Where an execute touch planted its `int3`, and the byte it replaced.
type Planted = Option<(PhysicalFrame, usize, [u8; 1])>;

/// What a touch goes back to ring 3 with: its planted `int3`, and the space's
/// [`AddressSpace::downgrades`] as of then.
struct Retry {
    planted: Planted,
    downgrades: u64,
}

/// The page fault `trap` raised, handled with the space locked again: its region is looked up
/// afresh, since another CPU may have changed the space while this one was in ring 3. A
/// resolved fault leaves the space loaded for the next stay in ring 3 (an execute touch plants
/// its `int3` again: the page may be present now).
fn page_fault<M: Machine>(
    mm: &MemoryManager<M>,
    cpu: &mut Cpu<M>,
    space: &SpaceHandle,
    trap: &UserTrap,
    entry: &UserEntry,
    kind: Touch,
) -> Result<(FaultOutcome, Retry), MmError> {
    let (address, code) = (trap.fault_address, trap.error_code);
    if mm.bugs().has(Bug::FaultNoRecheck) {
        let outcome = crate::page_fault::without_recheck(mm, cpu, space, address, code)?;
        let retry = mm.locked(cpu, space, |s, hw| {
            Ok(retry_after(&outcome, s, entry, kind, hw))
        })?;
        return Ok((outcome, retry));
    }
    mm.locked(cpu, space, |s, hw| {
        let outcome = handle_user_page_fault(s, address, code, hw);
        let retry = retry_after(&outcome, s, entry, kind, hw);
        Ok((outcome, retry))
    })
}

/// For an execute touch whose target page is present, writes `int3` there; returns where and
/// the byte it replaced, with the space's downgrades as of now.
fn plant<M: Machine>(
    space: &AddressSpace,
    entry: &UserEntry,
    kind: Touch,
    hw: &mut Hardware<'_, M>,
) -> Retry {
    Retry {
        planted: plant_int3(space, entry, kind, hw),
        downgrades: space.downgrades,
    }
}

/// What a fault that ended with `outcome` goes back to ring 3 with: a resolved one plants
/// again.
fn retry_after<M: Machine>(
    outcome: &FaultOutcome,
    space: &AddressSpace,
    entry: &UserEntry,
    kind: Touch,
    hw: &mut Hardware<'_, M>,
) -> Retry {
    match outcome {
        FaultOutcome::Resolved => plant(space, entry, kind, hw),
        _ => Retry {
            planted: None,
            downgrades: space.downgrades,
        },
    }
}

/// [`plant`]'s `int3`, for an execute touch whose target page is present.
fn plant_int3<M: Machine>(
    space: &AddressSpace,
    entry: &UserEntry,
    kind: Touch,
    hw: &mut Hardware<'_, M>,
) -> Planted {
    match kind {
        // Only user pages: a kernel page must never be patched on a user's behalf.
        Touch::Execute if entry.rip < KERNEL_SPACE_BASE => space
            .directory()
            .translate(entry.rip & !(PAGE_SIZE - 1), hw.machine_ref())
            .map(|(frame, _)| {
                let offset = (entry.rip % PAGE_SIZE) as usize;
                let mut old = [0u8];
                hw.machine().read_frame(frame, offset, &mut old);
                hw.machine().write_frame(frame, offset, &[INT3]);
                (frame, offset, old)
            }),
        _ => None,
    }
}
