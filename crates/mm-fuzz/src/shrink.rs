//! Shrinking a failing operation sequence to a minimal one that fails the same way.
//!
//! Hierarchically, each pass keeping a candidate only if it still fails with the same
//! signature: a failure that came near exhausting memory first tries the [`exhaustion`]
//! skeleton; then the failing prefix, and the spaces the failing check named alone; then whole
//! spaces in halving groups (a `create-space` with every operation on that space); then ever
//! smaller chunks down to single operations (delta debugging); then each operation is
//! simplified (sizes halved while the failure stays, a page-aligned touch, the plain value 1,
//! read-write access), each space's addresses move down towards 0x1000, and all the passes run
//! again while anything changes. A candidate that fails otherwise, in a batch of several ops, is
//! replayed once more one op per batch from there ([`super::narrow`]): a crash right after the
//! target failure must not hide it.
//!
//! Space ids are renumbered as operations go: the guest numbers spaces 1, 2, ... in creation
//! order, so dropping a `create-space` would otherwise point every later operation at the
//! wrong space. Operations on a space whose creation was dropped aim at id 0 (no such space).
//!
//! The budget counts replays, never seconds: the same failure shrinks to the same reproducer
//! on any machine and under any load.

use super::exhaustion::{self, Probe};
use super::narrow::replay_finer;
use super::{rebase, replay_run, Signature};
use crate::error::FuzzError;
use mm_driver::{Boot, GuestConfig};
use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::{Op, OpResult, Status, KERNEL_SPACE, MAX_BATCH};
use std::collections::HashMap;

/// Operations per batch when replaying short candidates: small enough that a failure is pinned
/// close to its operation, large enough to keep replays quick.
const SHRINK_BATCH: usize = 32;

/// Checks per replay of a long candidate at most: the first candidates of a long run are
/// replayed with larger batches, since a check of a run's dozen spaces costs as much as about
/// a hundred operations on sim (0.7M instructions against 7.6k per operation, measured on a
/// 1,000-op candidate with 18 spaces).
const MAX_CHECKS: usize = 4;

/// The batch size a candidate of `len` operations is replayed with.
fn shrink_batch(len: usize) -> usize {
    (len / MAX_CHECKS).clamp(SHRINK_BATCH, MAX_BATCH)
}

const PAGE: u64 = 4096;

/// Limits on shrinking work, in replays (deterministic, unlike time).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_replays: usize,
}

impl Budget {
    /// Replays a shrink may spend unless told otherwise (`vmm fuzz --shrink-budget`).
    pub const DEFAULT_REPLAYS: usize = 2_000;
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_replays: Budget::DEFAULT_REPLAYS,
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

fn with_space(op: Op, new: u32) -> Op {
    match op {
        Op::CreateSpace => Op::CreateSpace,
        Op::DestroySpace { .. } => Op::DestroySpace { space: new },
        Op::Fork { .. } => Op::Fork { space: new },
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
        Op::Frames { .. } => Op::Frames { space: new },
        Op::CheckTree { .. } => Op::CheckTree { space: new },
        Op::Populate { addr, size, .. } => Op::Populate {
            space: new,
            addr,
            size,
        },
        Op::KernelRead { addr, .. } => Op::KernelRead { space: new, addr },
        Op::KernelWrite { addr, value, .. } => Op::KernelWrite {
            space: new,
            addr,
            value,
        },
    }
}

/// For each op of `ops`, the index of the `create-space` or `fork` that made the space it
/// names (if any). A fork makes a space when the space it forks was made before it.
fn creators(ops: &[Op]) -> Vec<Option<usize>> {
    let mut created: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let creator = op
            .space()
            .and_then(|space| created.get((space as usize).checked_sub(1)?).copied());
        if *op == Op::CreateSpace || (matches!(op, Op::Fork { .. }) && creator.is_some()) {
            created.push(i);
        }
        out.push(creator);
    }
    out
}

/// The operations at `kept` (indices into `ops`), with space ids renumbered.
fn materialize(ops: &[Op], creators: &[Option<usize>], kept: &[usize]) -> Vec<Op> {
    let mut new_id = vec![0u32; ops.len()];
    let mut next = 1;
    kept.iter()
        .map(|&i| {
            let op = ops[i];
            // A fork of a space that is still made makes one too.
            let forks =
                matches!(op, Op::Fork { .. }) && creators[i].is_some_and(|c| new_id[c] != 0);
            if op == Op::CreateSpace || forks {
                new_id[i] = next;
                next += 1;
            }
            match (op.space(), creators[i]) {
                (Some(KERNEL_SPACE), _) | (None, _) => op,
                (Some(_), Some(creator)) => with_space(op, new_id[creator]),
                // A space id nothing made (a deliberately bad id): keep it as it was.
                (Some(_), None) => op,
            }
        })
        .collect()
}

/// Simpler versions of `op`, simplest first: fewer pages, a page-aligned touch, the value 1,
/// plain read-write access, a new space for a fork. Space ids and placements stay.
fn simpler(op: Op) -> Vec<Op> {
    let sizes = |size: u64| -> Vec<u64> {
        let half = (size / 2) & !(PAGE - 1);
        let mut smaller: Vec<u64> = [PAGE, half]
            .into_iter()
            .filter(|&s| s >= PAGE && s < size && size.is_multiple_of(PAGE))
            .collect();
        smaller.dedup();
        smaller
    };
    let plain = USER | READ | WRITE;
    let aligned = |addr: u64| (addr & !(PAGE - 1) != addr).then_some(addr & !(PAGE - 1));
    let mut out = Vec::new();
    match op {
        Op::MapFixed {
            space,
            addr,
            size,
            access,
        } => {
            out.extend(sizes(size).into_iter().map(|size| Op::MapFixed {
                space,
                addr,
                size,
                access,
            }));
            if access != plain {
                out.push(Op::MapFixed {
                    space,
                    addr,
                    size,
                    access: plain,
                });
            }
        }
        Op::MapAnywhere {
            space,
            size,
            align,
            access,
        } => out.extend(sizes(size).into_iter().map(|size| Op::MapAnywhere {
            space,
            size,
            align,
            access,
        })),
        Op::MapRandomized {
            space,
            size,
            align,
            access,
        } => out.extend(sizes(size).into_iter().map(|size| Op::MapRandomized {
            space,
            size,
            align,
            access,
        })),
        Op::Unmap { space, addr, size } => out.extend(
            sizes(size)
                .into_iter()
                .map(|size| Op::Unmap { space, addr, size }),
        ),
        Op::Populate { space, addr, size } => out.extend(
            sizes(size)
                .into_iter()
                .map(|size| Op::Populate { space, addr, size }),
        ),
        Op::Protect {
            space,
            addr,
            size,
            access,
        } => out.extend(sizes(size).into_iter().map(|size| Op::Protect {
            space,
            addr,
            size,
            access,
        })),
        // A fresh space instead of a copy: the parent can then go too, unless sharing is
        // what fails.
        Op::Fork { .. } => out.push(Op::CreateSpace),
        Op::TouchRead { space, addr } => {
            out.extend(aligned(addr).map(|addr| Op::TouchRead { space, addr }))
        }
        Op::TouchExec { space, addr } => {
            out.extend(aligned(addr).map(|addr| Op::TouchExec { space, addr }))
        }
        Op::TouchWrite { space, addr, value } => {
            out.extend(aligned(addr).map(|addr| Op::TouchWrite { space, addr, value }));
            if value != 1 {
                out.push(Op::TouchWrite {
                    space,
                    addr,
                    value: 1,
                });
            }
        }
        Op::KernelRead { space, addr } => {
            out.extend(aligned(addr).map(|addr| Op::KernelRead { space, addr }))
        }
        Op::KernelWrite { space, addr, value } => {
            out.extend(aligned(addr).map(|addr| Op::KernelWrite { space, addr, value }));
            if value != 1 {
                out.push(Op::KernelWrite {
                    space,
                    addr,
                    value: 1,
                });
            }
        }
        Op::CreateSpace
        | Op::DestroySpace { .. }
        | Op::Snapshot { .. }
        | Op::Frames { .. }
        | Op::CheckTree { .. } => {}
    }
    out
}

/// The state of one shrink: the operations (as simplified so far), which of them are kept,
/// and the replays spent.
struct Shrinker<F> {
    ops: Vec<Op>,
    /// What each op carries besides itself, by index (with several CPUs its round and CPU;
    /// else 0): passed to `still_fails` with the candidate, and part of its identity.
    tags: Vec<u64>,
    creators: Vec<Option<usize>>,
    kept: Vec<usize>,
    replays: usize,
    budget: Budget,
    exhausted: bool,
    still_fails: F,
    /// The outcome of every short candidate replayed so far: a replay is deterministic, and
    /// the last rounds, which find nothing more to change, try many candidates again.
    replayed: HashMap<(Vec<Op>, Vec<u64>), Option<usize>>,
}

/// Operations up to which a candidate's outcome is kept in [`Shrinker::replayed`] (at most
/// the budget's 2,000 replays of them: bounded memory).
const REMEMBERED_LEN: usize = 64;

impl<F: FnMut(&[u64], &[Op]) -> Result<Option<usize>, FuzzError>> Shrinker<F> {
    /// Replays the kept operations of `ops` at `kept`; keeps both if they still fail.
    fn try_candidate(&mut self, ops: &[Op], kept: &[usize]) -> Result<bool, FuzzError> {
        if self.replays >= self.budget.max_replays {
            self.exhausted = true;
            return Ok(false);
        }
        let candidate = (
            materialize(ops, &self.creators, kept),
            kept.iter().map(|&i| self.tags[i]).collect::<Vec<u64>>(),
        );
        let outcome = match self.replayed.get(&candidate) {
            Some(&outcome) => outcome,
            None => {
                self.replays += 1;
                let outcome = (self.still_fails)(&candidate.1, &candidate.0)?;
                if candidate.0.len() <= REMEMBERED_LEN {
                    self.replayed.insert(candidate, outcome);
                }
                outcome
            }
        };
        match outcome {
            Some(prefix) => {
                self.ops = ops.to_vec();
                self.kept = kept[..prefix.min(kept.len())].to_vec();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Tries the kept set without the operations `drop` selects.
    fn try_without(&mut self, drop: impl Fn(usize) -> bool) -> Result<bool, FuzzError> {
        let candidate: Vec<usize> = self.kept.iter().copied().filter(|&i| !drop(i)).collect();
        if candidate.len() == self.kept.len() {
            return Ok(false);
        }
        let ops = self.ops.clone();
        self.try_candidate(&ops, &candidate)
    }

    /// The kept operations that make a space: `create-space`s, and forks something runs on.
    fn creations(&self) -> Vec<usize> {
        let creators = &self.creators;
        self.kept
            .iter()
            .copied()
            .filter(|&i| self.ops[i] == Op::CreateSpace || creators.contains(&Some(i)))
            .collect()
    }

    /// Keeps only the spaces `named` (numbered as the guest numbered them in the last replay),
    /// if the failure stays: a long run's finding often needs one space of dozens. First the
    /// named spaces alone, each fork among them made a fresh space (a finding on a forked
    /// space may need none of its parent's history); then with their fork families.
    fn focus(&mut self, named: &[u32]) -> Result<(), FuzzError> {
        // The guest numbers every space made, used or not.
        let made: Vec<usize> = self
            .kept
            .iter()
            .copied()
            .filter(|&i| match self.ops[i] {
                Op::CreateSpace => true,
                Op::Fork { .. } => self.creators[i].is_some(),
                _ => false,
            })
            .collect();
        let mut keep: Vec<usize> = named
            .iter()
            .filter_map(|&id| made.get((id as usize).checked_sub(1)?).copied())
            .collect();
        if keep.is_empty() {
            return Ok(());
        }
        keep.sort_unstable();
        keep.dedup();
        let alone = self.keep_spaces(&made, &keep);
        let mut fresh = self.ops.clone();
        for &i in &keep {
            if self.creators[i].is_some_and(|parent| !keep.contains(&parent)) {
                fresh[i] = Op::CreateSpace;
            }
        }
        // When no fork joins a kept space to another, `alone` is the family's candidate.
        // Otherwise it differs from the kept operations: a kept fork became a fresh space, or
        // a fork of a kept space is dropped.
        let family = families(&made, &self.creators, keep.clone());
        if family != keep && self.try_candidate(&fresh, &alone)? {
            return Ok(());
        }
        let family = self.keep_spaces(&made, &family);
        if family.len() < self.kept.len() {
            let ops = self.ops.clone();
            self.try_candidate(&ops, &family)?;
        }
        Ok(())
    }

    /// The kept operations without those on a space `made` holds but `keep` does not.
    fn keep_spaces(&self, made: &[usize], keep: &[usize]) -> Vec<usize> {
        let owner = |i: usize| {
            if made.contains(&i) {
                Some(i)
            } else {
                self.creators[i]
            }
        };
        self.kept
            .iter()
            .copied()
            .filter(|&i| owner(i).is_none_or(|c| keep.contains(&c)))
            .collect()
    }

    /// Drops whole spaces: a `create-space` (or `fork`) with every operation on the space it
    /// made. Spaces go in ever smaller groups, as operations do in [`Self::drop_chunks`]: most
    /// spaces of a long run play no part, and half of them go in one replay.
    fn drop_spaces(&mut self) -> Result<(), FuzzError> {
        let mut creations = self.creations();
        let mut chunk = creations.len().div_ceil(2).max(1);
        loop {
            let mut at = 0;
            while at < creations.len() && !self.exhausted {
                let group = &creations[at..(at + chunk).min(creations.len())];
                let made = |i: usize| self.creators[i].is_some_and(|c| group.contains(&c));
                let dropped: Vec<usize> = self
                    .kept
                    .iter()
                    .copied()
                    .filter(|&i| group.contains(&i) || made(i))
                    .collect();
                if self.try_without(|i| dropped.contains(&i))? {
                    creations = self.creations();
                } else {
                    at += chunk;
                }
            }
            if self.exhausted || chunk == 1 {
                return Ok(());
            }
            chunk = (chunk / 2).max(1);
        }
    }

    /// Delta debugging: drops chunks of `chunk` kept operations, halving the chunk down to one.
    fn drop_chunks(&mut self, mut chunk: usize) -> Result<(), FuzzError> {
        loop {
            let mut removed_any = false;
            let mut at = 0;
            while at < self.kept.len() && !self.exhausted {
                let span: Vec<usize> = self.kept[at..(at + chunk).min(self.kept.len())].to_vec();
                if self.try_without(|i| span.contains(&i))? {
                    removed_any = true;
                } else {
                    at += chunk;
                }
            }
            if self.exhausted || (chunk == 1 && !removed_any) {
                return Ok(());
            }
            chunk = (chunk / 2).max(1);
        }
    }

    /// The end (exclusive, in `kept`) of the run of writes to consecutive pages of one space
    /// that starts at `at`, with the run's space and first and last pages.
    fn touch_run(&self, at: usize) -> Option<(usize, u32, u64, u64)> {
        let page = |op: &Op| match *op {
            Op::TouchWrite { space, addr, .. } => Some((space, addr & !(PAGE - 1))),
            _ => None,
        };
        let (space, first) = page(&self.ops[self.kept[at]])?;
        let mut last = first;
        let mut end = at + 1;
        while let Some((s, p)) = self.kept.get(end).and_then(|&i| page(&self.ops[i])) {
            if s != space || p != last + PAGE {
                break;
            }
            last = p;
            end += 1;
        }
        Some((end, space, first, last))
    }

    /// Replaces each run of writes to consecutive pages (how memory pressure is built up) by
    /// one populate of those pages, where the failure stays.
    fn merge_touch_runs(&mut self) -> Result<(), FuzzError> {
        let mut at = 0;
        while at < self.kept.len() && !self.exhausted {
            let Some((end, space, first, last)) = self.touch_run(at) else {
                at += 1;
                continue;
            };
            if end - at >= 4 {
                let mut ops = self.ops.clone();
                let size = last - first + PAGE;
                ops[self.kept[at]] = Op::Populate {
                    space,
                    addr: first,
                    size,
                };
                let kept: Vec<usize> = self.kept[..=at]
                    .iter()
                    .chain(&self.kept[end..])
                    .copied()
                    .collect();
                if self.try_candidate(&ops, &kept)? {
                    at += 1;
                    continue;
                }
            }
            at = end;
        }
        Ok(())
    }

    /// Moves each space's addresses down (see [`rebase`]) where the failure stays.
    fn rebase(&mut self) -> Result<(), FuzzError> {
        let mut spaces: Vec<u32> = self
            .kept
            .iter()
            .filter_map(|&i| self.ops[i].space())
            .collect();
        spaces.sort_unstable();
        spaces.dedup();
        // All spaces together first: a fork's child has its parent's layout.
        for space in std::iter::once(None).chain(spaces.into_iter().map(Some)) {
            // Each move lowers the space's lowest address, so this ends; moving again at once
            // saves a round of every pass per move.
            while self.rebase_once(space)? {}
        }
        Ok(())
    }

    /// Moves the addresses of `space` (of all spaces, for `None`) down once, if the failure
    /// stays with any of the candidates.
    fn rebase_once(&mut self, space: Option<u32>) -> Result<bool, FuzzError> {
        for ops in rebase::candidates(&self.ops, &self.kept, space) {
            let kept = self.kept.clone();
            if self.exhausted {
                return Ok(false);
            }
            if self.try_candidate(&ops, &kept)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Replaces kept operations by simpler ones that still fail. An operation that took a
    /// simpler form is tried again at once: a size halves down to what the failure needs in
    /// one pass, not one halving per round of all the passes.
    fn simplify(&mut self) -> Result<(), FuzzError> {
        let mut at = 0;
        // The variants of the operation at `at` that did not fail (a one-page size need not
        // be tried again after each halving).
        let mut failed: Vec<Op> = Vec::new();
        while at < self.kept.len() && !self.exhausted {
            let i = self.kept[at];
            let mut simplified = false;
            for variant in simpler(self.ops[i]) {
                if failed.contains(&variant) {
                    continue;
                }
                let mut ops = self.ops.clone();
                ops[i] = variant;
                let kept = self.kept.clone();
                if self.try_candidate(&ops, &kept)? {
                    simplified = true;
                    break;
                }
                failed.push(variant);
            }
            // A candidate that fails earlier can cut `kept` short of `at`.
            if !simplified || self.kept.get(at) != Some(&i) {
                at += 1;
                failed.clear();
            }
        }
        Ok(())
    }
}

/// `keep` (creations among `made`) with every fork and forked space it is joined to: a fork
/// and the space it forked stand or fall together.
fn families(made: &[usize], creators: &[Option<usize>], mut keep: Vec<usize>) -> Vec<usize> {
    loop {
        let before = keep.len();
        for &child in made {
            let Some(parent) = creators[child] else {
                continue;
            };
            if keep.contains(&child) != keep.contains(&parent) {
                keep.extend([child, parent]);
                keep.sort_unstable();
                keep.dedup();
            }
        }
        if keep.len() == before {
            return keep;
        }
    }
}

/// Shrinks `ops` against `still_fails`, which returns the failing prefix length when a
/// candidate still fails the same way.
pub fn shrink_with(
    ops: &[Op],
    budget: Budget,
    mut still_fails: impl FnMut(&[Op]) -> Result<Option<usize>, FuzzError>,
) -> Result<Shrunk, FuzzError> {
    let untagged = vec![0; ops.len()];
    shrink_from(ops, &untagged, None, budget, |_, ops| still_fails(ops))
}

/// [`shrink_with`] for ops that each carry a tag (`tags`, by index: with several CPUs, the
/// round and CPU an op ran in): `still_fails` gets each candidate's tags with its ops. `ops`
/// failed as a whole, naming `spaces` (tried alone first). Returns the shrunk ops and their
/// tags.
pub fn shrink_tagged(
    ops: &[Op],
    tags: &[u64],
    spaces: &[u32],
    budget: Budget,
    still_fails: impl FnMut(&[u64], &[Op]) -> Result<Option<usize>, FuzzError>,
) -> Result<(Shrunk, Vec<u64>), FuzzError> {
    let shown = Shown {
        prefix: ops.len(),
        spaces: spaces.to_vec(),
    };
    shrink_run(ops, tags, Some(shown), budget, still_fails)
}

/// How a replay showed the target failure.
struct Shown {
    /// The failing prefix.
    prefix: usize,
    /// The spaces the failing check named.
    spaces: Vec<u32>,
}

/// [`shrink_with`], where `failing` is how a replay of `ops` just showed the failure, if one
/// did (then `ops` is not replayed whole once more, and the spaces it named are tried alone
/// first).
fn shrink_from(
    ops: &[Op],
    tags: &[u64],
    failing: Option<Shown>,
    budget: Budget,
    still_fails: impl FnMut(&[u64], &[Op]) -> Result<Option<usize>, FuzzError>,
) -> Result<Shrunk, FuzzError> {
    shrink_run(ops, tags, failing, budget, still_fails).map(|(shrunk, _)| shrunk)
}

/// The shrinking passes; returns the result and the tags of its ops.
fn shrink_run(
    ops: &[Op],
    tags: &[u64],
    failing: Option<Shown>,
    budget: Budget,
    still_fails: impl FnMut(&[u64], &[Op]) -> Result<Option<usize>, FuzzError>,
) -> Result<(Shrunk, Vec<u64>), FuzzError> {
    let mut shrinker = Shrinker {
        ops: ops.to_vec(),
        tags: tags.to_vec(),
        creators: creators(ops),
        kept: (0..failing.as_ref().map_or(0, |f| f.prefix).min(ops.len())).collect(),
        replays: 0,
        budget: Budget {
            max_replays: budget.max_replays.max(1),
        },
        exhausted: false,
        still_fails,
        replayed: HashMap::new(),
    };
    let all: Vec<usize> = (0..ops.len()).collect();
    match failing {
        Some(shown) => shrinker.focus(&shown.spaces)?,
        None if !shrinker.try_candidate(ops, &all)? => {
            let shrunk = Shrunk {
                ops: ops.to_vec(),
                replays: shrinker.replays,
                budget_exhausted: false,
            };
            return Ok((shrunk, tags.to_vec()));
        }
        None => {}
    }
    // Each pass can open the way for another (a space that could not go while other spaces
    // held frames can once they are gone), so run them all until none changes anything. Every
    // round starts with large chunks again: a simpler operation can let a whole group go that
    // no single drop could.
    loop {
        let before = (shrinker.kept.clone(), shrinker.ops.clone());
        shrinker.drop_spaces()?;
        shrinker.merge_touch_runs()?;
        shrinker.drop_chunks(shrinker.kept.len().div_ceil(2).max(1))?;
        shrinker.simplify()?;
        shrinker.rebase()?;
        if shrinker.exhausted || (shrinker.kept.clone(), shrinker.ops.clone()) == before {
            break;
        }
    }
    let kept_tags = shrinker.kept.iter().map(|&i| shrinker.tags[i]).collect();
    let shrunk = Shrunk {
        ops: materialize(&shrinker.ops, &shrinker.creators, &shrinker.kept),
        replays: shrinker.replays,
        budget_exhausted: shrinker.exhausted,
    };
    Ok((shrunk, kept_tags))
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
/// When the run came near exhausting memory (`near_exhaustion`, or a result that ran out), the
/// [`exhaustion`] skeleton is tried first.
pub fn shrink(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    results: &[OpResult],
    target: &Signature,
    budget: Budget,
    near_exhaustion: bool,
) -> Result<Shrunk, FuzzError> {
    // Only agreement-checker findings need the checker; results are checked op by op anyway.
    let check = matches!(target, Signature::Finding(_));
    let run = |candidate: &[Op]| {
        replay_run(
            backends,
            config,
            candidate,
            shrink_batch(candidate.len()),
            check,
        )
    };
    let shown = |candidate: &[Op]| -> Result<Option<Shown>, FuzzError> {
        let mut run = run(candidate)?;
        // Another failure, in a batch of several ops, may have hidden the target at an op
        // before it (a crash right after a finding): look again there, one op per batch.
        let moved = run.failure.as_ref().is_some_and(|f| !f.shows(target));
        if moved && run.sent.len() - run.last_batch > 1 {
            let batch = shrink_batch(candidate.len());
            run = replay_finer(backends, config, candidate, batch, run.last_batch, check)?;
        }
        let prefix = run.sent.len();
        Ok(run.failure.filter(|f| f.shows(target)).map(|f| Shown {
            prefix,
            spaces: f.spaces,
        }))
    };
    let still_fails = |candidate: &[Op]| Ok(shown(candidate)?.map(|s| s.prefix));
    let pinned = pin_placements(ops, results);
    let pinned_shown = if pinned != ops { shown(&pinned)? } else { None };
    let (mut start, mut failing) = match pinned_shown {
        Some(found) => (pinned, Some(found)),
        None => (ops.to_vec(), None),
    };
    // A failure that came with memory running out may need nothing but RAM filled to one
    // exact level, which no dropping or halving of operations hits.
    let mut left = budget.max_replays;
    if near_exhaustion || results.iter().any(|r| r.status == Status::OutOfMemory) {
        let exhausted = |candidate: &[Op]| -> Result<Probe, FuzzError> {
            let run = run(candidate)?;
            Ok(if run.failure.is_some_and(|f| f.shows(target)) {
                Probe::Fails
            } else if run.results.iter().any(|r| r.status == Status::OutOfMemory) {
                Probe::OutOfMemory
            } else {
                Probe::Short
            })
        };
        if let Some(skeleton) = exhaustion::search(config.memory / PAGE, &mut left, exhausted)? {
            (start, failing) = (skeleton, None);
        }
    }
    let untagged = vec![0; start.len()];
    let mut shrunk = shrink_from(
        &start,
        &untagged,
        failing,
        Budget { max_replays: left },
        |_, candidate| still_fails(candidate),
    )?;
    shrunk.replays += budget.max_replays - left;
    Ok(shrunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake failure: fails once ops 3 and 7 (by value) have both run; prefix ends at the later.
    fn fails(ops: &[Op]) -> Result<Option<usize>, FuzzError> {
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
    fn no_short_candidate_is_replayed_twice() {
        let ops: Vec<Op> = (0..40)
            .map(|n| Op::DestroySpace { space: 1000 + n })
            .collect();
        let mut replayed: Vec<Vec<Op>> = Vec::new();
        let shrunk = shrink_with(&ops, Budget::default(), |candidate| {
            replayed.push(candidate.to_vec());
            fails(candidate)
        })
        .expect("no VM involved");
        assert_eq!(shrunk.ops.len(), 2);
        assert_eq!(shrunk.replays, replayed.len());
        let mut distinct = replayed.clone();
        distinct.sort_by_key(|c| format!("{c:?}"));
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            replayed.len(),
            "a candidate was replayed again"
        );
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
        let budget = Budget { max_replays: 5 };
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
    fn the_named_space_alone_is_tried_first() {
        // Ten spaces with a touch each; only the touch of 0x4000 (on the third space) fails.
        let mut ops = vec![Op::CreateSpace; 10];
        ops.extend((1..=10).map(|space| Op::TouchRead {
            space,
            addr: if space == 3 { 0x4000 } else { 0x1000 },
        }));
        let mut replays = Vec::new();
        let mut fails = |ops: &[Op]| -> Result<Option<usize>, FuzzError> {
            replays.push(ops.len());
            let created = ops.iter().filter(|op| **op == Op::CreateSpace).count() as u32;
            let hit = ops.iter().position(|op| {
                matches!(*op, Op::TouchRead { space, addr: 0x4000 } if space >= 1 && space <= created)
            });
            Ok(hit.map(|i| i + 1))
        };
        let shown = Shown {
            prefix: ops.len(),
            spaces: vec![3],
        };
        let untagged = vec![0; ops.len()];
        let shrunk = shrink_from(&ops, &untagged, Some(shown), Budget::default(), |_, ops| {
            fails(ops)
        })
        .expect("no VM");
        assert_eq!(shrunk.ops, one_space_touched_at_0x4000());
        // The first candidate already held only the third space.
        assert_eq!(replays[0], 2);
    }

    #[test]
    fn a_named_fork_is_tried_alone_as_a_fresh_space() {
        // Space 2 is a fork of space 1, whose touches play no part: the fork's own touch of
        // 0x4000 fails on any space.
        let mut ops = vec![Op::CreateSpace];
        ops.extend((0..20).map(|_| Op::TouchRead {
            space: 1,
            addr: 0x1000,
        }));
        ops.extend([
            Op::Fork { space: 1 },
            Op::TouchRead {
                space: 2,
                addr: 0x4000,
            },
        ]);
        let mut replays = Vec::new();
        let mut fails = |ops: &[Op]| -> Result<Option<usize>, FuzzError> {
            replays.push(ops.to_vec());
            let mut made = 0;
            let hit = ops.iter().position(|op| match *op {
                Op::CreateSpace => {
                    made += 1;
                    false
                }
                Op::Fork { space } => {
                    made += u32::from(space >= 1 && space <= made);
                    false
                }
                Op::TouchRead { space, addr } => addr == 0x4000 && space >= 1 && space <= made,
                _ => false,
            });
            Ok(hit.map(|i| i + 1))
        };
        let shown = Shown {
            prefix: ops.len(),
            spaces: vec![2],
        };
        let untagged = vec![0; ops.len()];
        let shrunk = shrink_from(&ops, &untagged, Some(shown), Budget::default(), |_, ops| {
            fails(ops)
        })
        .expect("no VM");
        assert_eq!(shrunk.ops, one_space_touched_at_0x4000());
        // The first candidate already held only the fork, made a fresh space.
        assert_eq!(replays[0], one_space_touched_at_0x4000());
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
        let fails = |ops: &[Op]| -> Result<Option<usize>, FuzzError> {
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
        assert_eq!(shrunk.ops, one_space_touched_at_0x4000());
    }

    /// What both renumbering tests shrink to.
    fn one_space_touched_at_0x4000() -> Vec<Op> {
        vec![
            Op::CreateSpace,
            Op::TouchRead {
                space: 1,
                addr: 0x4000,
            },
        ]
    }
}
