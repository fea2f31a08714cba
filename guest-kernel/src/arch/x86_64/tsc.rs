//! The time-stamp counter, for the guest's own timing of what the host cannot see (an IPI's
//! round trip between two CPUs).

use core::arch::asm;

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc reads a counter and has no other effect (this kernel leaves CR4.TSD clear).
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    }
    (u64::from(high) << 32) | u64::from(low)
}
