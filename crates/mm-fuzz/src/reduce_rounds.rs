//! Reducing a failure of several CPUs for its reproducer. On the sim, whose schedules replay
//! exactly, it is shrunk by [`shrink_rounds`]. Under kvm the hardware interleaves and each
//! replay boots a guest (seconds): the failure is shrunk on the sim twin first, when the
//! campaign has one (the same MM and seeded bugs, on as many CPUs), and the result confirmed by
//! [`CONFIRMING_REPLAYS`] replays on kvm; if not every one shows the failure, it is shrunk on
//! kvm itself and confirmed the same way. The first reproducer every confirming replay showed
//! is saved, else the run as found (which failed when the campaign ran it), with its count.

use crate::campaign::CampaignConfig;
use crate::confirm::{confirm, Confirmed, CONFIRMING_REPLAYS};
use crate::error::FuzzError;
use crate::shrink_rounds::{shrink_rounds, ShrunkRounds, Watch};
use crate::{Failure, Run};
use mm_driver::{Boot, GuestConfig};
use mm_scenario::reproduced::Reproduced;
use std::sync::atomic::{AtomicBool, Ordering};

/// A failure of several CPUs, reduced for its reproducer.
#[derive(Clone, Debug)]
pub struct Reduced {
    pub rounds: ShrunkRounds,
    /// Under kvm, how many confirming replays showed the failure; `None` where none ran (the
    /// sim, or the run as found after Ctrl-C).
    pub reproduced: Option<Reproduced>,
}

/// Who hears of a reduction, and how it is stopped.
#[derive(Clone, Copy)]
pub struct Tell<'a> {
    /// Set by Ctrl-C: nothing more is shrunk, the smallest failing candidate so far is
    /// confirmed by one replay, and the run as found is not replayed.
    pub stop: Option<&'a AtomicBool>,
    /// A line for the campaign's output.
    pub say: &'a dyn Fn(String),
    /// What the reduction is doing now (the progress bar's message).
    pub doing: &'a dyn Fn(String),
}

/// Reduces the failure `found` that `run` ended with, in a campaign of several CPUs.
pub fn reduce_rounds(
    config: &CampaignConfig,
    backends: &dyn Boot,
    run: &Run,
    found: &Failure,
    tell: Tell<'_>,
) -> Result<Reduced, FuzzError> {
    let as_found = ShrunkRounds::as_found(run, found, config.vm.cpus);
    if config.vm.backend.follows_schedules() {
        let shrunk = shrink_on(config, backends, &config.vm, run, found, tell)?;
        return Ok(Reduced {
            rounds: shrunk.unwrap_or(as_found),
            reproduced: None,
        });
    }
    let twin = config.shrink_on.as_ref().map(|twin| GuestConfig {
        cpus: config.vm.cpus,
        ..twin.clone()
    });
    for vm in twin.iter().chain([&config.vm]) {
        let Some(shrunk) = shrink_on(config, backends, vm, run, found, tell)? else {
            continue;
        };
        let confirmed = confirmed_on_kvm(config, backends, &shrunk, found, tell)?;
        (tell.say)(format!(
            "  shrunk on {} to {} ops in {} replays; {} replays on kvm showed it",
            vm.backend,
            shrunk.ops.len(),
            shrunk.replays,
            confirmed.reproduced
        ));
        if confirmed.reproduced.always() {
            return Ok(reduced(shrunk, confirmed));
        }
    }
    if stopped(tell) {
        return Ok(Reduced {
            rounds: as_found,
            reproduced: None,
        });
    }
    let confirmed = confirmed_on_kvm(config, backends, &as_found, found, tell)?;
    Ok(reduced(as_found, confirmed))
}

fn stopped(tell: Tell<'_>) -> bool {
    tell.stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// `rounds` as confirmed: the failure the last kvm replay showed, if it did, and the count.
fn reduced(mut rounds: ShrunkRounds, confirmed: Confirmed) -> Reduced {
    if let Some(last) = confirmed.last {
        rounds.failure = last;
    }
    Reduced {
        rounds,
        reproduced: Some(confirmed.reproduced),
    }
}

/// [`shrink_rounds`] on `vm`, its progress told.
fn shrink_on(
    config: &CampaignConfig,
    backends: &dyn Boot,
    vm: &GuestConfig,
    run: &Run,
    found: &Failure,
    tell: Tell<'_>,
) -> Result<Option<ShrunkRounds>, FuzzError> {
    let (ops, cpus) = (run.sent.len(), vm.cpus);
    let progress = |replays: usize, smallest: usize| {
        let failing = match smallest {
            0 => String::new(),
            n => format!(", smallest failing {n} ops"),
        };
        (tell.doing)(format!(
            "shrinking {ops} ops on {cpus} CPUs on {}: replay {replays}{failing}",
            vm.backend
        ))
    };
    let watch = Watch {
        stop: tell.stop,
        progress: &progress,
    };
    let budget = config.shrink_budget;
    shrink_rounds(backends, vm, run, &found.signature, budget, watch)
}

/// `rounds`, as they will be saved, replayed on the campaign's kvm guest: every confirming
/// replay, or one after Ctrl-C.
fn confirmed_on_kvm(
    config: &CampaignConfig,
    backends: &dyn Boot,
    rounds: &ShrunkRounds,
    found: &Failure,
    tell: Tell<'_>,
) -> Result<Confirmed, FuzzError> {
    let replays = if stopped(tell) { 1 } else { CONFIRMING_REPLAYS };
    let vm = GuestConfig {
        cpus: rounds.cpu_count,
        ..config.vm.clone()
    };
    let ops = rounds.ops.len();
    let progress = |replay: u32| {
        (tell.doing)(format!(
            "confirming {ops} ops on {}: replay {replay} of {replays}",
            vm.backend
        ))
    };
    let repro = rounds.reproducer(Vec::new());
    confirm(backends, &vm, &repro, &found.signature, replays, &progress)
}
