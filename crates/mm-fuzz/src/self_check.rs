//! The MM self-check `vmm run` runs: the built-in self-check scenario, each result judged
//! against its step's expectation (with several CPUs, its SMP part after it: cross-CPU
//! shootdowns), then the fuzz engine's placement probe as one batch more,
//! judged by the same uniformity rule as in a campaign. It lives with the fuzz engine because
//! the probe's judge is the engine's model and uniformity rule.
#![forbid(unsafe_code)]

use crate::probe;
use mm_driver::driver::{CpuBatch, Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_scenario::builtin::{self_check, smp_check, SELF_CHECK_NAME, SMP_CHECK_NAME};
use mm_scenario::runner::Runner;
use shared_mm::abi::{Op, OpResult, SpaceRecord, Status, KERNEL_SPACE};
use vm_memory::GuestMemoryMmap;

/// Runs the self-check and records what passed; at the end it also checks the kernel's
/// snapshot for its three unbacked reservations. After the last step it runs the fuzzer's
/// placement probe as one batch more, judged by the same uniformity rule and false-alarm
/// rate ([`probe::Standalone`]): the draws of `map-randomized` must be uniform.
pub struct SelfCheck {
    runner: Runner,
    /// The SMP part, with several CPUs: run after `runner`, in rounds.
    smp: Option<Runner>,
    /// The placement probe, once sent.
    probe: Option<probe::Standalone>,
    /// Whether the probe's results came back and were judged.
    pub probe_judged: bool,
    /// One line per failed step or check.
    pub failures: Vec<String>,
    /// Region trees received, in arrival order (complete once the run has ended).
    pub snapshots: Vec<SpaceSnapshot>,
    /// Steps whose results have been checked.
    pub checked: usize,
}

impl SelfCheck {
    /// The self-check for one CPU.
    pub fn new() -> Self {
        Self::with_cpus(1)
    }

    /// The self-check for a guest with `cpus` CPUs: with several, its SMP part too.
    pub fn with_cpus(cpus: u32) -> Self {
        SelfCheck {
            runner: Runner::new(&self_check()),
            smp: (cpus > 1).then(|| Runner::new(&smp_check())),
            probe: None,
            probe_judged: false,
            failures: Vec::new(),
            snapshots: Vec::new(),
            checked: 0,
        }
    }

    pub fn step_count(&self) -> usize {
        self.parts().map(Runner::step_count).sum()
    }

    /// The self-check, then its SMP part if it has one.
    fn parts(&self) -> impl Iterator<Item = &Runner> {
        std::iter::once(&self.runner).chain(&self.smp)
    }

    /// Steps judged so far, over both parts.
    fn judged(&self) -> usize {
        self.parts().map(Runner::judged).sum()
    }

    pub fn passed(&self) -> bool {
        self.checked == self.step_count() && self.probe_judged && self.failures.is_empty()
    }

    /// The id the guest gives its next space: one past the last a step made.
    fn next_space_id(&self) -> u32 {
        let made = self
            .parts()
            .flat_map(|part| part.ops().zip(part.results()))
            .filter_map(|(op, got)| {
                let makes = matches!(op, Op::CreateSpace | Op::Fork { .. });
                (makes && got.status == Status::Ok).then_some(got.value)
            });
        let last = made.max().unwrap_or(0);
        u32::try_from(last).map_or(u32::MAX, |id| id.saturating_add(1))
    }

    /// Called once the last batch is judged.
    fn finish(&mut self) {
        let names = [SELF_CHECK_NAME, SMP_CHECK_NAME];
        let mismatches = self
            .parts()
            .zip(names)
            .flat_map(|(part, name)| part.mismatches.iter().map(move |m| format!("{name} {m}")));
        let mismatches: Vec<String> = mismatches.collect();
        self.failures.splice(0..0, mismatches);
        self.snapshots = self.runner.snapshots().to_vec();
        self.check_kernel_snapshot();
    }

    /// The placement probe's ops, after the last step.
    fn start_probe(&mut self) -> Vec<Op> {
        let probe = probe::Standalone::new(self.next_space_id());
        let ops = probe.ops().to_vec();
        self.probe = Some(probe);
        ops
    }

    fn check_kernel_snapshot(&mut self) {
        let Some(kernel) = self.snapshots.iter().find(|s| s.space == KERNEL_SPACE) else {
            self.failures
                .push("the guest sent no kernel snapshot".into());
            return;
        };
        let kernel = &kernel.regions;
        let names: Vec<&str> = kernel.iter().map(|r| r.name_str()).collect();
        let mut missing: Vec<String> = ["physmap", "kernel image", "kmalloc"]
            .iter()
            .filter(|wanted| !names.contains(wanted))
            .map(|wanted| format!("kernel snapshot lacks the {wanted:?} region: {names:?}"))
            .collect();
        if kernel.iter().any(|r| r.backed != 0) {
            missing.push("kernel reservations must be unbacked".into());
        }
        self.failures.extend(missing);
    }
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver for SelfCheck {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        if let Some(probe) = &self.probe {
            let failures = probe.judge(results).into_iter();
            self.failures
                .extend(failures.map(|f| format!("placement probe: {f}")));
            self.probe_judged = true;
            self.finish();
            return Ok(None);
        }
        let next = self.runner.next_batch(mem, results, spaces)?;
        self.checked = self.judged();
        if next.is_some() {
            return Ok(next);
        }
        Ok(Some(self.start_probe()))
    }

    /// With several CPUs: the self-check's batches on CPU 0, then the SMP part's rounds, then
    /// the probe on CPU 0.
    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        let on_cpu0 = |ops| vec![CpuBatch { cpu: 0, ops }];
        let own = results
            .iter()
            .find(|(cpu, _)| *cpu == 0)
            .map_or(&[][..], |(_, r)| r.as_slice());
        let Some(smp) = self.smp.as_mut().filter(|_| self.probe.is_none()) else {
            return Ok(self.next_batch(mem, own, spaces)?.map(on_cpu0));
        };
        let mut results = results;
        if self.runner.judged() < self.runner.step_count() {
            if let Some(ops) = self.runner.next_batch(mem, own, spaces)? {
                self.checked = self.runner.judged();
                return Ok(Some(on_cpu0(ops)));
            }
            // The self-check is judged: the SMP part starts.
            results = &[];
        }
        let next = smp.next_round(mem, results, spaces)?;
        self.checked = self.judged();
        match next {
            Some(round) => Ok(Some(round)),
            None => Ok(Some(on_cpu0(self.start_probe()))),
        }
    }

    /// Snapshots come from the self-check's steps (the SMP part asks for none).
    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.runner.snapshot(mem, chunk)
    }
}
