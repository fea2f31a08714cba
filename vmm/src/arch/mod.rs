//! x86_64 vCPU setup for 64-bit entry under KVM: segments, registers and CPUID.
#![forbid(unsafe_code)]

pub mod cpuid;
pub mod gdt;
pub mod regs;
