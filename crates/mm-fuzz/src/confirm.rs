//! Confirming a reproducer before it is saved where timing can vary (kvm with several CPUs):
//! replayed as `vmm replay` runs it (in its rounds, or one op per batch), a few times, counting
//! the replays that show its failure.

use crate::error::FuzzError;
use crate::repro::Reproducer;
use crate::{replay, replay_rounds, Failure, Signature};
use mm_driver::{Boot, GuestConfig};
use mm_scenario::reproduced::Reproduced;

/// Replays of a reproducer before it is saved: enough to tell one that fails every time from
/// one that failed by luck of timing, few enough at a guest boot (seconds on kvm) each.
pub const CONFIRMING_REPLAYS: u32 = 3;

/// What the confirming replays showed.
#[derive(Clone, Debug)]
pub struct Confirmed {
    pub reproduced: Reproduced,
    /// How the last replay failed the target way; `None` if it did not.
    pub last: Option<Failure>,
}

/// Replays `repro` on `vm` once, the checker on, as `vmm replay` does: its failure, if any.
fn replay_once(
    backends: &dyn Boot,
    vm: &GuestConfig,
    repro: &Reproducer,
) -> Result<Option<Failure>, FuzzError> {
    Ok(match repro.cpu_rounds() {
        Some(rounds) => replay_rounds(backends, vm, rounds, true)?.failure,
        None => replay(backends, vm, &repro.ops, 1, true)?.map(|(failure, _)| failure),
    })
}

/// Replays `repro` `replays` times on `vm`, counting those that show `target`; `progress`
/// hears the number of each replay (from 1) before it runs.
pub fn confirm(
    backends: &dyn Boot,
    vm: &GuestConfig,
    repro: &Reproducer,
    target: &Signature,
    replays: u32,
    progress: &dyn Fn(u32),
) -> Result<Confirmed, FuzzError> {
    let mut failed = 0;
    let mut last = None;
    for replay in 1..=replays {
        progress(replay);
        last = replay_once(backends, vm, repro)?.filter(|f| f.shows(target));
        failed += u32::from(last.is_some());
    }
    Ok(Confirmed {
        reproduced: Reproduced { failed, replays },
        last,
    })
}
