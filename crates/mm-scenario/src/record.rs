//! Recording a scenario: its operations run once and their observed results written in as
//! the expectations, which turns a reproducer into a ready regression scenario.

use crate::expect::Expect;
use crate::format::Scenario;
use crate::runner::Runner;
use mm_checker::Checked;
use mm_driver::{Guest, RunError};

/// A scenario with the results one run observed as its expectations.
#[derive(Debug)]
pub struct Recording {
    pub scenario: Scenario,
    /// Steps that got a result (the first ones): the rest keep no expectation.
    pub recorded: usize,
    /// Why the run ended before the last step, if it did (a guest panic, for instance).
    pub stopped: Option<RunError>,
}

/// Runs `scenario` on `vm` with the agreement checker after every batch and returns it with
/// each step's expectation replaced by what the guest did: [`Expect::observed`], the exact
/// placed address, value read or fault address. Findings do not stop the run.
pub fn record(vm: &mut dyn Guest, scenario: &Scenario) -> Recording {
    let mut checked = Checked::new(Runner::new(scenario));
    let stopped = vm.run(&mut checked).err();
    let runner = checked.into_inner();
    let mut results = runner.results();
    let mut recorded = 0;
    let mut scenario = scenario.clone();
    for step in scenario.batches.iter_mut().flatten() {
        step.expect = results.next().map(|got| Expect::observed(&step.op, got));
        recorded += usize::from(step.expect.is_some());
    }
    Recording {
        scenario,
        recorded,
        stopped,
    }
}
