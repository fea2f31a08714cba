//! x86_64 specifics: the only place in the kernel that executes privileged or raw instructions.

pub mod cpuid;
pub mod physmap;
pub mod port;

/// Stops this CPU for good (interrupts stay disabled).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops the CPU; with interrupts off it never resumes.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
