//! Shrinking a failing operation sequence to a minimal one that fails the same way
//! (delta debugging: drop ever smaller chunks while the failure keeps its signature).
//!
//! Space ids are renumbered as operations go: the guest numbers spaces 1, 2, ... in creation
//! order, so dropping a `create-space` would otherwise point every later operation at the
//! wrong space. Operations on a space whose creation was dropped aim at id 0 (no such space).

use super::{replay, Signature};
use crate::{VmConfig, VmmError};
use shared_mm::abi::{Op, OpResult, Status, KERNEL_SPACE};
use std::time::{Duration, Instant};

/// Operations per batch when replaying candidates: small enough that a failure is pinned
/// close to its operation, large enough to keep replays quick.
const SHRINK_BATCH: usize = 16;

/// Limits on shrinking work.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_replays: usize,
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_replays: 1_000,
            max_time: Duration::from_secs(60),
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

fn space_of(op: &Op) -> Option<u32> {
    match *op {
        Op::CreateSpace => None,
        Op::DestroySpace { space }
        | Op::MapAnywhere { space, .. }
        | Op::MapFixed { space, .. }
        | Op::MapRandomized { space, .. }
        | Op::Unmap { space, .. }
        | Op::Protect { space, .. }
        | Op::TouchRead { space, .. }
        | Op::TouchWrite { space, .. }
        | Op::TouchExec { space, .. }
        | Op::Snapshot { space } => Some(space),
    }
}

fn with_space(op: Op, new: u32) -> Op {
    match op {
        Op::CreateSpace => Op::CreateSpace,
        Op::DestroySpace { .. } => Op::DestroySpace { space: new },
        Op::MapAnywhere {
            size,
            align,
            access,
            ..
        } => Op::MapAnywhere {
            space: new,
            size,
            align,
            access,
        },
        Op::MapFixed {
            addr, size, access, ..
        } => Op::MapFixed {
            space: new,
            addr,
            size,
            access,
        },
        Op::MapRandomized {
            size,
            align,
            access,
            ..
        } => Op::MapRandomized {
            space: new,
            size,
            align,
            access,
        },
        Op::Unmap { addr, size, .. } => Op::Unmap {
            space: new,
            addr,
            size,
        },
        Op::Protect {
            addr, size, access, ..
        } => Op::Protect {
            space: new,
            addr,
            size,
            access,
        },
        Op::TouchRead { addr, .. } => Op::TouchRead { space: new, addr },
        Op::TouchWrite { addr, value, .. } => Op::TouchWrite {
            space: new,
            addr,
            value,
        },
        Op::TouchExec { addr, .. } => Op::TouchExec { space: new, addr },
        Op::Snapshot { .. } => Op::Snapshot { space: new },
    }
}

/// For each op of `ops`, the index of the `create-space` that made the space it names (if any).
fn creators(ops: &[Op]) -> Vec<Option<usize>> {
    let created: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| **op == Op::CreateSpace)
        .map(|(i, _)| i)
        .collect();
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let space = space_of(op)?;
            let creator = *created.get((space as usize).checked_sub(1)?)?;
            (creator < i).then_some(creator)
        })
        .collect()
}

/// The operations at `kept` (indices into `ops`), with space ids renumbered.
fn materialize(ops: &[Op], creators: &[Option<usize>], kept: &[usize]) -> Vec<Op> {
    let mut new_id = vec![0u32; ops.len()];
    let mut next = 1;
    kept.iter()
        .map(|&i| {
            let op = ops[i];
            if op == Op::CreateSpace {
                new_id[i] = next;
                next += 1;
                return op;
            }
            match (space_of(&op), creators[i]) {
                (Some(KERNEL_SPACE), _) | (None, _) => op,
                (Some(_), Some(creator)) => with_space(op, new_id[creator]),
                // A space id no create-space made (a deliberately bad id): keep it as it was.
                (Some(_), None) => op,
            }
        })
        .collect()
}

/// Shrinks `ops` against `still_fails`, which returns the failing prefix length when a
/// candidate still fails the same way.
pub fn shrink_with(
    ops: &[Op],
    budget: Budget,
    mut still_fails: impl FnMut(&[Op]) -> Result<Option<usize>, VmmError>,
) -> Result<Shrunk, VmmError> {
    let start = Instant::now();
    let creators = creators(ops);
    let mut replays = 1;
    let mut current: Vec<usize> = (0..ops.len()).collect();
    match still_fails(ops)? {
        Some(prefix) => current.truncate(prefix),
        None => {
            return Ok(Shrunk {
                ops: ops.to_vec(),
                replays,
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
            if replays >= budget.max_replays || start.elapsed() > budget.max_time {
                exhausted = true;
                break 'passes;
            }
            let end = (i + chunk).min(current.len());
            let candidate: Vec<usize> = current[..i]
                .iter()
                .chain(&current[end..])
                .copied()
                .collect();
            replays += 1;
            match still_fails(&materialize(ops, &creators, &candidate))? {
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
        ops: materialize(ops, &creators, &current),
        replays,
        budget_exhausted: exhausted,
    })
}

/// `ops` with every successful anywhere or randomized placement (its result in `results`)
/// turned into a fixed map at the address the guest chose: later operations then keep aiming
/// at the same regions when earlier ones are dropped.
pub fn pin_placements(ops: &[Op], results: &[OpResult]) -> Vec<Op> {
    ops.iter()
        .enumerate()
        .map(|(i, &op)| match (op, results.get(i)) {
            (
                Op::MapAnywhere {
                    space,
                    size,
                    access,
                    ..
                }
                | Op::MapRandomized {
                    space,
                    size,
                    access,
                    ..
                },
                Some(r),
            ) if r.status == Status::Ok => Op::MapFixed {
                space,
                addr: r.addr,
                size,
                access,
            },
            _ => op,
        })
        .collect()
}

/// Shrinks `ops` (whose results, as far as they came, are `results`), replaying each candidate
/// on a fresh guest and keeping those that fail with `target`. Placements are pinned first when
/// the pinned sequence still fails the same way (a placement bug may need them unpinned).
pub fn shrink(
    config: &VmConfig,
    ops: &[Op],
    results: &[OpResult],
    target: &Signature,
    budget: Budget,
) -> Result<Shrunk, VmmError> {
    // Only agreement-checker findings need the checker; results are checked op by op anyway.
    let check = matches!(target, Signature::Finding(_));
    let still_fails = |candidate: &[Op]| -> Result<Option<usize>, VmmError> {
        let failure = replay(config, candidate, SHRINK_BATCH, check)?;
        Ok(failure
            .filter(|(f, _)| &f.signature == target)
            .map(|(_, prefix)| prefix))
    };
    let pinned = pin_placements(ops, results);
    let start = if pinned != ops && still_fails(&pinned)?.is_some() {
        pinned
    } else {
        ops.to_vec()
    };
    shrink_with(&start, budget, still_fails)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake failure: fails once ops 3 and 7 (by value) have both run; prefix ends at the later.
    fn fails(ops: &[Op]) -> Result<Option<usize>, VmmError> {
        let pos = |n: u32| {
            ops.iter()
                .position(|op| *op == Op::DestroySpace { space: 1000 + n })
        };
        Ok(match (pos(3), pos(7)) {
            (Some(a), Some(b)) => Some(a.max(b) + 1),
            _ => None,
        })
    }

    #[test]
    fn shrinks_to_the_two_ops_that_matter() {
        let ops: Vec<Op> = (0..100)
            .map(|n| Op::DestroySpace { space: 1000 + n })
            .collect();
        let shrunk = shrink_with(&ops, Budget::default(), fails).expect("no VM involved");
        assert_eq!(
            shrunk.ops,
            vec![
                Op::DestroySpace { space: 1003 },
                Op::DestroySpace { space: 1007 }
            ]
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
        let ops: Vec<Op> = (0..100)
            .map(|n| Op::DestroySpace { space: 1000 + n })
            .collect();
        let budget = Budget {
            max_replays: 5,
            max_time: Duration::from_secs(60),
        };
        let shrunk = shrink_with(&ops, budget, fails).expect("no VM involved");
        assert!(shrunk.budget_exhausted && shrunk.replays <= 5);
    }

    #[test]
    fn placements_are_pinned_where_they_succeeded() {
        let ops = [
            Op::MapAnywhere {
                space: 1,
                size: 0x2000,
                align: 0x1000,
                access: 0xb,
            },
            Op::MapRandomized {
                space: 1,
                size: 0x1000,
                align: 0x1000,
                access: 0x9,
            },
            Op::MapAnywhere {
                space: 1,
                size: 0,
                align: 0x1000,
                access: 0xb,
            },
        ];
        let results = [
            OpResult {
                addr: 0x5000,
                ..OpResult::ok()
            },
            OpResult {
                addr: 0x9000,
                ..OpResult::ok()
            },
            OpResult::error(Status::InvalidArgument),
        ];
        assert_eq!(
            pin_placements(&ops, &results),
            vec![
                Op::MapFixed {
                    space: 1,
                    addr: 0x5000,
                    size: 0x2000,
                    access: 0xb
                },
                Op::MapFixed {
                    space: 1,
                    addr: 0x9000,
                    size: 0x1000,
                    access: 0x9
                },
                ops[2],
            ]
        );
    }

    #[test]
    fn dropped_creations_renumber_later_spaces() {
        // Space 3 is what matters: after shrinking, its creation is the only one left and
        // the touch must follow it to id 1.
        let ops = vec![
            Op::CreateSpace,
            Op::CreateSpace,
            Op::CreateSpace,
            Op::TouchRead {
                space: 1,
                addr: 0x1000,
            },
            Op::TouchRead {
                space: 3,
                addr: 0x4000,
            },
        ];
        let fails = |ops: &[Op]| -> Result<Option<usize>, VmmError> {
            // "Fails" when a touch of 0x4000 names the last space created before it.
            let created = ops.iter().filter(|op| **op == Op::CreateSpace).count() as u32;
            let hit = ops.iter().position(|op| {
                *op == Op::TouchRead {
                    space: created,
                    addr: 0x4000,
                }
            });
            Ok(hit.filter(|_| created > 0).map(|i| i + 1))
        };
        let shrunk = shrink_with(&ops, Budget::default(), fails).expect("no VM involved");
        assert_eq!(
            shrunk.ops,
            vec![
                Op::CreateSpace,
                Op::TouchRead {
                    space: 1,
                    addr: 0x4000
                }
            ]
        );
    }
}
