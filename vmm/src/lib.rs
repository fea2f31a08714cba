//! The VMM library: the KVM backend (the guest kernel booted under KVM, its vCPU threads and
//! hypercalls served), [`Backends`], which boots a guest on KVM or on the sim, `vmm inspect`'s
//! report and the gdb stub. The sim, the checker, the scenarios and the fuzz engine are crates
//! of their own that need no KVM (`docs/architecture.md`). Inspect's report: `docs/inspect.md`;
//! the gdb stub: `docs/gdb.md`.
// Unsafe code is opt-in per module: only the KVM memory slots (`vm`) and the signal that kicks
// the vCPU thread out of KVM_RUN (`kick`) and the Ctrl-C handler (`interrupt`) need it. Every other module forbids it.
#![deny(unsafe_code)]

pub mod arch;
pub mod backends;
pub mod cpus;
pub mod dirty_log;
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
