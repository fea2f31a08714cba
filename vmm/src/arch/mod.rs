//! x86_64 machine setup for 64-bit entry: GDT, boot page tables, registers and CPUID.
#![forbid(unsafe_code)]

pub mod cpuid;
pub mod gdt;
pub mod paging;
pub mod regs;
