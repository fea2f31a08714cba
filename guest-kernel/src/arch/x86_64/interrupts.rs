//! Waiting for another CPU: halt with interrupts on (`sti; hlt`) until an interrupt, never
//! spin. On this host ring 0 is emulated: a spinning CPU sees an IPI about 20 times later than
//! a halted one (about 680 against 34-39 µs). The kernel otherwise runs with interrupts off.

use core::arch::asm;

/// Halts until `done` holds, taking interrupts while halted. Call with interrupts off (as the
/// kernel always runs); returns with them off.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    while !done() {
        // SAFETY: `sti` takes effect after the next instruction, so an interrupt that is already
        // pending (or arrives after the check above) wakes the `hlt` instead of being taken
        // before it and lost; its handler runs and returns after `hlt`, and `cli` restores the
        // kernel's interrupts-off state. Not `nomem`: handlers change memory `done` reads.
        unsafe { asm!("sti", "hlt", "cli", options(nostack)) }
    }
}

/// Serves interrupts for good: what a CPU with no work does.
pub fn idle() -> ! {
    loop {
        wait_until(|| false);
    }
}
