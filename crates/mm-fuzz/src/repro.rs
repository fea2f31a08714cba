//! Fuzz reproducers: scenarios without expectations (`# key: value` header lines, one operation
//! per line), written by `vmm fuzz` and run again by `vmm replay`.

use mm_driver::driver::CpuBatch;
use mm_scenario::format::{ParseError, Scenario, Step};
use shared_mm::abi::Op;

/// The comment a reproducer file starts with.
const TITLE: &str = "vmm fuzz reproducer: replay with `vmm replay FILE`";

/// A reproducer: what it was found with, what failed, and the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reproducer {
    /// `# key: value` header lines, in order.
    pub header: Vec<(String, String)>,
    pub ops: Vec<Op>,
    /// With several CPUs, the CPU each op ran on (`@cpuN`); empty with one CPU.
    pub cpus: Vec<u32>,
    /// With several CPUs, where each round starts in `ops` (`---` between them).
    pub round_starts: Vec<usize>,
}

impl Reproducer {
    pub fn header_value(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A reproducer of `ops` that ran on `cpus` (each op's CPU) in batches starting at
    /// `starts` (indices into `ops`): the rounds are kept only if an op ran off CPU 0.
    pub fn with_rounds(
        header: Vec<(String, String)>,
        ops: Vec<Op>,
        cpus: &[u32],
        starts: &[usize],
    ) -> Self {
        let several = cpus.len() == ops.len() && cpus.iter().any(|&cpu| cpu != 0);
        Reproducer {
            header,
            ops,
            cpus: if several { cpus.to_vec() } else { Vec::new() },
            round_starts: if several { starts.to_vec() } else { Vec::new() },
        }
    }

    /// The rounds to replay, each op on its CPU; `None` for a reproducer of one CPU.
    pub fn cpu_rounds(&self) -> Option<Vec<Vec<CpuBatch>>> {
        if self.cpus.is_empty() {
            return None;
        }
        let ends = self.round_starts.iter().skip(1).copied();
        let ends = ends.chain([self.ops.len()]);
        let rounds = self.round_starts.iter().zip(ends).map(|(&start, end)| {
            let mut round: Vec<CpuBatch> = Vec::new();
            for (&op, &cpu) in self.ops[start..end].iter().zip(&self.cpus[start..end]) {
                match round.iter_mut().find(|b| b.cpu == cpu) {
                    Some(batch) => batch.ops.push(op),
                    None => round.push(CpuBatch { cpu, ops: vec![op] }),
                }
            }
            round.sort_by_key(|b| b.cpu);
            round
        });
        Some(rounds.filter(|r| !r.is_empty()).collect())
    }

    /// The reproducer as a scenario: its header and its steps, expecting nothing: one batch, or
    /// with several CPUs one batch per round, each step after its CPU.
    pub fn scenario(&self) -> Scenario {
        let batches = match self.cpu_rounds() {
            Some(rounds) => rounds
                .into_iter()
                .map(|round| {
                    let steps = round.into_iter().flat_map(|b| {
                        b.ops
                            .into_iter()
                            .map(move |op| Step::new(op, None, "").on(b.cpu))
                    });
                    steps.collect()
                })
                .collect(),
            None => {
                let steps: Vec<Step> = self.ops.iter().map(|&op| Step::new(op, None, "")).collect();
                if steps.is_empty() {
                    Vec::new()
                } else {
                    vec![steps]
                }
            }
        };
        Scenario {
            header: self.header.clone(),
            batches,
        }
    }

    pub fn to_text(&self) -> String {
        self.scenario().to_text(TITLE)
    }

    /// The reproducer as a scenario to record as a regression test: in batches of the lengths
    /// `batches`, as `vmm replay` ran them (ops past them, if any, in one more batch), the op at
    /// `failed_at` (its index, and why) labelled as where the replay failed; the header keeps
    /// `failure` and `detail` and adds `setup` (the settings the results depend on).
    pub fn regression(
        &self,
        setup: &[(String, String)],
        failed_at: Option<(usize, &str)>,
        batches: &[usize],
    ) -> Scenario {
        let kept = self
            .header
            .iter()
            .filter(|(key, _)| key == "failure" || key == "detail");
        let mut steps = self.ops.iter().enumerate().map(|(i, &op)| {
            let label = match failed_at {
                Some((at, why)) if at == i => format!("replay failed here: {why}"),
                _ => String::new(),
            };
            Step::new(op, None, &label)
        });
        let mut cut: Vec<Vec<Step>> = batches
            .iter()
            .map(|&n| steps.by_ref().take(n).collect())
            .collect();
        cut.push(steps.collect());
        cut.retain(|batch| !batch.is_empty());
        Scenario {
            header: kept.chain(setup).cloned().collect(),
            batches: cut,
        }
    }

    /// Parses a reproducer, or any scenario (its expectations and batches are left out).
    pub fn parse(text: &str) -> Result<Reproducer, ParseError> {
        Scenario::parse(text).map(Reproducer::from)
    }
}

impl From<Scenario> for Reproducer {
    /// The scenario's ops; its batches become rounds if a step names a CPU other than 0.
    fn from(scenario: Scenario) -> Reproducer {
        let ops = scenario.steps().map(|s| s.op).collect();
        let cpus: Vec<u32> = scenario.steps().map(|s| s.cpu).collect();
        let starts: Vec<usize> = scenario
            .batches
            .iter()
            .scan(0, |at, batch| {
                let start = *at;
                *at += batch.len();
                Some(start)
            })
            .collect();
        Reproducer::with_rounds(scenario.header, ops, &cpus, &starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_scenario::self_check;

    /// A reproducer found with several CPUs keeps each op's CPU and its rounds, in text.
    #[test]
    fn a_reproducer_of_several_cpus_keeps_its_rounds() {
        let write = |space| Op::TouchWrite {
            space,
            addr: 0x1000,
            value: 1,
        };
        let ops = vec![
            Op::CreateSpace,
            Op::CreateSpace,
            write(1),
            write(2),
            write(1),
        ];
        let repro = Reproducer::with_rounds(Vec::new(), ops, &[0, 0, 0, 1, 1], &[0, 2]);
        let text = repro.to_text();
        assert!(text.contains("---\ntouch-write space=1"), "{text}");
        assert!(text.contains("@cpu1 touch-write space=2"), "{text}");
        let parsed = Reproducer::parse(&text).expect("parses");
        assert_eq!(parsed, repro);
        let rounds = parsed.cpu_rounds().expect("several CPUs");
        let shape: Vec<Vec<(u32, usize)>> = rounds
            .iter()
            .map(|r| r.iter().map(|b| (b.cpu, b.ops.len())).collect())
            .collect();
        assert_eq!(shape, [vec![(0, 2)], vec![(0, 1), (1, 2)]]);
        let one = Reproducer::with_rounds(Vec::new(), vec![Op::CreateSpace], &[0], &[0]);
        assert!(one.cpu_rounds().is_none() && !one.to_text().contains("@cpu"));
    }

    #[test]
    fn reproducer_round_trips_through_text() {
        let repro = Reproducer {
            header: vec![
                ("seed".into(), "7".into()),
                ("failure".into(), "x\ny".into()),
            ],
            ops: self_check().steps().map(|s| s.op).collect(),
            cpus: Vec::new(),
            round_starts: Vec::new(),
        };
        let parsed = Reproducer::parse(&repro.to_text()).expect("parses");
        assert_eq!(parsed.ops, repro.ops);
        assert_eq!(parsed.header_value("seed"), Some("7"));
        assert_eq!(parsed.header_value("failure"), Some("x; y"));
    }

    /// A reproducer as `vmm fuzz` wrote it before scenarios existed parses the same.
    #[test]
    fn a_saved_reproducer_still_parses() {
        let text = "# vmm fuzz reproducer: replay with `vmm replay FILE`\n\
            # failure: agreement checker: pte-within-region-access\n\
            # detail: space 1 [pte-within-region-access] at 0x68b552500000: page is writable\n\
            # seed: 1\n# job: 0\n# backend: sim\n# guest-features: bug-keep-writable\n\
            # kernel: embedded\n# memory-mib: 256\n# found-after-ops: 448\n\
            # original-length: 448\n\
            create-space\n\
            map-fixed space=1 addr=0x68b552500000 size=0x1000 access=0xb\n\
            touch-write space=1 addr=0x68b552500458 value=0xfaaddf24a1549511\n\
            protect space=1 addr=0x68b552500000 size=0x1000 access=0x9\n";
        let repro = Reproducer::parse(text).expect("parses");
        assert_eq!(repro.ops.len(), 4);
        assert_eq!(repro.header.len(), 10);
        assert_eq!(
            repro.header_value("failure"),
            Some("agreement checker: pte-within-region-access")
        );
        assert_eq!(
            repro.ops[3],
            Op::Protect {
                space: 1,
                addr: 0x68b5_5250_0000,
                size: 0x1000,
                access: 9
            }
        );
        assert_eq!(Reproducer::parse(&repro.to_text()), Ok(repro));
    }

    #[test]
    fn a_regression_scenario_keeps_the_replay_s_batches_and_labels_the_failure() {
        let repro = Reproducer {
            header: vec![
                ("failure".into(), "f".into()),
                ("seed".into(), "3".into()),
                ("detail".into(), "d".into()),
                ("backend".into(), "sim".into()),
            ],
            ops: vec![Op::CreateSpace, Op::DestroySpace { space: 1 }],
            cpus: Vec::new(),
            round_starts: Vec::new(),
        };
        let setup = [("seed".to_string(), "9".to_string())];
        let scenario = repro.regression(&setup, Some((1, "why")), &[1, 1]);
        assert_eq!(
            scenario.header,
            [
                ("failure".to_string(), "f".to_string()),
                ("detail".into(), "d".into()),
                ("seed".into(), "9".into()),
            ]
        );
        let lines: Vec<Vec<String>> = scenario
            .batches
            .iter()
            .map(|b| b.iter().map(Step::to_line).collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec!["create-space".to_string()],
                vec!["destroy-space space=1  # replay failed here: why".into()]
            ]
        );
        let batched = repro.regression(&setup, None, &[2]);
        assert_eq!(batched.batches.len(), 1);
        assert_eq!(batched.batches[0].len(), 2);
        // Ops past the plan's batches (none here) would go in one more batch.
        assert_eq!(repro.regression(&setup, None, &[1]).batches.len(), 2);
    }
}
