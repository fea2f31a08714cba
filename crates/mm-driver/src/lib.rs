//! The seam between drivers and backends. A driver (the self-check, a scenario, the fuzzer, a
//! replay, gdb's observer) hands a guest's MM operations out and judges what comes back; a
//! backend (kvm, or the in-process sim) runs them. This crate holds what both sides agree on:
//! the [`Driver`] trait and the report chunks it receives, the backend-neutral
//! [`GuestConfig`], the [`Guest`] a backend boots and the [`Boot`] that boots it, and the
//! [`RunError`] a run can end with. The seam and the two backends: `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod console;
pub mod driver;
pub mod protocol_error;
pub mod run_error;
pub mod stop;

pub use backend::{Backend, Boot, Guest};
pub use config::GuestConfig;
pub use driver::{Driver, DriverError};
pub use run_error::RunError;
