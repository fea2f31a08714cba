//! Guest RAM as both backends boot it: the kernel ELF checked and loaded at its physical
//! addresses, the memory map and boot info, the entry GDT and the boot page tables. The kvm
//! backend then enters the kernel; the sim brings up the MM library on the same RAM, so the
//! same seed and operations give the same results on both. The layout it writes:
//! `docs/abi.md`.
#![forbid(unsafe_code)]

pub mod boot_memory;
pub mod boot_tables;
pub mod error;
pub mod gdt;
pub mod loader;

pub use boot_memory::{BootMemory, BootSpec};
pub use error::BootError;
