//! The built-in scenarios, embedded from this crate's `scenarios/`: the MM self-check that
//! `vmm run` runs, and the bait that springs every seeded bug.

use crate::format::Scenario;

/// The self-check's file name, for messages.
pub const SELF_CHECK_NAME: &str = "self-check.scn";
/// The self-check: every operation kind and edge case, in batches of eight to ten, and a
/// step or check that every seeded bug but the end-of-RAM one trips (the placement probe that
/// the fuzz engine's `SelfCheck` driver sends after it trips the ASLR one).
pub const SELF_CHECK: &str = include_str!("../scenarios/self-check.scn");
/// The SMP part's file name, for messages.
pub const SMP_CHECK_NAME: &str = "smp-check.scn";
/// The SMP part of the self-check, which `vmm run` runs after it with several CPUs: changes on
/// CPU 0 to a space that CPU 1 caches, each shot down on CPU 1.
pub const SMP_CHECK: &str = include_str!("../scenarios/smp-check.scn");
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

/// The SMP part of the self-check (its steps name CPUs 0 and 1).
pub fn smp_check() -> Scenario {
    builtin(SMP_CHECK)
}

/// A short scenario in seven batches that springs each seeded bug of the guest (see the `bug-*`
/// features in guest-kernel/Cargo.toml): the agreement checker runs between batches, and each
/// step's expectation catches what the checker cannot see.
pub fn bug_bait() -> Scenario {
    builtin(BUG_BAIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::MAX_BATCH;
    use std::collections::BTreeSet;

    #[test]
    fn the_built_in_files_parse_and_expect_a_result_of_every_step() {
        let all = [
            ("self-check", self_check()),
            ("bug-bait", bug_bait()),
            ("smp-check", smp_check()),
        ];
        for (name, scenario) in all {
            assert!(scenario.steps().count() > 0, "{name}");
            assert!(
                scenario
                    .steps()
                    .all(|s| s.expect.is_some() && !s.label.is_empty()),
                "{name}: every built-in step has an expectation and a label"
            );
            assert!(scenario.batches.iter().all(|b| b.len() <= MAX_BATCH));
        }
        // 93 steps in batches of 8 to 10; the bait in 6, 5, 7, 1, 10, 6 and 5.
        let batches = |s: Scenario| s.batches.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(batches(self_check()), [8, 8, 9, 8, 10, 8, 8, 8, 8, 10, 8]);
        assert_eq!(batches(bug_bait()), [6, 5, 7, 1, 10, 6, 5]);
        let on_cpu1 = smp_check().steps().filter(|s| s.cpu == 1).count();
        assert_eq!((smp_check().steps().count(), on_cpu1), (17, 8));
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
