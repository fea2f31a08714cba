//! Shrinking a failure of several CPUs: the ops (each keeping the round and CPU it ran in, by
//! the same passes as one CPU's, see [`crate::shrink`]), then the CPUs (every op of a CPU moved
//! to CPU 0, the CPUs left numbered from 0), then, where the backend follows a schedule (the
//! sim), the schedule's preemptions (whole rounds, then single slices, left to the default).
//! Each candidate is kept only if it still fails with the same signature. On the sim the
//! schedule a candidate follows is the one found with it: ops dropped before a race shift its
//! preemption points, and such a candidate is simply refused; a run found under kvm has none,
//! and the sim runs its rounds in the default order, or else each in the reverse CPU order.
//! Under kvm the hardware interleaves, and a candidate is replayed as its rounds say. Once the watch's stop flag is
//! set, nothing more is replayed and the smallest failing candidate so far is the result.

use crate::error::FuzzError;
use crate::repro::Reproducer;
use crate::shrink::{pin_placements, shrink_tagged, Budget};
use crate::{replay_rounds, Failure, Run, Signature};
use mm_driver::driver::CpuBatch;
use mm_driver::schedule::{Schedule, Slice};
use mm_driver::{Boot, GuestConfig};
use mm_scenario::header::{cpus_line, schedule_line};
use shared_mm::abi::Op;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// A failure of several CPUs, shrunk.
#[derive(Clone, Debug)]
pub struct ShrunkRounds {
    pub ops: Vec<Op>,
    /// The CPU of each op, and where each round starts in `ops`.
    pub cpus: Vec<u32>,
    pub round_starts: Vec<usize>,
    /// CPUs the guest needs: one past the highest that runs an op.
    pub cpu_count: u32,
    /// The schedule the last replay took (what the reproducer records); `None` where the
    /// backend does not follow one.
    pub schedule: Option<Schedule>,
    /// How that replay failed.
    pub failure: Failure,
    pub replays: usize,
}

impl ShrunkRounds {
    /// `run` as it failed (`found`) on `cpus` CPUs, before any shrinking.
    pub fn as_found(run: &Run, found: &Failure, cpus: u32) -> Self {
        ShrunkRounds {
            ops: run.sent.clone(),
            cpus: run.cpus.clone(),
            round_starts: run.batch_starts.clone(),
            cpu_count: cpus,
            schedule: run.schedule.clone(),
            failure: found.clone(),
            replays: 0,
        }
    }

    /// The reproducer of these rounds, `header` first: each op's CPU and the rounds where an
    /// op ran off CPU 0, then the CPU count and the schedule.
    pub fn reproducer(&self, header: Vec<(String, String)>) -> Reproducer {
        let ops = self.ops.clone();
        let mut repro = Reproducer::with_rounds(header, ops, &self.cpus, &self.round_starts);
        repro.header.extend(cpus_line(self.cpu_count));
        repro.header.extend(schedule_line(self.schedule.as_ref()));
        repro
    }
}

/// An op's round and CPU, as one tag (rounds keep their order, CPUs theirs within a round).
fn tag(round: usize, cpu: u32) -> u64 {
    ((round as u64) << 8) | u64::from(cpu)
}

fn cpu_of(tag: u64) -> u32 {
    (tag & 0xff) as u32
}

/// The rounds of `ops` by their `tags`: the ops of one round together, each CPU's in order.
fn rounds_of(tags: &[u64], ops: &[Op]) -> Vec<Vec<CpuBatch>> {
    let mut rounds: Vec<(u64, Vec<CpuBatch>)> = Vec::new();
    for (&tag, &op) in tags.iter().zip(ops) {
        let round = tag >> 8;
        if rounds.last().is_none_or(|(r, _)| *r != round) {
            rounds.push((round, Vec::new()));
        }
        let Some((_, batches)) = rounds.last_mut() else {
            unreachable!("a round was just pushed")
        };
        let cpu = cpu_of(tag);
        match batches.iter_mut().find(|b| b.cpu == cpu) {
            Some(batch) => batch.ops.push(op),
            None => batches.push(CpuBatch { cpu, ops: vec![op] }),
        }
    }
    rounds
        .into_iter()
        .map(|(_, mut batches)| {
            batches.sort_by_key(|b| b.cpu);
            batches
        })
        .collect()
}

/// A schedule's slices by the round they belong to (the tags' round, which stays as ops go),
/// not by the number the schedule gives it (which counts only rounds of several CPUs, so
/// dropping ops renumbers it).
type ByRound = BTreeMap<u64, Vec<Slice>>;

/// The rounds of `tags` where several CPUs have work, in order.
fn concurrent_rounds(tags: &[u64]) -> Vec<u64> {
    let mut rounds: Vec<(u64, Vec<u32>)> = Vec::new();
    for &tag in tags {
        let round = tag >> 8;
        if rounds.last().is_none_or(|(r, _)| *r != round) {
            rounds.push((round, Vec::new()));
        }
        if let Some((_, cpus)) = rounds.last_mut() {
            if !cpus.contains(&cpu_of(tag)) {
                cpus.push(cpu_of(tag));
            }
        }
    }
    rounds
        .into_iter()
        .filter(|(_, cpus)| cpus.len() > 1)
        .map(|(round, _)| round)
        .collect()
}

/// The schedule's slices by round, for ops tagged `tags`.
fn by_round(schedule: &Schedule, tags: &[u64]) -> ByRound {
    let rounds = concurrent_rounds(tags);
    let slices = schedule.rounds.iter().filter_map(|(&number, slices)| {
        let round = *rounds.get(usize::try_from(number).ok()?.checked_sub(1)?)?;
        Some((round, slices.clone()))
    });
    slices.collect()
}

/// The schedule of `by_round` for ops tagged `tags`, numbered as the sim counts.
fn numbered(by_round: &ByRound, tags: &[u64]) -> Schedule {
    let rounds = concurrent_rounds(tags).into_iter().zip(1u64..);
    let numbered =
        rounds.filter_map(|(round, number)| Some((number, by_round.get(&round)?.clone())));
    Schedule {
        rounds: numbered.collect(),
    }
}

/// What watches a shrink from outside.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// Once set (Ctrl-C), nothing more is replayed: the shrink ends with the smallest failing
    /// candidate so far, or with none.
    pub stop: Option<&'a AtomicBool>,
    /// Told after each replay: the replays so far, and the ops of the smallest failing
    /// candidate (0 before one failed).
    pub progress: &'a dyn Fn(usize, usize),
}

impl Watch<'_> {
    /// Whether the stop flag is set.
    pub fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// What one candidate is replayed against.
struct Replayer<'a> {
    backends: &'a dyn Boot,
    config: &'a GuestConfig,
    target: &'a Signature,
    check: bool,
    watch: Watch<'a>,
    replays: Cell<usize>,
    /// The failing run with the fewest ops so far, and the CPUs it ran on.
    best: RefCell<Option<(Run, u32)>>,
}

impl Replayer<'_> {
    /// Replays `ops` by `tags` on `cpus` CPUs following `schedule` (where the backend follows
    /// one): the run, if it fails the target way. Nothing, once the watch says stop.
    fn fails(
        &self,
        tags: &[u64],
        ops: &[Op],
        cpus: u32,
        schedule: &ByRound,
    ) -> Result<Option<Run>, FuzzError> {
        if self.watch.stopped() {
            return Ok(None);
        }
        self.replays.set(self.replays.get() + 1);
        let config = GuestConfig {
            cpus,
            schedule: (self.config.backend.follows_schedules()).then(|| numbered(schedule, tags)),
            ..self.config.clone()
        };
        let run = replay_rounds(self.backends, &config, rounds_of(tags, ops), self.check)?;
        let failed = run.failure.as_ref().is_some_and(|f| f.shows(self.target));
        let mut best = self.best.borrow_mut();
        if failed
            && best
                .as_ref()
                .is_none_or(|(b, _)| run.sent.len() <= b.sent.len())
        {
            *best = Some((run.clone(), cpus));
        }
        let smallest = best.as_ref().map_or(0, |(b, _)| b.sent.len());
        (self.watch.progress)(self.replays.get(), smallest);
        Ok(failed.then_some(run))
    }
}

/// Every round of `tags` where several CPUs have work, its CPUs in reverse order, each until
/// it waits or is done: the other order two CPUs can take, for a run the hardware interleaved.
fn reversed(tags: &[u64]) -> ByRound {
    let order = |round: u64| {
        let mut cpus: Vec<u32> = tags
            .iter()
            .filter(|&&t| t >> 8 == round)
            .map(|&t| cpu_of(t))
            .collect();
        cpus.sort_unstable_by(|a, b| b.cmp(a));
        cpus.dedup();
        let slices = cpus.into_iter().map(|cpu| Slice { cpu, points: None });
        slices.collect()
    };
    let rounds = concurrent_rounds(tags).into_iter();
    rounds.map(|round| (round, order(round))).collect()
}

/// Where shrinking starts: the ops (placements pinned where that still fails), the replay that
/// failed, and the schedule it followed. A run the sim scheduled keeps its schedule, or none if
/// the failure stays without. A run the hardware interleaved (kvm) has none: on the sim its
/// rounds run in the default order (the lowest CPU first), or else each in the reverse order (a
/// CPU that changes a space before the CPU that has it loaded switches away).
fn start(
    replayer: &Replayer<'_>,
    run: &Run,
    tags: &[u64],
) -> Result<Option<(Vec<Op>, Run, ByRound)>, FuzzError> {
    let none = ByRound::new();
    let cpus = replayer.config.cpus;
    let mut orders = match &run.schedule {
        Some(schedule) => vec![by_round(schedule, tags)],
        None if replayer.config.backend.follows_schedules() => vec![none.clone(), reversed(tags)],
        None => vec![none.clone()],
    };
    if orders[0] != none && replayer.fails(tags, &run.sent, cpus, &none)?.is_some() {
        orders = vec![none];
    }
    // Later ops keep aiming at the same regions when earlier placements go.
    let pinned = pin_placements(&run.sent, &run.results);
    let mut candidates = vec![pinned];
    if candidates[0] != run.sent {
        candidates.push(run.sent.clone());
    }
    for schedule in orders {
        for ops in &candidates {
            if let Some(shown) = replayer.fails(tags, ops, cpus, &schedule)? {
                return Ok(Some((ops.clone(), shown, schedule)));
            }
        }
    }
    Ok(None)
}

/// `tags` with every op of a CPU on CPU 0 where the failure stays, highest CPU first, and the
/// CPUs the guest then needs.
fn fewer_cpus(
    replayer: &Replayer<'_>,
    ops: &[Op],
    mut tags: Vec<u64>,
    schedule: &ByRound,
) -> Result<(Vec<u64>, u32), FuzzError> {
    let cpus = replayer.config.cpus;
    for cpu in (1..cpus).rev() {
        let moved: Vec<u64> = tags
            .iter()
            .map(|&t| if cpu_of(t) == cpu { t & !0xff } else { t })
            .collect();
        if moved != tags && replayer.fails(&moved, ops, cpus, schedule)?.is_some() {
            tags = moved;
        }
    }
    let fewer = tags.iter().map(|&t| cpu_of(t) + 1).max().unwrap_or(1);
    if fewer < cpus && replayer.fails(&tags, ops, fewer, schedule)?.is_some() {
        return Ok((tags, fewer));
    }
    Ok((tags, cpus))
}

/// `schedule` with fewer preemptions where the failure stays: whole rounds left to the
/// default, then single slices.
fn fewer_preemptions(
    replayer: &Replayer<'_>,
    (tags, ops, cpus): (&[u64], &[Op], u32),
    mut schedule: ByRound,
) -> Result<ByRound, FuzzError> {
    for round in schedule.keys().copied().collect::<Vec<_>>() {
        let mut fewer = schedule.clone();
        fewer.remove(&round);
        if replayer.fails(tags, ops, cpus, &fewer)?.is_some() {
            schedule = fewer;
        }
    }
    for round in schedule.keys().copied().collect::<Vec<_>>() {
        let mut at = 0;
        while at < schedule.get(&round).map_or(0, Vec::len) {
            let mut fewer = schedule.clone();
            let slices = fewer.entry(round).or_default();
            slices.remove(at);
            if slices.is_empty() {
                fewer.remove(&round);
            }
            if replayer.fails(tags, ops, cpus, &fewer)?.is_some() {
                schedule = fewer;
            } else {
                at += 1;
            }
        }
    }
    Ok(schedule)
}

/// Shrinks the failure `run` showed with `target` on `config` (several CPUs), `watch`
/// looking on. `None` when no candidate failed (not even `run`'s ops replayed).
pub fn shrink_rounds(
    backends: &dyn Boot,
    config: &GuestConfig,
    run: &Run,
    target: &Signature,
    budget: Budget,
    watch: Watch<'_>,
) -> Result<Option<ShrunkRounds>, FuzzError> {
    let replayer = Replayer {
        backends,
        config,
        target,
        check: matches!(target, Signature::Finding(_)),
        watch,
        replays: Cell::new(0),
        best: RefCell::new(None),
    };
    let mut tags: Vec<u64> = Vec::with_capacity(run.sent.len());
    for (i, &cpu) in run.cpus.iter().enumerate().take(run.sent.len()) {
        let round = run.batch_starts.partition_point(|&start| start <= i);
        tags.push(tag(round, cpu));
    }
    let Some((start, shown, schedule)) = start(&replayer, run, &tags)? else {
        return Ok(None);
    };
    let spaces = shown.failure.map_or_else(Vec::new, |f| f.spaces);
    let (shrunk, tags) = shrink_tagged(&start, &tags, &spaces, budget, |tags, ops| {
        let failed = replayer.fails(tags, ops, config.cpus, &schedule)?;
        Ok(failed.map(|run| run.sent.len()))
    })?;
    let ops = shrunk.ops;
    let (tags, cpus) = fewer_cpus(&replayer, &ops, tags, &schedule)?;
    let schedule = fewer_preemptions(&replayer, (&tags, &ops, cpus), schedule)?;
    // Under kvm a candidate may fail once and not again; stopped, nothing replays: then the
    // smallest that failed is the result.
    let last = match replayer.fails(&tags, &ops, cpus, &schedule)? {
        Some(last) => Some((last, cpus)),
        None => replayer.best.take(),
    };
    let Some((last, cpu_count)) = last else {
        return Ok(None);
    };
    let Some(failure) = last.failure else {
        unreachable!("a run that fails has a failure")
    };
    Ok(Some(ShrunkRounds {
        cpus: last.cpus,
        round_starts: last.batch_starts,
        ops: last.sent,
        cpu_count,
        schedule: last.schedule,
        failure,
        replays: replayer.replays.get(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_ops_make_their_rounds_each_cpu_in_order() {
        let op = |space| Op::DestroySpace { space };
        let tags = [tag(0, 0), tag(0, 1), tag(0, 1), tag(2, 1), tag(2, 0)];
        let ops = [op(1), op(2), op(3), op(4), op(5)];
        let rounds = rounds_of(&tags, &ops);
        let shape: Vec<Vec<(u32, Vec<Op>)>> = rounds
            .into_iter()
            .map(|r| r.into_iter().map(|b| (b.cpu, b.ops)).collect())
            .collect();
        assert_eq!(
            shape,
            [
                vec![(0, vec![op(1)]), (1, vec![op(2), op(3)])],
                vec![(0, vec![op(5)]), (1, vec![op(4)])]
            ]
        );
    }

    #[test]
    fn reversed_runs_each_round_of_several_cpus_highest_cpu_first() {
        let tags = [
            tag(0, 0),
            tag(0, 1),
            tag(1, 0),
            tag(2, 1),
            tag(2, 0),
            tag(2, 2),
        ];
        let slice = |cpu| Slice { cpu, points: None };
        let expected: ByRound = [
            (0, vec![slice(1), slice(0)]),
            (2, vec![slice(2), slice(1), slice(0)]),
        ]
        .into_iter()
        .collect();
        assert_eq!(reversed(&tags), expected);
    }

    /// CPU 0 touches space 1 last and keeps it loaded; in the next round it moves to space 2
    /// while CPU 1 unmaps the page of space 1, flushing only locally (the seeded bug).
    fn a_race_the_hardware_ordered() -> Vec<Vec<CpuBatch>> {
        use shared_mm::abi::access_bits::{READ, USER, WRITE};
        let map = |space| Op::MapFixed {
            space,
            addr: 0x1000,
            size: 0x1000,
            access: USER | READ | WRITE,
        };
        let touch = |space| Op::TouchWrite {
            space,
            addr: 0x1000,
            value: 1,
        };
        let on = |cpu, ops| CpuBatch { cpu, ops };
        let setup = [Op::CreateSpace, Op::CreateSpace, map(2), map(1), touch(1)];
        let unmap = Op::Unmap {
            space: 1,
            addr: 0x1000,
            size: 0x1000,
        };
        vec![
            vec![on(0, setup.to_vec())],
            vec![on(0, vec![touch(2)]), on(1, vec![unmap])],
        ]
    }

    /// A failure found under kvm comes without a schedule. The sim's default order (CPU 0
    /// switches away first) does not show this one, the reverse order (CPU 1 unmaps first)
    /// does; shrunk, CPU 0's switch goes, and the failure shows in the default order too.
    #[test]
    fn a_failure_found_without_a_schedule_is_shrunk_in_the_reverse_order() {
        use guest_mm::{Bug, SeededBugs};
        use mm_checker::Rule;
        let config = GuestConfig {
            backend: mm_driver::Backend::Sim,
            cpus: 2,
            seeded_bugs: SeededBugs::NONE.with(Bug::ShootdownLocalOnly),
            ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
        };
        let replay = |schedule: &str| {
            let config = GuestConfig {
                schedule: Some(schedule.parse().expect("a schedule")),
                ..config.clone()
            };
            replay_rounds(&mm_sim::Sim, &config, a_race_the_hardware_ordered(), true)
                .expect("replays")
        };
        assert_eq!(replay("").failure, None);
        let target = Signature::Finding(Rule::FrameFreedWhileCached);
        let mut found = replay("1: cpu1 cpu0");
        assert!(found.failure.as_ref().is_some_and(|f| f.shows(&target)));
        found.schedule = None;
        let quiet = Watch {
            stop: None,
            progress: &|_, _| {},
        };
        let budget = Budget::default();
        let shrunk = shrink_rounds(&mm_sim::Sim, &config, &found, &target, budget, quiet)
            .expect("shrinks")
            .expect("fails in the reverse order");
        assert!(shrunk.failure.shows(&target), "{shrunk:#?}");
        assert!(shrunk.ops.len() < found.sent.len(), "{shrunk:#?}");
        assert!(!shrunk
            .ops
            .contains(&a_race_the_hardware_ordered()[1][0].ops[0]));
        assert!(
            shrunk.schedule.as_ref().is_none_or(|s| s.is_empty()),
            "{shrunk:#?}"
        );
        assert!(shrunk.cpus.contains(&1), "{shrunk:#?}");
    }
}
