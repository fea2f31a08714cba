//! The per-CPU area each CPU reaches through its GS base: its index, its APIC id, the kernel
//! stack pointer its trip to ring 3 returns to and the trap that ended it, and whether the host
//! has work for it. Every CPU points GS at its own area first thing at entry (CPU 0 too), so
//! any code, the panic handler included, can ask which CPU it runs on.

use super::msr;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use guest_mm::UserTrap;
use shared_mm::smp::MAX_CPUS;

/// The GS base MSR.
const IA32_GS_BASE: u32 = 0xc000_0101;

/// One CPU's area. `index` is at offset 0, where [`current`] reads it through GS, and
/// `resume_rsp` at [`RESUME_RSP_OFFSET`], where the ring-3 entry and exit stubs reach it.
#[repr(C)]
struct PerCpu {
    index: u32,
    /// The APIC id the CPU read from its own local APIC; IPIs to it name this id.
    apic_id: AtomicU32,
    /// The kernel stack pointer `enter_user` saved, which a trap from ring 3 returns to.
    resume_rsp: AtomicU64,
    /// The trap that ended the last stay in ring 3: vector, error code, CR2, rip, rax.
    last_trap: [AtomicU64; 5],
    /// The host sent this CPU work ([`shared_mm::smp::WORK_VECTOR`]).
    work: AtomicBool,
}

/// Where `resume_rsp` sits in a CPU's area (the assembly stubs address it through GS).
pub const RESUME_RSP_OFFSET: usize = core::mem::offset_of!(PerCpu, resume_rsp);

const fn areas() -> [PerCpu; MAX_CPUS as usize] {
    let mut areas = [const {
        PerCpu {
            index: 0,
            apic_id: AtomicU32::new(0),
            resume_rsp: AtomicU64::new(0),
            last_trap: [const { AtomicU64::new(0) }; 5],
            work: AtomicBool::new(false),
        }
    }; MAX_CPUS as usize];
    let mut cpu = 0;
    while cpu < areas.len() {
        areas[cpu].index = cpu as u32;
        cpu += 1;
    }
    areas
}

static AREAS: [PerCpu; MAX_CPUS as usize] = areas();

/// Points this CPU's GS base at the area of CPU `cpu`. Call first thing at entry, once per CPU.
/// A CPU index past [`MAX_CPUS`] has no area, and no mailbox to complain through: such a CPU
/// stops for good (the VMM starts at most `MAX_CPUS`).
pub fn init(cpu: u64) {
    let Some(area) = usize::try_from(cpu).ok().and_then(|cpu| AREAS.get(cpu)) else {
        super::halt_forever()
    };
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the area is a static that lives
    // forever, and nothing in the kernel uses GS but `current`, which expects exactly this.
    unsafe { msr::write(IA32_GS_BASE, core::ptr::from_ref(area) as u64) }
}

/// The index of the CPU this runs on.
pub fn current() -> u32 {
    let index: u32;
    // SAFETY: `init` pointed GS at this CPU's `PerCpu` before anything else ran on it, and
    // `index` is at offset 0 of that `repr(C)` struct; the area is never written after that.
    unsafe {
        core::arch::asm!("mov {:e}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    }
    index
}

/// Records this CPU's APIC id, for the CPUs that send it IPIs.
pub fn set_apic_id(apic_id: u32) {
    AREAS[current() as usize]
        .apic_id
        .store(apic_id, Ordering::Release);
}

/// The APIC id CPU `cpu` recorded (0 before it did).
pub fn apic_id(cpu: u32) -> u32 {
    AREAS
        .get(cpu as usize)
        .map_or(0, |area| area.apic_id.load(Ordering::Acquire))
}

/// Records the trap that ended this CPU's stay in ring 3.
pub fn set_last_user_trap(trap: &UserTrap) {
    let fields = [
        trap.vector,
        trap.error_code,
        trap.fault_address,
        trap.rip,
        trap.rax,
    ];
    let area = &AREAS[current() as usize];
    for (slot, value) in area.last_trap.iter().zip(fields) {
        slot.store(value, Ordering::Relaxed);
    }
}

/// The trap that ended this CPU's last stay in ring 3.
pub fn last_user_trap() -> UserTrap {
    let [vector, error_code, fault_address, rip, rax] = AREAS[current() as usize]
        .last_trap
        .each_ref()
        .map(|f| f.load(Ordering::Relaxed));
    UserTrap {
        vector,
        error_code,
        fault_address,
        rip,
        rax,
    }
}

/// The host has work for this CPU: what its work interrupt's handler records.
pub fn work_arrived() {
    AREAS[current() as usize]
        .work
        .store(true, Ordering::Release);
}

/// Whether the host sent this CPU work since the last call (and forgets it).
pub fn take_work() -> bool {
    AREAS[current() as usize].work.swap(false, Ordering::AcqRel)
}
