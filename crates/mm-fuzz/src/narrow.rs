//! Replaying a failing run finer. `vmm replay` runs a reproducer in batches, with the agreement
//! checker after each, so a long clean replay takes about the time its operations take; once a
//! batch fails, a second guest runs the batches before it as they were and that batch one op
//! per batch, which pins the failure to the first op that shows it. The campaign and the
//! shrinker replay the same way to find a failure's root cause: an earlier, different failure
//! the batch hid (a checker finding right before the op that then crashed the guest is the
//! cause, and the crash only its symptom).
#![forbid(unsafe_code)]

use super::{run_session, Failure, Run, Session, Signature, Source};
use crate::error::FuzzError;
use mm_driver::stop::StopRequest;
use mm_driver::{Boot, GuestConfig};
use shared_mm::abi::{Op, MAX_BATCH};
use std::collections::VecDeque;
use std::ops::Range;

/// How a replay cuts its operations into batches: their lengths, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan(Vec<usize>);

impl Plan {
    /// `len` operations in batches of `batch` (1 to [`MAX_BATCH`]), except that each op of
    /// `alone` is a batch of its own; the batches after it start again from its end.
    pub fn new(len: usize, batch: usize, alone: Range<usize>) -> Plan {
        let batch = batch.clamp(1, MAX_BATCH);
        let mut lengths = Vec::new();
        let mut at = 0;
        while at < len {
            let end = if alone.contains(&at) {
                at + 1
            } else if !alone.is_empty() && (at + 1..at + batch).contains(&alone.start) {
                alone.start
            } else {
                (at + batch).min(len)
            };
            lengths.push(end - at);
            at = end;
        }
        Plan(lengths)
    }

    /// The batch lengths, in order.
    pub fn lengths(&self) -> &[usize] {
        &self.0
    }

    /// The operations of the batch that ends where the first `prefix` operations end.
    fn batch_ending_at(&self, prefix: usize) -> Option<Range<usize>> {
        let mut start = 0;
        self.0.iter().find_map(|&n| {
            let range = start..start + n;
            start += n;
            (range.end == prefix).then_some(range)
        })
    }

    /// `ops` cut into this plan's batches.
    fn cut(&self, ops: &[Op]) -> VecDeque<Vec<Op>> {
        let mut rest = ops;
        self.0
            .iter()
            .map(|&n| {
                let (batch, after) = rest.split_at(n.min(rest.len()));
                rest = after;
                batch.to_vec()
            })
            .filter(|batch| !batch.is_empty())
            .collect()
    }
}

/// What a replay showed.
#[derive(Debug)]
pub struct Replayed {
    /// The batches of the replay reported (the narrowed one, when it showed the failure).
    pub plan: Plan,
    pub failure: Option<Failure>,
    /// How many operations had run when the failure showed: through the last op of its batch.
    pub prefix: usize,
    /// The batch of more than one op that failed first, when a finer replay ran after it.
    pub narrowed_from: Option<Range<usize>>,
}

impl Replayed {
    /// The operations of the batch after which the failure showed; a single op once narrowed.
    pub fn failing_batch(&self) -> Option<Range<usize>> {
        self.failure.as_ref()?;
        self.plan.batch_ending_at(self.prefix)
    }
}

/// Replays `ops` on a fresh guest as `plan` cuts them, with the checker after each batch;
/// with `stop`, asks gdb's stop request to stop the guest when it starts op `stop.0`. A guest
/// that exits before the last op is a failure too.
pub fn replay_planned(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    plan: Plan,
    stop: Option<(usize, StopRequest)>,
) -> Result<Replayed, FuzzError> {
    let mut session = Session::new(Source::Planned(plan.cut(ops)), MAX_BATCH, None);
    if let Some((at, request)) = stop {
        session = session.stopping_at(at, request);
    }
    let run = run_session(backends, config, session, true)?;
    let early = (run.results.len() < ops.len()).then(|| Failure {
        signature: Signature::Crash("early exit"),
        description: format!(
            "the guest exited with status 0 after {} of {} ops",
            run.results.len(),
            ops.len()
        ),
        rules: Vec::new(),
        spaces: Vec::new(),
    });
    Ok(Replayed {
        plan,
        failure: run.failure.or(early),
        prefix: run.sent.len(),
        narrowed_from: None,
    })
}

/// Replays `ops` in batches of `batch` with the checker after each; when a batch of more than
/// one op fails, replays again up to it with that batch one op at a time and reports what that
/// shows (the earliest failure, pinned to its op), or, if the finer replay runs clean (a
/// failure that needs the whole batch before a check), the batch's failure.
pub fn replay_narrowed(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    batch: usize,
) -> Result<Replayed, FuzzError> {
    let batched = replay_planned(
        backends,
        config,
        ops,
        Plan::new(ops.len(), batch, 0..0),
        None,
    )?;
    let Some(failing) = batched.failing_batch().filter(|b| b.len() > 1) else {
        return Ok(batched);
    };
    let end = failing.end;
    let plan = Plan::new(end, batch, failing.clone());
    let narrowed = replay_planned(backends, config, &ops[..end], plan, None)?;
    let shown = if narrowed.failure.is_some() {
        narrowed
    } else {
        batched
    };
    Ok(Replayed {
        narrowed_from: Some(failing),
        ..shown
    })
}

/// Replays `ops` on a fresh guest in batches of `batch` up to op `fine_from`, then one op per
/// batch; the agreement checker runs after every batch if `check`.
pub fn replay_finer(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    batch: usize,
    fine_from: usize,
    check: bool,
) -> Result<Run, FuzzError> {
    let plan = Plan::new(ops.len(), batch, fine_from..ops.len());
    let session = Session::new(Source::Planned(plan.cut(ops)), MAX_BATCH, None);
    run_session(backends, config, session, check)
}

/// The root cause of a failure found at batch granularity, and where it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The earliest failure the finer replay showed.
    pub failure: Failure,
    /// Ops up to and including the one after which it showed.
    pub prefix: usize,
    /// The failure recorded, when the cause is another one: what the cause led to, later in
    /// the batch, as a line to keep with the cause's description.
    pub symptom: Option<String>,
}

impl Cause {
    /// `failure` (the cause, as a replay of the shrunk ops shows it) with the symptom, if any.
    pub fn describe(&self, failure: Failure) -> Failure {
        match &self.symptom {
            Some(symptom) => Failure {
                description: format!("{}\n{symptom}", failure.description),
                ..failure
            },
            None => failure,
        }
    }
}

/// The root cause of `recorded`, with which the run of `ops` ended in its batch starting at op
/// `last_batch` (batches of `batch`): the earliest failure of a finer replay ([`replay_finer`]
/// from `last_batch`). `None` if the finer replay runs clean (a failure that needs the batch's
/// boundaries), and then `recorded` stays what to shrink.
pub fn root_cause(
    backends: &dyn Boot,
    config: &GuestConfig,
    ops: &[Op],
    batch: usize,
    last_batch: usize,
    recorded: &Failure,
    check: bool,
) -> Result<Option<Cause>, FuzzError> {
    let run = replay_finer(backends, config, ops, batch, last_batch, check)?;
    let prefix = run.sent.len();
    Ok(run.failure.map(|failure| {
        let symptom = (!failure.shows(&recorded.signature)).then(|| {
            let mut lines = recorded.description.lines();
            let more = match lines.clone().count().saturating_sub(1) {
                0 => String::new(),
                n => format!(" (and {n} more lines)"),
            };
            format!(
                "symptom, in the batch of ops {last_batch} to {}: {}: {}{more}",
                ops.len().saturating_sub(1),
                recorded.signature,
                lines.next().unwrap_or_default(),
            )
        });
        Cause {
            failure,
            prefix,
            symptom,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_cuts_batches_and_puts_each_op_of_its_range_alone() {
        assert_eq!(Plan::new(10, 4, 0..0).lengths(), [4, 4, 2]);
        assert_eq!(Plan::new(10, 4, 4..8).lengths(), [4, 1, 1, 1, 1, 2]);
        assert_eq!(Plan::new(10, 4, 5..6).lengths(), [4, 1, 1, 4]);
        assert_eq!(Plan::new(3, 64, 2..3).lengths(), [2, 1]);
        assert_eq!(Plan::new(0, 64, 0..0).lengths(), [] as [usize; 0]);
        assert_eq!(
            Plan::new(5000, 5000, 0..0).lengths(),
            [1024, 1024, 1024, 1024, 904]
        );
        assert_eq!(Plan::new(4, 0, 0..0).lengths(), [1, 1, 1, 1]);
    }

    #[test]
    fn the_failing_batch_is_the_one_ending_at_the_prefix() {
        let plan = Plan::new(10, 4, 0..0);
        assert_eq!(plan.batch_ending_at(8), Some(4..8));
        assert_eq!(plan.batch_ending_at(10), Some(8..10));
        assert_eq!(plan.batch_ending_at(7), None);
        let ops: Vec<Op> = (0..10).map(|space| Op::DestroySpace { space }).collect();
        let cut: Vec<usize> = plan.cut(&ops).iter().map(Vec::len).collect();
        assert_eq!(cut, [4, 4, 2]);
        assert_eq!(plan.cut(&ops[..5]).len(), 2, "no empty batch past the ops");
    }
}
