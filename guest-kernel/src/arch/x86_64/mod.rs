//! x86_64 specifics: the only place in the kernel that executes privileged or raw instructions.

pub mod apic;
pub mod cpuid;
pub mod gdt;
pub mod heartbeat;
pub mod idt;
pub mod interrupts;
pub mod machine;
mod msr;
pub mod percpu;
pub mod physmap;
pub mod port;
pub mod registers;
pub mod trace_buffer;
pub mod tsc;

/// Stops this CPU for good (interrupts stay disabled).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops the CPU; with interrupts off it never resumes.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Shuts the CPU down on purpose: with an empty IDT, the next exception cannot be delivered
/// and escalates to a triple fault.
pub fn triple_fault() -> ! {
    let empty_idt = [0u16; 5];
    // SAFETY: deliberately loads a zero-limit IDT and raises #UD; the CPU shuts down and the
    // VMM sees KVM_EXIT_SHUTDOWN. Nothing runs afterwards.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) empty_idt.as_ptr(), options(noreturn)) }
}
