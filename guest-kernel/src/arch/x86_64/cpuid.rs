//! The CPUID instruction.
#![forbid(unsafe_code)]

/// Registers returned by one CPUID leaf.
#[derive(Clone, Copy, Debug)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Runs CPUID for `leaf` (sub-leaf 0).
pub fn cpuid(leaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}
