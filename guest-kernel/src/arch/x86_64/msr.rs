//! Model-specific registers: `rdmsr` and `wrmsr`, for the modules that own what each MSR controls
//! (the per-CPU area's GS base, the local APIC).

use core::arch::asm;

/// Reads MSR `msr`.
///
/// # Safety
/// `msr` must be an MSR this CPU implements (reading one it does not raises #GP).
pub(super) unsafe fn read(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; rdmsr touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    }
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes `value` to MSR `msr`.
///
/// # Safety
/// `msr` must be an MSR this CPU implements, `value` valid for it, and the change one the rest
/// of the kernel expects (the caller owns what the MSR controls).
pub(super) unsafe fn write(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR, the value and the consequences. Not `nomem`: an
    // MSR write (an ICR write sending an IPI, say) must not move before earlier stores.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}
