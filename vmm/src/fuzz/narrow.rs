//! Replaying a failing run finer: the same batches up to the one that failed, then one op per
//! batch with the checker after each. That pins a failure to its op, and shows an earlier,
//! different failure the batch hid: a checker finding right before the op that then crashed
//! the guest is the root cause, and the crash only its symptom.
#![forbid(unsafe_code)]

use super::{run_session, Failure, Run, Session, Source};
use crate::{VmConfig, VmmError};
use shared_mm::abi::Op;

/// Replays `ops` on a fresh guest in batches of `batch` up to op `fine_from`, then one op per
/// batch; the agreement checker runs after every batch if `check`.
pub fn replay_finer(
    config: &VmConfig,
    ops: &[Op],
    batch: usize,
    fine_from: usize,
    check: bool,
) -> Result<Run, VmmError> {
    let source = Source::Fixed(ops.iter().copied().collect());
    let session = Session::new(source, batch, None).finer_from(fine_from);
    run_session(config, session, check)
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
    config: &VmConfig,
    ops: &[Op],
    batch: usize,
    last_batch: usize,
    recorded: &Failure,
    check: bool,
) -> Result<Option<Cause>, VmmError> {
    let run = replay_finer(config, ops, batch, last_batch, check)?;
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
