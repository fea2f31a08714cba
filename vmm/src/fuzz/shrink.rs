//! Shrinking a failing operation sequence to a minimal one that fails the same way
//! (delta debugging: drop ever smaller chunks while the failure keeps its signature).

use super::{replay, Signature};
use crate::{VmConfig, VmmError};
use shared_mm::abi::Op;
use std::time::{Duration, Instant};

/// Limits on shrinking work.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_replays: usize,
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_replays: 2_000,
            max_time: Duration::from_secs(120),
        }
    }
}

/// The result of shrinking.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub ops: Vec<Op>,
    pub replays: usize,
    /// Whether the budget ran out before no chunk could be removed.
    pub budget_exhausted: bool,
}

/// Shrinks `ops` against `still_fails`, which returns the failing prefix length when a
/// candidate still fails the same way.
pub fn shrink_with(
    ops: &[Op],
    budget: Budget,
    mut still_fails: impl FnMut(&[Op]) -> Result<Option<usize>, VmmError>,
) -> Result<Shrunk, VmmError> {
    let start = Instant::now();
    let mut replays = 0;
    let mut out_of_budget = || {
        replays += 1;
        replays > budget.max_replays || start.elapsed() > budget.max_time
    };
    let mut current = ops.to_vec();
    if out_of_budget() {
        return Ok(Shrunk {
            ops: current,
            replays: 0,
            budget_exhausted: true,
        });
    }
    match still_fails(&current)? {
        Some(prefix) => current.truncate(prefix),
        None => {
            return Ok(Shrunk {
                ops: current,
                replays: 1,
                budget_exhausted: false,
            })
        }
    }
    let mut chunk = current.len().div_ceil(2).max(1);
    let mut exhausted = false;
    'passes: loop {
        let mut removed_any = false;
        let mut i = 0;
        while i < current.len() {
            if out_of_budget() {
                exhausted = true;
                break 'passes;
            }
            let end = (i + chunk).min(current.len());
            let candidate: Vec<Op> = current[..i]
                .iter()
                .chain(&current[end..])
                .copied()
                .collect();
            match still_fails(&candidate)? {
                Some(prefix) => {
                    current = candidate;
                    current.truncate(prefix);
                    removed_any = true;
                }
                None => i += chunk,
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    Ok(Shrunk {
        ops: current,
        replays,
        budget_exhausted: exhausted,
    })
}

/// Shrinks `ops`, replaying each candidate on a fresh guest, keeping those that fail with
/// `target`.
pub fn shrink(
    config: &VmConfig,
    ops: &[Op],
    target: &Signature,
    budget: Budget,
) -> Result<Shrunk, VmmError> {
    shrink_with(ops, budget, |candidate| {
        Ok(replay(config, candidate)?
            .filter(|(f, _)| &f.signature == target)
            .map(|(_, prefix)| prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake failure: fails once ops 3 and 7 (by value) have both run; prefix ends at the later.
    fn fails(ops: &[Op]) -> Result<Option<usize>, VmmError> {
        let pos = |n: u32| {
            ops.iter()
                .position(|op| *op == Op::DestroySpace { space: n })
        };
        Ok(match (pos(3), pos(7)) {
            (Some(a), Some(b)) => Some(a.max(b) + 1),
            _ => None,
        })
    }

    #[test]
    fn shrinks_to_the_two_ops_that_matter() {
        let ops: Vec<Op> = (0..100).map(|n| Op::DestroySpace { space: n }).collect();
        let shrunk = shrink_with(&ops, Budget::default(), fails).expect("no VM involved");
        assert_eq!(
            shrunk.ops,
            vec![Op::DestroySpace { space: 3 }, Op::DestroySpace { space: 7 }]
        );
        assert!(!shrunk.budget_exhausted);
    }

    #[test]
    fn passing_input_is_returned_as_is() {
        let ops = vec![Op::CreateSpace];
        let shrunk = shrink_with(&ops, Budget::default(), fails).expect("no VM involved");
        assert_eq!(shrunk.ops, ops);
    }

    #[test]
    fn budget_is_respected() {
        let ops: Vec<Op> = (0..100).map(|n| Op::DestroySpace { space: n }).collect();
        let budget = Budget {
            max_replays: 5,
            max_time: Duration::from_secs(60),
        };
        let shrunk = shrink_with(&ops, budget, fails).expect("no VM involved");
        assert!(shrunk.budget_exhausted && shrunk.replays <= 6);
    }
}
