//! Running a scenario on a guest: its batches in order, every result judged against its step's
//! expectation, and in a checked run the agreement checker after every batch.

use crate::expect::Expect;
use crate::format::{Scenario, Step};
use crate::ops::op_to_line;
use mm_checker::{Checked, Finding};
use mm_driver::driver::{CpuBatch, Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_driver::{Guest, RunError};
use shared_mm::abi::{Op, OpResult, SpaceRecord, MAX_BATCH};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use vm_memory::GuestMemoryMmap;

/// A step whose result broke its expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The step's line in its file.
    pub line: usize,
    pub op: Op,
    pub label: String,
    pub expected: Expect,
    pub got: OpResult,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, op_to_line(&self.op))?;
        if !self.label.is_empty() {
            write!(f, " ({})", self.label)?;
        }
        let got = Expect::observed(&self.op, &self.got);
        write!(f, ": expected {}, got {got}", self.expected)
    }
}

/// A driver that runs a scenario and judges each result as its batch comes back. With several
/// CPUs each batch is a round: every CPU runs its steps of the batch (see
/// [`Step::cpu`]) at the same time as the others.
pub struct Runner {
    steps: Vec<Step>,
    /// The batches as sent, as ranges of `steps`: the scenario's, each cut into pieces of at most
    /// [`MAX_BATCH`] operations (what one hypercall carries).
    batches: Vec<Range<usize>>,
    /// How many batches were sent; the last one is in flight until its results come.
    sent: usize,
    /// The results received so far, one per step from the first.
    results: Vec<OpResult>,
    /// Region trees the scenario's snapshot operations exported, in arrival order.
    snapshots: Vec<SpaceSnapshot>,
    /// Steps whose result broke their expectation, in order.
    pub mismatches: Vec<Mismatch>,
}

impl Runner {
    pub fn new(scenario: &Scenario) -> Runner {
        let mut steps = Vec::new();
        let mut batches = Vec::new();
        for batch in &scenario.batches {
            for piece in batch.chunks(MAX_BATCH) {
                batches.push(steps.len()..steps.len() + piece.len());
                steps.extend_from_slice(piece);
            }
        }
        Runner {
            steps,
            batches,
            sent: 0,
            results: Vec::new(),
            snapshots: Vec::new(),
            mismatches: Vec::new(),
        }
    }

    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// The results received so far, one per step from the first.
    pub fn results(&self) -> impl Iterator<Item = &OpResult> {
        self.results.iter()
    }

    /// The steps' operations, in order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.steps.iter().map(|s| &s.op)
    }

    /// Steps whose results have been judged.
    pub fn judged(&self) -> usize {
        self.results.len()
    }

    /// Region trees the scenario's own snapshot operations exported, in arrival order.
    pub fn snapshots(&self) -> &[SpaceSnapshot] {
        &self.snapshots
    }

    /// The line of the last step of the batch that agreement check number `check` followed
    /// (see [`Checked`]: check 0 runs before the first batch, so it has none).
    pub fn line_before_check(&self, check: usize) -> Option<usize> {
        let batch = self.batches.get(check.checked_sub(1)?)?;
        Some(self.steps[batch.end - 1].line)
    }

    /// The batch in flight, if one is: its index.
    fn in_flight(&self) -> Option<usize> {
        self.sent
            .checked_sub(1)
            .filter(|_| self.results.len() < self.batches[self.sent - 1].end)
    }

    /// The CPUs of batch `batch`, each with the indices of its steps there, in order.
    fn by_cpu(&self, batch: usize) -> BTreeMap<u32, Vec<usize>> {
        let mut cpus: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for i in self.batches[batch].clone() {
            cpus.entry(self.steps[i].cpu).or_default().push(i);
        }
        cpus
    }

    /// Hands out the next batch as a round, or `None` at the end.
    fn next(&mut self) -> Option<Vec<CpuBatch>> {
        let batch = self.sent;
        if batch == self.batches.len() {
            return None;
        }
        self.sent += 1;
        let round = self.by_cpu(batch).into_iter().map(|(cpu, steps)| CpuBatch {
            cpu,
            ops: steps.iter().map(|&i| self.steps[i].op).collect(),
        });
        Some(round.collect())
    }

    fn judge(&mut self, batch: usize, results: &[OpResult]) -> Result<(), DriverError> {
        let steps = &self.steps[self.batches[batch].clone()];
        if results.len() != steps.len() {
            return Err(DriverError::ResultCount {
                got: results.len(),
                sent: steps.len(),
            });
        }
        for (step, got) in steps.iter().zip(results) {
            match step.expect {
                Some(expected) if !expected.holds(got) => self.mismatches.push(Mismatch {
                    line: step.line,
                    op: step.op,
                    label: step.label.clone(),
                    expected,
                    got: *got,
                }),
                _ => {}
            }
        }
        self.results.extend_from_slice(results);
        Ok(())
    }
}

impl Driver for Runner {
    /// One CPU: a step that names another CPU cannot run.
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        if let Some(batch) = self.in_flight() {
            self.judge(batch, results)?;
        }
        match self.next() {
            None => Ok(None),
            Some(mut round) if round.len() == 1 && round[0].cpu == 0 => {
                Ok(round.pop().map(|b| b.ops))
            }
            Some(round) => {
                let cpu = round.iter().map(|b| b.cpu).max().unwrap_or(0);
                let line = self
                    .steps
                    .iter()
                    .find(|s| s.cpu == cpu)
                    .map_or(0, |s| s.line);
                Err(DriverError::BadRound(format!(
                    "line {line}: a step on cpu {cpu}, and the guest has one CPU (--cpus)"
                )))
            }
        }
    }

    fn next_round(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        if let Some(batch) = self.in_flight() {
            // Back in step order: each CPU's results to its steps.
            let mut ordered = vec![None; self.batches[batch].len()];
            let start = self.batches[batch].start;
            for (cpu, steps) in self.by_cpu(batch) {
                let got = results
                    .iter()
                    .find(|(c, _)| *c == cpu)
                    .map_or(&[][..], |(_, r)| r);
                if got.len() != steps.len() {
                    return Err(DriverError::ResultCount {
                        got: got.len(),
                        sent: steps.len(),
                    });
                }
                for (i, result) in steps.into_iter().zip(got) {
                    ordered[i - start] = Some(*result);
                }
            }
            let ordered: Vec<OpResult> = ordered.into_iter().flatten().collect();
            self.judge(batch, &ordered)?;
        }
        Ok(self.next())
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        SpaceSnapshot::collect(&mut self.snapshots, chunk)
    }
}

/// What a run of a scenario found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Steps in the scenario, and steps whose results came back.
    pub steps: usize,
    pub judged: usize,
    /// Steps whose result differed from the expectation.
    pub mismatches: Vec<Mismatch>,
    /// Agreement-checker findings, with the number of the check that found them.
    pub findings: Vec<(usize, Finding)>,
    /// For each finding, the line of the last step before its check (none for the check that
    /// runs before the first batch).
    pub finding_lines: Vec<Option<usize>>,
    /// How many times the agreement checker ran (0 in an unchecked run).
    pub checks_run: usize,
    /// The guest's exit status (0 when it failed).
    pub exit_status: u32,
    /// The guest failure (a panic, triple fault, hang or protocol error) that ended the run
    /// before its end; what was judged and found before it is kept above.
    pub crash: Option<RunError>,
}

impl Outcome {
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty() && self.findings.is_empty() && self.crash.is_none()
    }

    /// Each mismatch and each finding, one line apiece, in line order.
    pub fn problems(&self) -> Vec<String> {
        let mut lines: Vec<(usize, String)> = self
            .mismatches
            .iter()
            .map(|m| (m.line, m.to_string()))
            .collect();
        for ((_, finding), line) in self.findings.iter().zip(&self.finding_lines) {
            let text = match line {
                Some(line) => format!("line {line}: checker, after this batch: {finding}"),
                None => format!("before the first batch: checker: {finding}"),
            };
            lines.push((line.unwrap_or(0), text));
        }
        lines.sort_by_key(|(line, _)| *line);
        lines.into_iter().map(|(_, text)| text).collect()
    }
}

/// Runs `scenario` on `vm`, with the agreement checker after every batch if `check`. A guest
/// failure ends the run with what was found before it (see [`Outcome::crash`]); an error of the
/// host is an error.
pub fn run(vm: &mut dyn Guest, scenario: &Scenario, check: bool) -> Result<Outcome, RunError> {
    let mut runner = Runner::new(scenario);
    let (ended, findings, checks_run) = if check {
        let mut checked = Checked::new(runner);
        let ended = vm.run(&mut checked);
        let findings = std::mem::take(&mut checked.findings);
        let checks_run = checked.checks_run;
        runner = checked.into_inner();
        (ended, findings, checks_run)
    } else {
        (vm.run(&mut runner), Vec::new(), 0)
    };
    let (exit_status, crash) = match ended {
        Ok(status) => (status, None),
        Err(e) if e.is_guest_failure() => (0, Some(e)),
        Err(e) => return Err(e),
    };
    let finding_lines = findings
        .iter()
        .map(|(check, _)| runner.line_before_check(*check))
        .collect();
    Ok(Outcome {
        steps: runner.step_count(),
        judged: runner.judged(),
        findings,
        finding_lines,
        checks_run,
        exit_status,
        crash,
        mismatches: runner.mismatches,
    })
}

/// Runs `scenario` on `vm` with the agreement checker after every batch.
pub fn run_checked(vm: &mut dyn Guest, scenario: &Scenario) -> Result<Outcome, RunError> {
    run(vm, scenario, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_checker::Rule;
    use shared_mm::abi::{FaultKind, Status};

    fn step(line: usize) -> Step {
        Step {
            line,
            ..Step::new(Op::CreateSpace, Some(Expect::Value(1)), "")
        }
    }

    #[test]
    fn a_batch_longer_than_a_hypercall_carries_is_sent_in_pieces() {
        let scenario = Scenario {
            header: Vec::new(),
            batches: vec![(1..=2050).map(step).collect(), vec![step(2052)]],
        };
        let runner = Runner::new(&scenario);
        assert_eq!(
            runner.batches,
            [0..1024, 1024..2048, 2048..2050, 2050..2051]
        );
        assert_eq!(runner.step_count(), 2051);
        // Check 0 runs before the first batch; check k after batch k - 1.
        assert_eq!(runner.line_before_check(0), None);
        assert_eq!(runner.line_before_check(1), Some(1024));
        assert_eq!(runner.line_before_check(4), Some(2052));
        assert_eq!(runner.line_before_check(5), None);
    }

    #[test]
    fn a_batch_is_a_round_of_each_cpu_s_steps_judged_back_in_step_order() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 4096)])
            .expect("4 KiB");
        let scenario = Scenario {
            header: Vec::new(),
            batches: vec![vec![step(1).on(1), step(2), step(3).on(1)]],
        };
        let mut runner = Runner::new(&scenario);
        let round = runner.next_round(&mem, &[], &[]).expect("a round");
        let cpus: Vec<(u32, usize)> = round
            .iter()
            .flatten()
            .map(|b| (b.cpu, b.ops.len()))
            .collect();
        assert_eq!(cpus, [(0, 1), (1, 2)]);
        let value = |v| OpResult {
            value: v,
            ..OpResult::ok()
        };
        let results = [(0, vec![value(2)]), (1, vec![value(1), value(9)])];
        assert_eq!(runner.next_round(&mem, &results, &[]), Ok(None));
        let got: Vec<u64> = runner.results().map(|r| r.value).collect();
        assert_eq!(got, [1, 2, 9]);
        let lines: Vec<usize> = runner.mismatches.iter().map(|m| m.line).collect();
        assert_eq!(lines, [2, 3], "each result was judged against its own step");
        let mut one_cpu = Runner::new(&scenario);
        assert!(matches!(
            one_cpu.next_batch(&mem, &[], &[]),
            Err(DriverError::BadRound(why)) if why.starts_with("line 1: a step on cpu 1")
        ));
    }

    #[test]
    fn problems_read_in_line_order_with_what_was_expected_and_got() {
        let read = Op::TouchRead {
            space: 1,
            addr: 0x1000,
        };
        let mismatch = |line, label: &str| Mismatch {
            line,
            op: read,
            label: label.into(),
            expected: Expect::Value(5),
            got: OpResult {
                status: Status::Faulted,
                fault: FaultKind::SegvNoRegion,
                addr: 0x1000,
                value: 0,
            },
        };
        let finding = Finding {
            space: 1,
            rule: Rule::PteInHole,
            va: Some(0x1000),
            pte: None,
            region: None,
            detail: "stale".into(),
            events: Vec::new(),
        };
        let outcome = Outcome {
            mismatches: vec![mismatch(9, "read it"), mismatch(3, "")],
            findings: vec![(2, finding.clone()), (0, finding)],
            finding_lines: vec![Some(5), None],
            ..Outcome::default()
        };
        assert!(!outcome.is_clean());
        assert_eq!(
            outcome.problems(),
            [
                "before the first batch: checker: space 1 [no-pte-in-hole] at 0x1000: stale",
                "line 3: touch-read space=1 addr=0x1000: expected value 0x5, got fault segv-no-region at 0x1000",
                "line 5: checker, after this batch: space 1 [no-pte-in-hole] at 0x1000: stale",
                "line 9: touch-read space=1 addr=0x1000 (read it): expected value 0x5, got fault segv-no-region at 0x1000",
            ]
        );
    }
}
