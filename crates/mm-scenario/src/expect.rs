//! What an operation's result must be (`ok`, `value 0x5`, `at 0x400000`, `aligned 0x1000`,
//! `error overlap`, `fault segv-access [at ADDR]`): its text, its check, and what a result says.

use crate::ops::number;
use bounded_io::excerpt::excerpt;
use shared_mm::abi::{FaultKind, Op, OpResult, Status};
use std::fmt;

/// What a step's result must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Ok,
    /// Ok, and `value` equals this.
    Value(u64),
    /// Ok, and the placed address equals this.
    At(u64),
    /// Ok, and the placed address is a multiple of this (a power of two).
    AlignedTo(u64),
    /// This error status (never `Ok` or `Faulted`).
    Error(Status),
    /// A fault of this kind, at this address if one is given.
    Fault {
        kind: FaultKind,
        at: Option<u64>,
    },
}

/// Why an expectation's text does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectError {
    /// Nothing after `=>`.
    Empty,
    UnknownKind(String),
    /// `value`, `at`, `aligned` or `fault ... at` without its number.
    MissingNumber(&'static str),
    NotANumber {
        kind: &'static str,
        text: String,
    },
    NotPowerOfTwo(u64),
    UnknownStatus(String),
    UnknownFault(String),
    /// Words after a complete expectation.
    Trailing(String),
}

impl fmt::Display for ExpectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectError::Empty => f.write_str("nothing after =>"),
            ExpectError::UnknownKind(word) => write!(
                f,
                "unknown expectation {:?} (expected ok, value, at, aligned, error or fault)",
                excerpt(word)
            ),
            ExpectError::MissingNumber(kind) => write!(f, "=> {kind} needs a number"),
            ExpectError::NotANumber { kind, text } => {
                let text = excerpt(text);
                write!(f, "=> {kind} {text}: {text:?} is not a number")
            }
            ExpectError::NotPowerOfTwo(align) => {
                write!(f, "=> aligned {align:#x}: not a power of two")
            }
            ExpectError::UnknownStatus(name) => write!(
                f,
                "=> error {}: unknown status (expected one of {})",
                excerpt(name),
                names(&ERROR_STATUSES, status_name)
            ),
            ExpectError::UnknownFault(name) => write!(
                f,
                "=> fault {}: unknown fault (expected one of {})",
                excerpt(name),
                names(&FAULT_KINDS, fault_name)
            ),
            ExpectError::Trailing(text) => {
                write!(f, "unexpected {:?} after the expectation", excerpt(text))
            }
        }
    }
}

impl std::error::Error for ExpectError {}

/// Every status an `error` expectation can name.
const ERROR_STATUSES: [Status; 11] = [
    Status::InvalidArgument,
    Status::BadAlignment,
    Status::Overflow,
    Status::OutOfRange,
    Status::Overlap,
    Status::NoSpace,
    Status::OutOfMemory,
    Status::NoSuchSpace,
    Status::NotMapped,
    Status::BadAccess,
    Status::BadOp,
];

/// Every fault kind, `none` last: a fault the guest reported without a kind.
const FAULT_KINDS: [FaultKind; 5] = [
    FaultKind::SegvNoRegion,
    FaultKind::SegvAccess,
    FaultKind::GeneralProtection,
    FaultKind::InvalidOpcode,
    FaultKind::None,
];

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::InvalidArgument => "invalid-argument",
        Status::BadAlignment => "bad-alignment",
        Status::Overflow => "overflow",
        Status::OutOfRange => "out-of-range",
        Status::Overlap => "overlap",
        Status::NoSpace => "no-space",
        Status::OutOfMemory => "out-of-memory",
        Status::NoSuchSpace => "no-such-space",
        Status::NotMapped => "not-mapped",
        Status::BadAccess => "bad-access",
        Status::BadOp => "bad-op",
        Status::Faulted => "faulted",
    }
}

fn fault_name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::SegvNoRegion => "segv-no-region",
        FaultKind::SegvAccess => "segv-access",
        FaultKind::GeneralProtection => "general-protection",
        FaultKind::InvalidOpcode => "invalid-opcode",
        FaultKind::None => "none",
    }
}

fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> String {
    all.iter().map(|&t| name(t)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Expect::Ok => f.write_str("ok"),
            Expect::Value(v) => write!(f, "value {v:#x}"),
            Expect::At(a) => write!(f, "at {a:#x}"),
            Expect::AlignedTo(a) => write!(f, "aligned {a:#x}"),
            Expect::Error(status) => write!(f, "error {}", status_name(status)),
            Expect::Fault { kind, at: None } => write!(f, "fault {}", fault_name(kind)),
            Expect::Fault { kind, at: Some(a) } => {
                write!(f, "fault {} at {a:#x}", fault_name(kind))
            }
        }
    }
}

/// The next word as the number of a `kind` expectation.
fn number_after<'t>(
    words: &mut impl Iterator<Item = &'t str>,
    kind: &'static str,
) -> Result<u64, ExpectError> {
    let text = words.next().ok_or(ExpectError::MissingNumber(kind))?;
    number(text).ok_or_else(|| ExpectError::NotANumber {
        kind,
        text: text.into(),
    })
}

impl Expect {
    /// Parses the text after `=>`.
    pub fn parse(text: &str) -> Result<Expect, ExpectError> {
        let mut words = text.split_whitespace();
        let expect = match words.next().ok_or(ExpectError::Empty)? {
            "ok" => Expect::Ok,
            "value" => Expect::Value(number_after(&mut words, "value")?),
            "at" => Expect::At(number_after(&mut words, "at")?),
            "aligned" => match number_after(&mut words, "aligned")? {
                align if align.is_power_of_two() => Expect::AlignedTo(align),
                align => return Err(ExpectError::NotPowerOfTwo(align)),
            },
            "error" => {
                let name = words.next().unwrap_or_default();
                let status = ERROR_STATUSES
                    .into_iter()
                    .find(|&s| status_name(s) == name)
                    .ok_or_else(|| ExpectError::UnknownStatus(name.into()))?;
                Expect::Error(status)
            }
            "fault" => {
                let name = words.next().unwrap_or_default();
                let kind = FAULT_KINDS
                    .into_iter()
                    .find(|&k| fault_name(k) == name)
                    .ok_or_else(|| ExpectError::UnknownFault(name.into()))?;
                let at = match words.next() {
                    None => None,
                    Some("at") => Some(number_after(&mut words, "fault ... at")?),
                    Some(other) => return Err(ExpectError::Trailing(other.into())),
                };
                Expect::Fault { kind, at }
            }
            other => return Err(ExpectError::UnknownKind(other.into())),
        };
        match words.next() {
            Some(extra) => Err(ExpectError::Trailing(extra.into())),
            None => Ok(expect),
        }
    }

    /// Whether `got` satisfies this expectation.
    pub fn holds(&self, got: &OpResult) -> bool {
        let ok = got.status == Status::Ok;
        match *self {
            Expect::Ok => ok,
            Expect::Value(v) => ok && got.value == v,
            Expect::At(a) => ok && got.addr == a,
            Expect::AlignedTo(a) => ok && got.addr.is_multiple_of(a),
            Expect::Error(s) => got.status == s,
            Expect::Fault { kind, at } => {
                got.status == Status::Faulted
                    && got.fault == kind
                    && at.is_none_or(|a| a == got.addr)
            }
        }
    }

    /// The most precise expectation `got` satisfies, in the words of `op`'s kind: a placement's
    /// address, the value of a touch, a space creation or a snapshot, a fault with its address.
    pub fn observed(op: &Op, got: &OpResult) -> Expect {
        match got.status {
            Status::Ok => match op {
                Op::MapAnywhere { .. } | Op::MapFixed { .. } | Op::MapRandomized { .. } => {
                    Expect::At(got.addr)
                }
                Op::CreateSpace
                | Op::Fork { .. }
                | Op::TouchRead { .. }
                | Op::TouchWrite { .. }
                | Op::Snapshot { .. }
                | Op::CheckTree { .. } => Expect::Value(got.value),
                _ => Expect::Ok,
            },
            Status::Faulted => Expect::Fault {
                kind: got.fault,
                at: Some(got.addr),
            },
            status => Expect::Error(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(addr: u64, value: u64) -> OpResult {
        OpResult {
            addr,
            value,
            ..OpResult::ok()
        }
    }

    fn fault(kind: FaultKind, addr: u64) -> OpResult {
        OpResult {
            status: Status::Faulted,
            fault: kind,
            addr,
            value: 0,
        }
    }

    #[test]
    fn every_kind_parses_prints_back_and_checks_its_field() {
        let segv = FaultKind::SegvAccess;
        let cases = [
            ("ok", Expect::Ok, ok(1, 2), OpResult::error(Status::NoSpace)),
            ("value 0x5", Expect::Value(5), ok(0, 5), ok(0, 6)),
            (
                "at 0x1000",
                Expect::At(0x1000),
                ok(0x1000, 0),
                ok(0x2000, 0),
            ),
            (
                "aligned 0x10000",
                Expect::AlignedTo(0x10000),
                ok(0x30000, 0),
                ok(0x11000, 0),
            ),
            (
                "error no-space",
                Expect::Error(Status::NoSpace),
                OpResult::error(Status::NoSpace),
                OpResult::error(Status::Overlap),
            ),
            (
                "fault segv-access",
                Expect::Fault {
                    kind: segv,
                    at: None,
                },
                fault(segv, 0x7000),
                fault(FaultKind::SegvNoRegion, 0x7000),
            ),
            (
                "fault segv-access at 0x7000",
                Expect::Fault {
                    kind: segv,
                    at: Some(0x7000),
                },
                fault(segv, 0x7000),
                fault(segv, 0x8000),
            ),
        ];
        for (text, expect, holds, breaks) in cases {
            assert_eq!(Expect::parse(text), Ok(expect), "{text}");
            assert_eq!(expect.to_string(), text);
            assert!(expect.holds(&holds), "{text} on {holds:?}");
            assert!(!expect.holds(&breaks), "{text} on {breaks:?}");
        }
    }

    #[test]
    fn every_status_and_fault_name_round_trips() {
        for status in ERROR_STATUSES {
            let e = Expect::Error(status);
            assert_eq!(Expect::parse(&e.to_string()), Ok(e));
        }
        for kind in FAULT_KINDS {
            let e = Expect::Fault {
                kind,
                at: Some(0x1000),
            };
            assert_eq!(Expect::parse(&e.to_string()), Ok(e));
        }
        assert_eq!(Expect::parse("  value   12 "), Ok(Expect::Value(12)));
    }

    #[test]
    fn bad_expectations_say_what_is_wrong() {
        let err = |text: &str| Expect::parse(text).unwrap_err().to_string();
        assert_eq!(err(""), "nothing after =>");
        assert!(err("okay").starts_with("unknown expectation \"okay\""));
        assert_eq!(err("value"), "=> value needs a number");
        assert_eq!(err("at 0xzz"), "=> at 0xzz: \"0xzz\" is not a number");
        assert_eq!(
            err("aligned 0x3000"),
            "=> aligned 0x3000: not a power of two"
        );
        assert!(err("error nope").contains("unknown status (expected one of invalid-argument,"));
        assert!(err("error ok").contains("unknown status"));
        assert!(err("fault segv").contains("unknown fault (expected one of segv-no-region,"));
        assert_eq!(err("ok 5"), "unexpected \"5\" after the expectation");
        assert_eq!(
            err("fault segv-access near 0x1"),
            "unexpected \"near\" after the expectation"
        );
    }

    #[test]
    fn an_observed_result_is_the_most_precise_expectation_it_meets() {
        let map = Op::MapAnywhere {
            space: 1,
            size: 0x1000,
            align: 0x1000,
            access: 0xb,
        };
        let read = Op::TouchRead { space: 1, addr: 0 };
        let unmap = Op::Unmap {
            space: 1,
            addr: 0,
            size: 0x1000,
        };
        let cases = [
            (map, ok(0x5000, 0), Expect::At(0x5000)),
            (read, ok(0, 7), Expect::Value(7)),
            (Op::CreateSpace, ok(0, 2), Expect::Value(2)),
            (unmap, ok(0, 0), Expect::Ok),
            (
                read,
                fault(FaultKind::SegvNoRegion, 0x10),
                Expect::Fault {
                    kind: FaultKind::SegvNoRegion,
                    at: Some(0x10),
                },
            ),
            (
                unmap,
                OpResult::error(Status::OutOfRange),
                Expect::Error(Status::OutOfRange),
            ),
        ];
        for (op, got, expect) in cases {
            assert_eq!(Expect::observed(&op, &got), expect);
            assert!(expect.holds(&got));
        }
    }
}
