//! The MM self-check `vmm run` runs: the built-in self-check scenario, each result judged
//! against its step's expectation, then the fuzz engine's placement probe as one batch more,
//! judged by the same uniformity rule as in a campaign. It lives with the fuzz engine because
//! the probe's judge is the engine's model and uniformity rule.
#![forbid(unsafe_code)]

use crate::probe;
use mm_driver::driver::{Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_scenario::builtin::{self_check, SELF_CHECK_NAME};
use mm_scenario::runner::Runner;
use shared_mm::abi::{Op, OpResult, SpaceRecord, Status, KERNEL_SPACE};
use vm_memory::GuestMemoryMmap;

/// Runs the self-check and records what passed; at the end it also checks the kernel's
/// snapshot for its three unbacked reservations. After the last step it runs the fuzzer's
/// placement probe as one batch more, judged by the same uniformity rule and false-alarm
/// rate ([`probe::Standalone`]): the draws of `map-randomized` must be uniform.
pub struct SelfCheck {
    runner: Runner,
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
    pub fn new() -> Self {
        SelfCheck {
            runner: Runner::new(&self_check()),
            probe: None,
            probe_judged: false,
            failures: Vec::new(),
            snapshots: Vec::new(),
            checked: 0,
        }
    }

    pub fn step_count(&self) -> usize {
        self.runner.step_count()
    }

    pub fn passed(&self) -> bool {
        self.checked == self.step_count() && self.probe_judged && self.failures.is_empty()
    }

    /// The id the guest gives its next space: one past the last a step made.
    fn next_space_id(&self) -> u32 {
        let made = self
            .runner
            .ops()
            .zip(self.runner.results())
            .filter_map(|(op, got)| {
                let makes = matches!(op, Op::CreateSpace | Op::Fork { .. });
                (makes && got.status == Status::Ok).then_some(got.value)
            });
        let last = made.max().unwrap_or(0);
        u32::try_from(last).map_or(u32::MAX, |id| id.saturating_add(1))
    }

    /// Called once the last batch is judged.
    fn finish(&mut self) {
        let mismatches = self.runner.mismatches.iter();
        let mismatches = mismatches.map(|m| format!("{SELF_CHECK_NAME} {m}"));
        self.failures.splice(0..0, mismatches);
        self.snapshots = self.runner.snapshots().to_vec();
        self.check_kernel_snapshot();
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
        self.checked = self.runner.judged();
        if next.is_some() {
            return Ok(next);
        }
        let probe = probe::Standalone::new(self.next_space_id());
        let ops = probe.ops().to_vec();
        self.probe = Some(probe);
        Ok(Some(ops))
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.runner.snapshot(mem, chunk)
    }
}
