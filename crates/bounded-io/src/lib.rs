//! Input that cannot hang or flood the host: files read only if regular and up to a cap,
//! outputs written atomically, and error lines that quote at most an excerpt of any input.
//! The bounds it enforces: `docs/exit-codes-and-bounds.md`.
#![forbid(unsafe_code)]

pub mod excerpt;
pub mod files;
