//! The built-in scenarios, embedded from this crate's `scenarios/`: the MM self-check that
//! `vmm run` runs, and the bait that springs every seeded bug.

use crate::format::Scenario;
use crate::runner::Runner;
use mm_driver::driver::{Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use shared_mm::abi::{Op, OpResult, SpaceRecord, KERNEL_SPACE};
use vm_memory::GuestMemoryMmap;

/// The self-check's file name, for messages.
pub const SELF_CHECK_NAME: &str = "self-check.scn";
/// The self-check: every operation kind and edge case, in batches of eight, and a step or
/// check that every seeded bug but the end-of-RAM one trips.
pub const SELF_CHECK: &str = include_str!("../scenarios/self-check.scn");
/// The seeded-bug bait: seven batches, the last three around a fork.
pub const BUG_BAIT: &str = include_str!("../scenarios/bug-bait.scn");

fn builtin(text: &str) -> Scenario {
    // The embedded files are part of the source: a unit test parses each one.
    Scenario::parse(text).unwrap_or_else(|e| panic!("a built-in scenario does not parse: {e}"))
}

/// The self-check scenario.
pub fn self_check() -> Scenario {
    builtin(SELF_CHECK)
}

/// A short scenario in seven batches that springs each seeded bug of the guest (see the `bug-*`
/// features in guest-kernel/Cargo.toml): the agreement checker runs between batches, and each
/// step's expectation catches what the checker cannot see.
pub fn bug_bait() -> Scenario {
    builtin(BUG_BAIT)
}

/// Runs the self-check and records what passed; at the end it also checks the kernel's
/// snapshot for its three unbacked reservations.
pub struct SelfCheck {
    runner: Runner,
    /// One line per failed step or check.
    pub failures: Vec<String>,
    /// Region trees received, in arrival order (complete once the run has ended).
    pub snapshots: Vec<SpaceSnapshot>,
    /// Steps whose results have been checked.
    pub checked: usize,
}

impl SelfCheck {
    pub fn new() -> Self {
        SelfCheck {
            runner: Runner::new(&self_check()),
            failures: Vec::new(),
            snapshots: Vec::new(),
            checked: 0,
        }
    }

    pub fn step_count(&self) -> usize {
        self.runner.step_count()
    }

    pub fn passed(&self) -> bool {
        self.checked == self.step_count() && self.failures.is_empty()
    }

    /// Called once the last batch is judged.
    fn finish(&mut self) {
        let mismatches = self.runner.mismatches.iter();
        self.failures = mismatches
            .map(|m| format!("{SELF_CHECK_NAME} {m}"))
            .collect();
        self.snapshots = self.runner.snapshots().to_vec();
        self.check_kernel_snapshot();
    }

    fn check_kernel_snapshot(&mut self) {
        let Some(kernel) = self.snapshots.iter().find(|s| s.space == KERNEL_SPACE) else {
            self.failures
                .push("the guest sent no kernel snapshot".into());
            return;
        };
        let kernel = &kernel.regions;
        let names: Vec<&str> = kernel.iter().map(|r| r.name_str()).collect();
        let mut missing: Vec<String> = ["physmap", "kernel image", "kmalloc"]
            .iter()
            .filter(|wanted| !names.contains(wanted))
            .map(|wanted| format!("kernel snapshot lacks the {wanted:?} region: {names:?}"))
            .collect();
        if kernel.iter().any(|r| r.backed != 0) {
            missing.push("kernel reservations must be unbacked".into());
        }
        self.failures.extend(missing);
    }
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver for SelfCheck {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        let next = self.runner.next_batch(mem, results, spaces)?;
        self.checked = self.runner.judged();
        if next.is_none() {
            self.finish();
        }
        Ok(next)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.runner.snapshot(mem, chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::MAX_BATCH;
    use std::collections::BTreeSet;

    #[test]
    fn the_built_in_files_parse_and_expect_a_result_of_every_step() {
        for (name, scenario) in [("self-check", self_check()), ("bug-bait", bug_bait())] {
            assert!(scenario.steps().count() > 0, "{name}");
            assert!(
                scenario
                    .steps()
                    .all(|s| s.expect.is_some() && !s.label.is_empty()),
                "{name}: every built-in step has an expectation and a label"
            );
            assert!(scenario.batches.iter().all(|b| b.len() <= MAX_BATCH));
        }
        // 88 steps in batches of 8; the bait in 6, 5, 7, 1, 10, 6 and 5.
        let batches = |s: Scenario| s.batches.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(batches(self_check()), [8; 11]);
        assert_eq!(batches(bug_bait()), [6, 5, 7, 1, 10, 6, 5]);
    }

    #[test]
    fn the_self_check_covers_every_op_kind() {
        let kinds: BTreeSet<&str> = self_check()
            .steps()
            .map(|s| crate::ops::op_name(&s.op))
            .collect();
        assert_eq!(kinds.len(), 15, "{kinds:?}");
    }
}
