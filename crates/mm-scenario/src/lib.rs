//! Scenarios: MM operations with the results they must give, in one text format that the
//! built-in self-check, the seeded-bug bait, fuzz reproducers and users' regression files share;
//! its parser and printer, and the runner that plays a scenario on a guest of either backend and
//! judges each result (with the checker after every batch, when asked). The format and its
//! grammar: `docs/scenarios.md`.
#![forbid(unsafe_code)]

pub mod builtin;
pub mod expect;
pub mod file;
pub mod format;
pub mod header;
pub mod ops;
pub mod record;
pub mod reproduced;
pub mod runner;

pub use builtin::{bug_bait, self_check};
pub use expect::Expect;
pub use format::{Scenario, Step};
pub use runner::{run, run_checked, Outcome};
