//! The VMM library: boots the guest kernel under KVM, serves its hypercalls,
//! inspects its page tables and fuzzes its memory manager.
// Unsafe code is opt-in per module: only the KVM memory slots (`vm`) and the signal that kicks
// the vCPU thread out of KVM_RUN (`kick`) and the Ctrl-C handler (`interrupt`) need it. Every other module forbids it.
#![deny(unsafe_code)]

pub mod arch;
pub mod backends;
pub mod cpus;
pub mod error;
pub mod gdb;
pub mod hypercall;
pub mod inspect;
#[allow(unsafe_code)]
pub mod interrupt;
#[allow(unsafe_code)]
pub mod kick;
pub mod report_guard;
pub mod serial;
pub mod trace;
pub mod vcpu_exit;
#[allow(unsafe_code)]
pub mod vm;
pub mod watchdog;

pub use backends::Backends;
pub use error::VmmError;
pub use vm::Vm;
