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
    let reduction = Reduction {
        config,
        backends,
        run,
        found,
        tell,
    };
    let as_found = ShrunkRounds::as_found(run, found, config.vm.cpus);
    if config.vm.backend.follows_schedules() {
        return Ok(Reduced {
            rounds: reduction.shrink_on(&config.vm)?.unwrap_or(as_found),
            reproduced: None,
        });
    }
    let twin = config.shrink_on.as_ref().map(|twin| GuestConfig {
        cpus: config.vm.cpus,
        ..twin.clone()
    });
    for vm in twin.iter().chain([&config.vm]) {
        let Some(shrunk) = reduction.shrink_on(vm)? else {
            continue;
        };
        // The order the twin ran each round in is not part of a kvm reproducer.
        let shrunk = ShrunkRounds {
            schedule: None,
            ..shrunk
        };
        let confirmed = reduction.confirmed_on_kvm(&shrunk)?;
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
    if reduction.stopped() {
        return Ok(Reduced {
            rounds: as_found,
            reproduced: None,
        });
    }
    let confirmed = reduction.confirmed_on_kvm(&as_found)?;
    Ok(reduced(as_found, confirmed))
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

/// One reduction: the campaign, the failing run and its failure, and who hears of it.
struct Reduction<'a> {
    config: &'a CampaignConfig,
    backends: &'a dyn Boot,
    run: &'a Run,
    found: &'a Failure,
    tell: Tell<'a>,
}

impl Reduction<'_> {
    fn stopped(&self) -> bool {
        self.tell.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// [`shrink_rounds`] on `vm`, its progress told.
    fn shrink_on(&self, vm: &GuestConfig) -> Result<Option<ShrunkRounds>, FuzzError> {
        let (ops, cpus) = (self.run.sent.len(), vm.cpus);
        let progress = |replays: usize, smallest: usize| {
            let failing = match smallest {
                0 => String::new(),
                n => format!(", smallest failing {n} ops"),
            };
            (self.tell.doing)(format!(
                "shrinking {ops} ops on {cpus} CPUs on {}: replay {replays}{failing}",
                vm.backend
            ))
        };
        let watch = Watch {
            stop: self.tell.stop,
            progress: &progress,
        };
        let (target, budget) = (&self.found.signature, self.config.shrink_budget);
        shrink_rounds(self.backends, vm, self.run, target, budget, watch)
    }

    /// `rounds`, as they will be saved, replayed on the campaign's kvm guest: every confirming
    /// replay, or one after Ctrl-C.
    fn confirmed_on_kvm(&self, rounds: &ShrunkRounds) -> Result<Confirmed, FuzzError> {
        let replays = if self.stopped() {
            1
        } else {
            CONFIRMING_REPLAYS
        };
        let vm = GuestConfig {
            cpus: rounds.cpu_count,
            ..self.config.vm.clone()
        };
        let ops = rounds.ops.len();
        let progress = |replay: u32| {
            (self.tell.doing)(format!(
                "confirming {ops} ops on {}: replay {replay} of {replays}",
                vm.backend
            ))
        };
        let repro = rounds.reproducer(Vec::new());
        let target = &self.found.signature;
        confirm(self.backends, &vm, &repro, target, replays, &progress)
    }
}
