//! Which simulated CPU runs when. Every machine call where CPUs interact is a preemption point
//! ([`Scheduler::point`]); there the scheduler decides whether the running CPU goes on or another
//! runs. A CPU that waits (for a lock another holds, for the acknowledgements of its
//! shootdown) is not runnable until what it waits for happens. The choice follows a policy:
//!
//! - **PCT** (probabilistic concurrency testing, Burckhardt et al., ASPLOS 2010), from a seed:
//!   each round the CPUs with work get distinct random priorities, and `d - 1` priority change
//!   points are drawn uniformly among the round's `k` expected preemption points (`d` from 1 to
//!   [`MAX_DEPTH`], drawn too). The runnable CPU of highest priority runs; at the i-th change
//!   point the running CPU drops to priority `d - i`, below every initial one. For a round of
//!   `n` CPUs and `k` points, any bug that needs `d` ordering constraints between events is hit
//!   with probability at least `1 / (n * k^(d-1))` by one round run with that depth: a
//!   guarantee that holds for every bug of that depth at once, unlike random switching, which
//!   needs many switches to land just right.
//! - **A written schedule** ([`Schedule`]): a reproducer's, or one a person wrote to force a race.
//!
//! Either way the scheduler records the slices the round really ran, so that a run chosen by
//! PCT replays exactly from its reproducer (its rounds that ran as the default would are left
//! out).

use guest_mm::{FlushRequest, LockClass};
use mm_driver::schedule::{Schedule, Slice};
use shared_mm::abi::Op;
use shared_mm::region_tree::{RandomSource, SplitMix64};

/// The deepest PCT round: at most `MAX_DEPTH - 1` preemptions.
pub const MAX_DEPTH: u32 = 3;

/// What a CPU waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A lock of this class another CPU holds (woken by any release of the class; it tries
    /// again).
    Lock(LockClass),
    /// The acknowledgements of its shootdown.
    Acks,
}

/// Where one CPU is in the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No work this round, or its work is done.
    Idle,
    Runnable,
    Waiting(Wait),
}

/// One CPU as the scheduler sees it.
#[derive(Debug)]
pub struct CpuRun {
    pub state: State,
    /// The locks it holds, outermost first, and the one it tries to take.
    pub held: Vec<LockClass>,
    pub wanted: Option<LockClass>,
    /// The operation it runs.
    pub op: Option<Op>,
    /// Shootdowns sent to it and not yet served, with their senders.
    pub pending: Vec<(u32, FlushRequest)>,
    /// Acknowledgements it waits for.
    pub outstanding: u32,
}

impl CpuRun {
    fn new() -> Self {
        CpuRun {
            state: State::Idle,
            held: Vec::new(),
            wanted: None,
            op: None,
            pending: Vec::new(),
            outstanding: 0,
        }
    }

    /// One line for a deadlock finding.
    pub fn describe(&self, cpu: u32) -> String {
        let names = |locks: &[LockClass]| match locks {
            [] => "nothing".to_string(),
            _ => locks
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let op = self.op.map_or("nothing".into(), |op| format!("{op:?}"));
        let wants = match self.state {
            State::Waiting(Wait::Lock(class)) => format!("waits for a lock of class {class}"),
            State::Waiting(Wait::Acks) => "waits for shootdown acknowledgements".into(),
            State::Runnable => "is runnable".into(),
            State::Idle => "is idle".into(),
        };
        format!(
            "cpu {cpu} holds {}, {wants}, running {op}",
            names(&self.held)
        )
    }
}

/// A draw in `0..n` (n > 0) from `rng` (a multiply-shift: the bias, below n / 2^64, is
/// nothing next to PCT's own bounds).
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// PCT's state: the priorities of this round and its change points.
#[derive(Debug)]
struct Pct {
    rng: SplitMix64,
    priority: Vec<u32>,
    /// The round's change points still ahead (preemption-point counts), soonest last.
    change_points: Vec<u64>,
    /// The priority the next change point gives.
    next_low: u32,
    /// Preemption points per operation, as the rounds so far ran (k's estimate is this times
    /// the round's operations).
    points_per_op: f64,
}

impl Pct {
    fn new(seed: u64, cpus: usize) -> Self {
        Pct {
            rng: SplitMix64::new(seed ^ 0x5c4e_d01e),
            priority: vec![0; cpus],
            change_points: Vec::new(),
            next_low: 0,
            points_per_op: 40.0,
        }
    }

    /// Draws the round's priorities over the CPUs with work, its depth and its change points.
    fn start(&mut self, with_work: &[u32], ops: usize) {
        let depth = 1 + below(&mut self.rng, u64::from(MAX_DEPTH)) as u32;
        let mut order: Vec<u32> = with_work.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, below(&mut self.rng, i as u64 + 1) as usize);
        }
        for (rank, &cpu) in order.iter().enumerate() {
            self.priority[cpu as usize] = depth + rank as u32;
        }
        let k = ((self.points_per_op * ops as f64) as u64).max(1);
        self.change_points.clear();
        for _ in 1..depth {
            self.change_points.push(1 + below(&mut self.rng, k));
        }
        self.change_points.sort_unstable_by(|a, b| b.cmp(a));
        self.next_low = depth - 1;
    }

    fn learn(&mut self, points: u64, ops: usize) {
        if ops > 0 {
            let seen = points as f64 / ops as f64;
            self.points_per_op = (self.points_per_op * 3.0 + seen) / 4.0;
        }
    }
}

/// How the rounds are chosen.
#[derive(Debug)]
enum Policy {
    Pct(Pct),
    /// A written schedule, and where the round is in its slices.
    Written {
        schedule: Schedule,
        at: usize,
    },
}

/// The slice running now.
#[derive(Clone, Copy, Debug)]
struct Running {
    cpu: u32,
    points: u32,
    /// The written slice it follows (its index in the round's slices), and that slice's limit.
    script: Option<usize>,
    limit: Option<u32>,
}

impl Running {
    /// Whether it ran to its limit.
    fn expired(&self) -> bool {
        self.limit.is_some_and(|l| self.points >= l)
    }
}

/// A slice the round ran, and whether the default rule would have chosen it.
#[derive(Clone, Copy, Debug)]
struct Ran {
    slice: Slice,
    by_default: bool,
}

#[derive(Debug)]
pub struct Scheduler {
    pub cpus: Vec<CpuRun>,
    /// The CPU whose coroutine runs now (`None` in the loop).
    pub running: Option<u32>,
    policy: Policy,
    /// The round (from 1, counting only rounds where several CPUs have work), its preemption
    /// points so far and its operations.
    round: u64,
    /// Whether one CPU alone has work this round: it runs, and there is nothing to choose.
    solo: bool,
    round_points: u64,
    ops: usize,
    slice: Option<Running>,
    ran: Vec<Ran>,
    /// The slices of every round that did not run as the default would.
    taken: Schedule,
}

impl Scheduler {
    /// A scheduler of `cpus` CPUs following `schedule`, or PCT from `seed` without one.
    pub fn new(cpus: u32, schedule: Option<Schedule>, seed: u64) -> Self {
        let policy = match schedule {
            Some(schedule) => Policy::Written { schedule, at: 0 },
            None => Policy::Pct(Pct::new(seed, cpus as usize)),
        };
        Scheduler {
            cpus: (0..cpus).map(|_| CpuRun::new()).collect(),
            running: None,
            policy,
            round: 0,
            solo: true,
            round_points: 0,
            ops: 0,
            slice: None,
            ran: Vec::new(),
            taken: Schedule::default(),
        }
    }

    /// A new round: the CPUs with work (`ops` operations in all) become runnable.
    pub fn start_round(&mut self, with_work: &[u32], ops: usize) {
        for &cpu in with_work {
            self.cpus[cpu as usize].state = State::Runnable;
        }
        self.solo = with_work.len() < 2;
        if self.solo {
            return;
        }
        self.round += 1;
        self.round_points = 0;
        self.ops = ops;
        self.slice = None;
        self.ran.clear();
        match &mut self.policy {
            Policy::Pct(pct) => pct.start(with_work, ops),
            Policy::Written { at, .. } => *at = 0,
        }
    }

    /// The round is over: what it ran goes to the schedule taken, less the slices at its end
    /// that the default would have run so.
    pub fn end_round(&mut self) {
        if self.solo {
            return;
        }
        self.close_slice();
        while self
            .ran
            .last()
            .is_some_and(|r| r.by_default && !r.slice.preempts())
        {
            self.ran.pop();
        }
        if !self.ran.is_empty() {
            let slices = self.ran.iter().map(|r| r.slice).collect();
            self.taken.rounds.insert(self.round, slices);
        }
        if let Policy::Pct(pct) = &mut self.policy {
            pct.learn(self.round_points, self.ops);
        }
    }

    /// The slices of every round so far that did not run as the default would.
    pub fn taken(&self) -> &Schedule {
        &self.taken
    }

    fn runnable(&self, cpu: u32) -> bool {
        self.cpus[cpu as usize].state == State::Runnable
    }

    /// The lowest-numbered runnable CPU, another than `not` if there is one.
    fn lowest_runnable(&self, not: Option<u32>) -> Option<u32> {
        let all = || (0..self.cpus.len() as u32).filter(|&c| self.runnable(c));
        all().find(|&c| Some(c) != not).or_else(|| all().next())
    }

    /// The default rule: the slice running goes on while its CPU can and it is within its
    /// limit; then the lowest-numbered runnable CPU (another than the one just preempted).
    fn by_default(&self) -> Option<u32> {
        match self.slice {
            Some(s) if s.expired() => self.lowest_runnable(Some(s.cpu)),
            Some(s) if self.runnable(s.cpu) => Some(s.cpu),
            _ => self.lowest_runnable(None),
        }
    }

    /// The CPU to run now. Asking twice without a change gives the same answer.
    pub fn pick(&mut self) -> Option<u32> {
        if self.solo {
            return self.lowest_runnable(None);
        }
        match &mut self.policy {
            Policy::Pct(pct) => {
                let cpus = &self.cpus;
                (0..cpus.len() as u32)
                    .filter(|&c| cpus[c as usize].state == State::Runnable)
                    .max_by_key(|&c| pct.priority[c as usize])
            }
            Policy::Written { schedule, at } => {
                let slices = schedule.round(self.round);
                loop {
                    if let Some(s) = self.slice.filter(|s| s.script == Some(*at)) {
                        if self.cpus[s.cpu as usize].state == State::Runnable && !s.expired() {
                            return Some(s.cpu);
                        }
                        *at += 1;
                        continue;
                    }
                    match slices.get(*at) {
                        Some(next) if self.cpus[next.cpu as usize].state == State::Runnable => {
                            return Some(next.cpu)
                        }
                        // A written slice whose CPU cannot run then is passed over.
                        Some(_) => *at += 1,
                        None => return self.by_default(),
                    }
                }
            }
        }
    }

    /// The written slice the round is at, if `cpu` is to start it.
    fn script_slice(&self, cpu: u32) -> Option<(usize, Slice)> {
        let Policy::Written { schedule, at } = &self.policy else {
            return None;
        };
        let slice = *schedule.round(self.round).get(*at)?;
        (slice.cpu == cpu && self.slice.is_none_or(|s| s.script != Some(*at)))
            .then_some((*at, slice))
    }

    /// The loop resumes `cpu`: the slice running goes on, or a new one starts.
    pub fn resume(&mut self, cpu: u32) {
        self.running = Some(cpu);
        if self.solo {
            return;
        }
        let script = self.script_slice(cpu);
        if script.is_none() && self.slice.is_some_and(|s| s.cpu == cpu) {
            return;
        }
        // What the default would run now: another CPU than one preempted (a slice left while
        // its CPU could go on ends at its limit, when replayed), else the lowest runnable.
        let default = match self.slice {
            Some(s) if self.runnable(s.cpu) => self.lowest_runnable(Some(s.cpu)),
            _ => self.lowest_runnable(None),
        };
        let by_default = default == Some(cpu);
        self.close_slice();
        self.ran.push(Ran {
            slice: Slice { cpu, points: None },
            by_default,
        });
        self.slice = Some(Running {
            cpu,
            points: 0,
            script: script.map(|(at, _)| at),
            limit: script.and_then(|(_, s)| s.points),
        });
    }

    /// Ends the slice running: preempted if its CPU could have gone on.
    fn close_slice(&mut self) {
        if let Some(s) = self.slice.take() {
            let preempted = self.runnable(s.cpu);
            if let Some(last) = self.ran.last_mut() {
                last.slice.points = preempted.then_some(s.points.max(1));
            }
        }
    }

    /// CPU `cpu` (running) is at a preemption point: counts it, and applies a PCT change point.
    /// Returns whether `cpu` must stop for another.
    pub fn point(&mut self, cpu: u32) -> bool {
        if self.solo {
            return false;
        }
        self.round_points += 1;
        if let Some(s) = &mut self.slice {
            s.points += 1;
        }
        if let Policy::Pct(pct) = &mut self.policy {
            if pct.change_points.last() == Some(&self.round_points) {
                while pct.change_points.last() == Some(&self.round_points) {
                    pct.change_points.pop();
                }
                pct.priority[cpu as usize] = pct.next_low;
                pct.next_low = pct.next_low.saturating_sub(1);
            }
        }
        self.pick() != Some(cpu)
    }

    /// CPU `cpu` waits for `wait`.
    pub fn wait(&mut self, cpu: u32, wait: Wait) {
        self.cpus[cpu as usize].state = State::Waiting(wait);
    }

    /// A lock of `class` was released: every CPU waiting for one tries again.
    pub fn released(&mut self, class: LockClass) {
        for run in &mut self.cpus {
            if run.state == State::Waiting(Wait::Lock(class)) {
                run.state = State::Runnable;
            }
        }
    }

    /// CPU `sender` sends `request` to `targets` and waits for their acknowledgements.
    pub fn send(
        &mut self,
        sender: u32,
        targets: impl Iterator<Item = u32>,
        request: &FlushRequest,
    ) {
        for target in targets {
            self.cpus[target as usize].pending.push((sender, *request));
            self.cpus[sender as usize].outstanding += 1;
        }
        if self.cpus[sender as usize].outstanding > 0 {
            self.wait(sender, Wait::Acks);
        }
    }

    /// One acknowledgement reached `sender`.
    pub fn acknowledged(&mut self, sender: u32) {
        let run = &mut self.cpus[sender as usize];
        run.outstanding -= 1;
        if run.outstanding == 0 && run.state == State::Waiting(Wait::Acks) {
            run.state = State::Runnable;
        }
    }

    /// CPU `cpu` finished its work for the round.
    pub fn done(&mut self, cpu: u32) {
        let run = &mut self.cpus[cpu as usize];
        run.state = State::Idle;
        run.op = None;
    }

    /// Whether any CPU waits (with none runnable: a deadlock).
    pub fn anyone_waits(&self) -> bool {
        self.cpus
            .iter()
            .any(|c| matches!(c.state, State::Waiting(_)))
    }

    /// The deadlock finding: one line per CPU that waits or has work.
    pub fn deadlock(&self) -> Vec<String> {
        (0..self.cpus.len() as u32)
            .filter(|&c| self.cpus[c as usize].state != State::Idle)
            .map(|c| self.cpus[c as usize].describe(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_waiting_on_a_lock_is_a_deadlock_naming_held_and_wanted_locks() {
        let mut sched = Scheduler::new(2, None, 1);
        sched.start_round(&[0, 1], 2);
        sched.cpus[0].held.push(LockClass::Frames);
        sched.cpus[0].op = Some(Op::CreateSpace);
        sched.wait(0, Wait::Lock(LockClass::Object));
        sched.cpus[1]
            .held
            .extend([LockClass::Space, LockClass::Object]);
        sched.wait(1, Wait::Lock(LockClass::Frames));
        assert_eq!(sched.pick(), None);
        assert!(sched.anyone_waits());
        assert_eq!(
            sched.deadlock(),
            [
                "cpu 0 holds frames, waits for a lock of class object, running CreateSpace",
                "cpu 1 holds space, object, waits for a lock of class frames, running nothing"
            ]
        );
        sched.released(LockClass::Object);
        assert_eq!(sched.pick(), Some(0), "a release wakes its waiters");
    }

    #[test]
    fn a_written_schedule_runs_its_slices_then_the_default() {
        let schedule: Schedule = "1: cpu1:2 cpu0".parse().expect("a schedule");
        let mut sched = Scheduler::new(2, Some(schedule), 0);
        sched.start_round(&[0, 1], 2);
        assert_eq!(sched.pick(), Some(1));
        sched.resume(1);
        assert!(!sched.point(1), "within its slice");
        assert!(sched.point(1), "its second point ends it");
        assert_eq!(sched.pick(), Some(0));
        sched.resume(0);
        assert!(!sched.point(0));
        sched.done(0);
        assert_eq!(
            sched.pick(),
            Some(1),
            "then the default: the lowest runnable"
        );
        sched.resume(1);
        sched.done(1);
        assert_eq!(sched.pick(), None);
        sched.end_round();
        // cpu0 after the preempted cpu1 is what the default runs: left out.
        assert_eq!(sched.taken().to_string(), "1: cpu1:2");
    }
}
