//! This CPU's local APIC in x2APIC mode (MSRs, no MMIO): enable it, send an IPI, signal the end
//! of an interrupt. Only with several CPUs: a one-CPU VM has no in-kernel irqchip, and its
//! guest never touches the APIC.

use super::cpuid::cpuid;
use super::msr;

/// The vector of a cross call: requests wait for the target (its handler runs them).
pub const IPI_VECTOR: u8 = 0xf0;
/// The vector that wakes a CPU halted for acknowledgements: its handler only signals the end
/// of the interrupt, so the wake-up costs a few instructions.
pub const WAKE_VECTOR: u8 = 0xf1;
/// The spurious-interrupt vector (the low byte of the SVR).
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_ID: u32 = 0x802;
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SVR: u32 = 0x80f;
const X2APIC_ICR: u32 = 0x830;
/// SVR bit 8: the APIC is software-enabled.
const SVR_ENABLE: u64 = 1 << 8;
/// ICR: level assert, fixed delivery, physical destination.
const ICR_ASSERT: u64 = 1 << 14;
/// CPUID leaf 1 ECX bit 21: x2APIC.
const CPUID_X2APIC: u32 = 1 << 21;

/// Puts this CPU's local APIC in x2APIC mode and enables it; returns its APIC id.
pub fn enable() -> u32 {
    assert!(
        cpuid(1).ecx & CPUID_X2APIC != 0,
        "this CPU has no x2APIC (CPUID leaf 1 ECX bit 21)"
    );
    // SAFETY: the x2APIC exists (checked above). xAPIC to x2APIC goes through enabled xAPIC
    // (EN, then EN|EXTD), the order the SDM requires (Vol. 3A 11.12.5); interrupts are off, and
    // nothing else in the kernel uses the APIC yet. SVR enables it with the spurious vector,
    // which has its IDT gate.
    unsafe {
        let base = msr::read(IA32_APIC_BASE);
        msr::write(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
        msr::write(IA32_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        msr::write(X2APIC_SVR, SVR_ENABLE | u64::from(SPURIOUS_VECTOR));
        msr::read(X2APIC_ID) as u32
    }
}

/// Sends an IPI with `vector` ([`IPI_VECTOR`] or [`WAKE_VECTOR`]) to the CPU with APIC id
/// `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    let icr = (u64::from(apic_id) << 32) | ICR_ASSERT | u64::from(vector);
    // SAFETY: only called after `enable` (the ICR exists in x2APIC mode); a fixed IPI to a
    // vector with an IDT gate changes nothing but the target's pending interrupts.
    unsafe { msr::write(X2APIC_ICR, icr) }
}

/// Tells the APIC the interrupt being handled is done.
pub fn end_of_interrupt() {
    // SAFETY: called from the handler of an APIC interrupt, so the APIC is in x2APIC mode; EOI
    // takes 0 and only retires the in-service interrupt.
    unsafe { msr::write(X2APIC_EOI, 0) }
}

/// The EOI register, for the wake-up stub, which writes it itself.
pub const EOI_MSR: u32 = X2APIC_EOI;
