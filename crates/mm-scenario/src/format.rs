//! The scenario text format: header lines, comments, one step per line (an operation, its
//! expected result after `=>`, a label after `#`) and `---` between batches; one parser, one
//! printer, and errors that name the line.

use crate::expect::{Expect, ExpectError};
use crate::header::{self, HeaderError};
use crate::ops::{op_from_line, op_to_line, OpError};
use shared_mm::abi::Op;
use shared_mm::smp::MAX_CPUS;
use std::fmt;
use std::fmt::Write as _;

/// The line that ends one batch and starts the next.
pub const BATCH_SEPARATOR: &str = "---";

/// What starts a step that names its CPU (`@cpu1 touch-read ...`); a step without it runs on
/// CPU 0. With several CPUs a batch is a round: each CPU runs its steps of the batch in order,
/// at the same time as the others run theirs.
pub const CPU_PREFIX: &str = "@cpu";

/// The same as [`CPU_PREFIX`], written among a step's fields (`touch-read cpu=1 ...`: the CPU
/// that makes a touch's access). The printer writes the prefix.
pub const CPU_FIELD: &str = "cpu=";

/// One operation, what its result must be (`None`: anything, as in a reproducer), and a label
/// that says what it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub expect: Option<Expect>,
    /// Empty for none.
    pub label: String,
    /// Where the step is in its file (1-based), 0 for a step made in code.
    pub line: usize,
    /// The CPU that runs the step (`@cpuN` before it; 0 without).
    pub cpu: u32,
}

impl Step {
    /// A step made in code, with no line.
    pub fn new(op: Op, expect: Option<Expect>, label: &str) -> Step {
        Step {
            op,
            expect,
            label: label.into(),
            line: 0,
            cpu: 0,
        }
    }

    /// The same step, run by `cpu`.
    pub fn on(self, cpu: u32) -> Step {
        Step { cpu, ..self }
    }

    /// The step as one line of the format.
    pub fn to_line(&self) -> String {
        let mut line = match self.cpu {
            0 => String::new(),
            cpu => format!("{CPU_PREFIX}{cpu} "),
        };
        line.push_str(&op_to_line(&self.op));
        if let Some(expect) = &self.expect {
            let _ = write!(line, " => {expect}");
        }
        if !self.label.is_empty() {
            let _ = write!(line, "  # {}", self.label);
        }
        line
    }
}

/// A scenario: `# key: value` header lines, then batches of steps. The guest runs each batch
/// in one hypercall; a checked run checks the page tables after each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scenario {
    /// Header lines, in order.
    pub header: Vec<(String, String)>,
    /// Never an empty batch.
    pub batches: Vec<Vec<Step>>,
}

/// What is wrong with one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    Op(OpError),
    Expect(ExpectError),
    Header(HeaderError),
    /// `@cpuN` or `cpu=N` with no CPU number from 0 to [`MAX_CPUS`] - 1.
    Cpu(String),
    /// The step names its CPU twice (`@cpuN` and `cpu=M`, or `cpu=` twice).
    CpuTwice,
}

/// A line that does not parse, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub error: LineError,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.error {
            LineError::Op(e) => write!(f, "{e}"),
            LineError::Expect(e) => write!(f, "{e}"),
            LineError::Header(e) => write!(f, "{e}"),
            LineError::Cpu(word) => write!(
                f,
                "{word:?} does not name a CPU: {CPU_PREFIX}0 to {CPU_PREFIX}{}",
                MAX_CPUS - 1
            ),
            LineError::CpuTwice => write!(
                f,
                "the step names its CPU twice: give one {CPU_PREFIX}N or one {CPU_FIELD}N"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// A `#` line: a header line when it reads `# key: value` with a header key, else a comment.
fn header_line(comment: &str) -> Option<(&str, &str)> {
    let (key, value) = comment.split_once(':')?;
    let key = key.trim();
    header::is_key(key).then(|| (key, value.trim()))
}

/// The CPU number `digits` of `word` (`@cpuN` or `cpu=N`).
fn cpu_number(digits: &str, word: &str) -> Result<u32, LineError> {
    digits
        .parse::<u32>()
        .ok()
        .filter(|cpu| *cpu < MAX_CPUS)
        .ok_or_else(|| LineError::Cpu(word.into()))
}

/// The CPU a step line names (`@cpuN ` before its op), and the rest of the line.
fn step_cpu(text: &str) -> Result<(Option<u32>, &str), LineError> {
    if !text.starts_with(CPU_PREFIX) {
        return Ok((None, text));
    }
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let cpu = cpu_number(&word[CPU_PREFIX.len()..], word)?;
    Ok((Some(cpu), rest.trim_start()))
}

/// The CPU an op's fields name (`cpu=N`), and the op without that field.
fn field_cpu(op: &str) -> Result<(Option<u32>, String), LineError> {
    let mut cpu = None;
    let mut rest = Vec::new();
    for word in op.split_whitespace() {
        match word.strip_prefix(CPU_FIELD) {
            Some(_) if cpu.is_some() => return Err(LineError::CpuTwice),
            Some(digits) => cpu = Some(cpu_number(digits, word)?),
            None => rest.push(word),
        }
    }
    Ok((cpu, rest.join(" ")))
}

/// A step line: `[@cpuN] op [cpu=N] [=> expect] [# label]`.
fn step(text: &str, line: usize) -> Result<Step, LineError> {
    let (prefix, text) = step_cpu(text)?;
    let (body, label) = text.split_once('#').unwrap_or((text, ""));
    let (op, expect) = match body.split_once("=>") {
        Some((op, expect)) => (op, Some(Expect::parse(expect).map_err(LineError::Expect)?)),
        None => (body, None),
    };
    let (field, op) = field_cpu(op)?;
    let cpu = match (prefix, field) {
        (Some(_), Some(_)) => return Err(LineError::CpuTwice),
        (cpu, None) | (None, cpu) => cpu.unwrap_or(0),
    };
    Ok(Step {
        op: op_from_line(&op).map_err(LineError::Op)?,
        expect,
        label: label.trim().into(),
        line,
        cpu,
    })
}

impl Scenario {
    /// Every step, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.batches.iter().flatten()
    }

    /// Parses a scenario (a reproducer is one without expectations or separators).
    pub fn parse(text: &str) -> Result<Scenario, ParseError> {
        let mut scenario = Scenario::default();
        let mut batch = Vec::new();
        // The line each known header key was first given on.
        let mut known: Vec<(String, usize)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |error| ParseError { line, error };
            let text = raw.trim();
            if text.is_empty() {
                continue;
            }
            if text == BATCH_SEPARATOR {
                if !batch.is_empty() {
                    scenario.batches.push(std::mem::take(&mut batch));
                }
                continue;
            }
            let Some(comment) = text.strip_prefix('#') else {
                batch.push(step(text, line).map_err(fail)?);
                continue;
            };
            let Some((key, value)) = header_line(comment) else {
                continue;
            };
            header::check(key, value).map_err(|e| fail(LineError::Header(e)))?;
            if header::is_known(key) {
                if let Some((_, first_line)) = known.iter().find(|(k, _)| k == key) {
                    let twice = HeaderError::Twice {
                        key: key.into(),
                        first_line: *first_line,
                    };
                    return Err(fail(LineError::Header(twice)));
                }
                known.push((key.into(), line));
            }
            scenario.header.push((key.into(), value.into()));
        }
        if !batch.is_empty() {
            scenario.batches.push(batch);
        }
        Ok(scenario)
    }

    /// The scenario as text, after a `# title` comment: the header, then each batch's steps,
    /// with [`BATCH_SEPARATOR`] between batches. [`Scenario::parse`] reads it back unchanged
    /// (but for line numbers, and line breaks in header values, which become `; `).
    pub fn to_text(&self, title: &str) -> String {
        let mut text = format!("# {title}\n");
        for (key, value) in &self.header {
            let one_line: Vec<&str> = value.lines().map(str::trim).collect();
            let _ = writeln!(text, "# {key}: {}", one_line.join("; "));
        }
        for (i, batch) in self.batches.iter().enumerate() {
            if i > 0 {
                let _ = writeln!(text, "{BATCH_SEPARATOR}");
            }
            for step in batch {
                let _ = writeln!(text, "{}", step.to_line());
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::{FaultKind, Status};

    const EXAMPLE: &str = "\
# a user's scenario
# seed: 7

# a comment, not a header: it has spaces before its colon
create-space => value 1  # create space 1
map-fixed space=1 addr=0x400000 size=0x2000 access=0xb => at 0x400000
---
touch-write space=1 addr=0x400000 value=5 => value 5  # write => read back
touch-read space=1 addr=0x402000 => fault segv-no-region at 0x402000
unmap space=1 addr=0x400000 size=0x2000
---
---
map-fixed space=1 addr=0x400000 size=0x1000 access=0x100 => error bad-access
";

    fn without_lines(mut scenario: Scenario) -> Scenario {
        for step in scenario.batches.iter_mut().flatten() {
            step.line = 0;
        }
        scenario
    }

    #[test]
    fn steps_labels_headers_and_batches_parse_with_their_lines() {
        let s = Scenario::parse(EXAMPLE).expect("parses");
        assert_eq!(s.header, [("seed".to_string(), "7".to_string())]);
        let shape: Vec<usize> = s.batches.iter().map(Vec::len).collect();
        assert_eq!(shape, [2, 3, 1], "empty batches are dropped");
        let lines: Vec<usize> = s.steps().map(|s| s.line).collect();
        assert_eq!(lines, [5, 6, 8, 9, 10, 13]);
        let write = &s.batches[1][0];
        assert_eq!(write.label, "write => read back");
        assert_eq!(write.expect, Some(Expect::Value(5)));
        assert_eq!(s.batches[0][1].label, "");
        assert_eq!(
            s.batches[1][1].expect,
            Some(Expect::Fault {
                kind: FaultKind::SegvNoRegion,
                at: Some(0x40_2000)
            })
        );
        assert_eq!(s.batches[1][2].expect, None, "no expectation: anything");
        assert_eq!(
            s.batches[2][0].expect,
            Some(Expect::Error(Status::BadAccess))
        );
    }

    #[test]
    fn print_then_parse_gives_the_same_scenario() {
        let parsed = Scenario::parse(EXAMPLE).expect("parses");
        let text = parsed.to_text("printed");
        let again = Scenario::parse(&text).expect("the printed text parses");
        assert_eq!(without_lines(again.clone()), without_lines(parsed));
        assert_eq!(again.to_text("printed"), text, "printing is a fixed point");
        // A scenario made in code, with every expectation kind and none.
        let op = Op::TouchRead {
            space: 3,
            addr: 0x1000,
        };
        let expects = [
            None,
            Some(Expect::Ok),
            Some(Expect::Value(u64::MAX)),
            Some(Expect::At(0x7fff_ffff_e000)),
            Some(Expect::AlignedTo(1 << 30)),
            Some(Expect::Error(Status::NoSuchSpace)),
            Some(Expect::Fault {
                kind: FaultKind::GeneralProtection,
                at: None,
            }),
        ];
        let made = Scenario {
            header: vec![
                ("memory-mib".into(), "64".into()),
                ("note".into(), "".into()),
            ],
            batches: expects
                .iter()
                .map(|&e| vec![Step::new(op, e, "a label"), Step::new(op, e, "")])
                .collect(),
        };
        let back = Scenario::parse(&made.to_text("made")).expect("parses");
        assert_eq!(without_lines(back), made);
    }

    #[test]
    fn errors_name_the_line_and_what_is_wrong() {
        let err = |text: &str| Scenario::parse(text).unwrap_err().to_string();
        assert_eq!(
            err("create-space\n\n# c\nunmap space=1 addr=0x1000\n"),
            "line 4: unmap needs size="
        );
        assert_eq!(
            err("create-space => value\n"),
            "line 1: => value needs a number"
        );
        assert_eq!(err("=> ok\n"), "line 1: no operation");
        assert_eq!(
            err("create-space\n# seed: abc\n"),
            "line 2: header seed: \"abc\" is not a number"
        );
        assert_eq!(
            err("# backend: qemu\n"),
            "line 1: header backend: \"qemu\" is not kvm or sim"
        );
        assert!(err("# guest-features: bug-stale-pte,bug-nope\n")
            .starts_with("line 1: header guest-features: unknown feature \"bug-nope\""));
        assert_eq!(
            err("# seed: 1\ncreate-space\n# seed: 2\n"),
            "line 3: header seed is given twice (first on line 1)"
        );
        assert_eq!(
            err("touch-read space=0x1_0000_0000 addr=0\n"),
            "line 1: space=0x100000000 does not fit in 32 bits"
        );
    }

    #[test]
    fn a_step_may_name_its_cpu_and_prints_it_back() {
        let s = Scenario::parse(
            "create-space\n@cpu1 touch-read space=1 addr=0x1000 => value 0  # on cpu 1\n\
             @cpu0 unmap space=1 addr=0x1000 size=0x1000\n",
        )
        .expect("parses");
        let cpus: Vec<u32> = s.steps().map(|s| s.cpu).collect();
        assert_eq!(cpus, [0, 1, 0]);
        assert_eq!(
            s.batches[0][1].to_line(),
            "@cpu1 touch-read space=1 addr=0x1000 => value 0x0  # on cpu 1"
        );
        let back = Scenario::parse(&s.to_text("again")).expect("parses");
        assert_eq!(without_lines(back), without_lines(s));
        let err = |text: &str| Scenario::parse(text).unwrap_err().to_string();
        let field = Scenario::parse("touch-read cpu=1 space=1 addr=0x1000 => value 0\n");
        let field = field.expect("cpu= is the prefix's other spelling");
        assert_eq!(field.batches[0][0].cpu, 1);
        assert_eq!(
            field.batches[0][0].to_line(),
            "@cpu1 touch-read space=1 addr=0x1000 => value 0x0"
        );
        for twice in [
            "@cpu1 touch-read cpu=1 space=1 addr=0\n",
            "touch-read cpu=1 space=1 cpu=0 addr=0\n",
        ] {
            assert_eq!(
                err(twice),
                "line 1: the step names its CPU twice: give one @cpuN or one cpu=N"
            );
        }
        assert_eq!(
            err("touch-read cpu=9 space=1 addr=0\n"),
            "line 1: \"cpu=9\" does not name a CPU: @cpu0 to @cpu7"
        );
        for bad in [
            "@cpu8 create-space\n",
            "@cpu create-space\n",
            "@cpux create-space\n",
        ] {
            assert!(
                err(bad).starts_with("line 1: \"@cpu") && err(bad).ends_with("@cpu0 to @cpu7"),
                "{bad}: {}",
                err(bad)
            );
        }
    }

    #[test]
    fn free_text_headers_may_repeat_and_anything_else_is_a_comment() {
        let s = Scenario::parse(
            "# note: one\n# note: two\n# Note: not a header\n# e.g.: neither\n#: nor\n",
        )
        .expect("parses");
        assert_eq!(
            s.header,
            [("note".into(), "one".into()), ("note".into(), "two".into())]
        );
        assert!(s.batches.is_empty());
        assert_eq!(
            Scenario::parse("# guest-features:\n")
                .expect("parses")
                .header,
            [("guest-features".into(), "".into())],
            "an empty feature list says: no seeded bugs"
        );
    }
}
