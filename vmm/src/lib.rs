//! The VMM library: boots the guest kernel under KVM, serves its hypercalls,
//! inspects its page tables and fuzzes its memory manager.

pub mod arch;
pub mod backend;
pub mod boot_memory;
pub mod checker;
pub mod coverage;
pub mod driver;
pub mod error;
pub mod fuzz;
pub mod gdb;
pub mod guest_build;
pub mod hypercall;
pub mod inspect;
pub mod kick;
pub mod loader;
pub mod page_walk;
pub mod scenario;
pub mod serial;
pub mod sim;
pub mod tlb;
pub mod vm;
pub mod watchdog;

pub use backend::{Backend, Guest};
pub use error::VmmError;
pub use vm::{Vm, VmConfig};
