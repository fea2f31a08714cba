//! Fuzz reproducers: scenarios without expectations (`# key: value` header lines, one operation
//! per line), written by `vmm fuzz` and run again by `vmm replay`.

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
}

impl Reproducer {
    pub fn header_value(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The reproducer as a scenario: its header and one batch of steps that expect nothing.
    pub fn scenario(&self) -> Scenario {
        let steps: Vec<Step> = self.ops.iter().map(|&op| Step::new(op, None, "")).collect();
        Scenario {
            header: self.header.clone(),
            batches: if steps.is_empty() {
                Vec::new()
            } else {
                vec![steps]
            },
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
    fn from(scenario: Scenario) -> Reproducer {
        let ops = scenario.steps().map(|s| s.op).collect();
        Reproducer {
            header: scenario.header,
            ops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_scenario::self_check;

    #[test]
    fn reproducer_round_trips_through_text() {
        let repro = Reproducer {
            header: vec![
                ("seed".into(), "7".into()),
                ("failure".into(), "x\ny".into()),
            ],
            ops: self_check().steps().map(|s| s.op).collect(),
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
