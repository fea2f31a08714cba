//! One MM operation as text: `map-fixed space=1 addr=0x400000 size=0x2000 access=0xb`, printed
//! and parsed, with the numbers of the format and an error that names the field.

use bounded_io::excerpt::excerpt;
use shared_mm::abi::access_bits::SHARED;
use shared_mm::abi::Op;
use std::collections::BTreeMap;
use std::fmt;

/// Why an operation's text does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// No operation at all (for example a line that is only an expectation).
    Empty,
    UnknownOp(String),
    /// A word after the operation's name is not `field=value`.
    NotKeyValue(String),
    NotANumber {
        field: String,
        text: String,
    },
    /// A 32-bit field (`space`, `access`) got a larger value.
    TooLarge {
        field: String,
        value: u64,
    },
    Twice {
        field: String,
    },
    Missing {
        op: String,
        field: &'static str,
    },
    Extra {
        op: String,
        field: String,
    },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Empty => f.write_str("no operation"),
            OpError::UnknownOp(name) => write!(f, "unknown operation {:?}", excerpt(name)),
            OpError::NotKeyValue(word) => write!(f, "{:?} is not field=value", excerpt(word)),
            OpError::NotANumber { field, text } => {
                write!(f, "{}={} is not a number", excerpt(field), excerpt(text))
            }
            OpError::TooLarge { field, value } => {
                write!(f, "{}={value:#x} does not fit in 32 bits", excerpt(field))
            }
            OpError::Twice { field } => write!(f, "{} is given twice", excerpt(field)),
            OpError::Missing { op, field } => write!(f, "{op} needs {field}="),
            OpError::Extra { op, field } => write!(f, "{op} takes no {}=", excerpt(field)),
        }
    }
}

impl std::error::Error for OpError {}

/// A number as the format writes it: decimal, or hexadecimal after `0x`; `_` may group digits.
pub fn number(text: &str) -> Option<u64> {
    let digits = |t: &str| t.replace('_', "");
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&digits(hex), 16).ok(),
        None => digits(text).parse().ok(),
    }
}

/// The operation's name in the format.
pub fn op_name(op: &Op) -> &'static str {
    op.name()
}

/// One operation as text.
pub fn op_to_line(op: &Op) -> String {
    let name = op_name(op);
    match *op {
        Op::CreateSpace => name.into(),
        Op::DestroySpace { space }
        | Op::Fork { space }
        | Op::Snapshot { space }
        | Op::Frames { space }
        | Op::CheckTree { space } => format!("{name} space={space}"),
        // `map-shared` is a fixed map with the SHARED bit, which its name already says.
        Op::MapFixed {
            space,
            addr,
            size,
            access,
        } if access & SHARED != 0 => format!(
            "{name} space={space} addr={addr:#x} size={size:#x} access={:#x}",
            access & !SHARED
        ),
        Op::MapAnywhere {
            space,
            size,
            align,
            access,
        }
        | Op::MapRandomized {
            space,
            size,
            align,
            access,
        } => format!("{name} space={space} size={size:#x} align={align:#x} access={access:#x}"),
        Op::MapFixed {
            space,
            addr,
            size,
            access,
        }
        | Op::Protect {
            space,
            addr,
            size,
            access,
        } => format!("{name} space={space} addr={addr:#x} size={size:#x} access={access:#x}"),
        Op::Unmap { space, addr, size } | Op::Populate { space, addr, size } => {
            format!("{name} space={space} addr={addr:#x} size={size:#x}")
        }
        Op::TouchRead { space, addr }
        | Op::TouchExec { space, addr }
        | Op::KernelRead { space, addr } => format!("{name} space={space} addr={addr:#x}"),
        Op::TouchWrite { space, addr, value } | Op::KernelWrite { space, addr, value } => {
            format!("{name} space={space} addr={addr:#x} value={value:#x}")
        }
    }
}

/// The `field=value` words of an operation, taken one by one.
struct Fields<'t> {
    op: &'t str,
    values: BTreeMap<&'t str, u64>,
}

impl Fields<'_> {
    fn u64(&mut self, field: &'static str) -> Result<u64, OpError> {
        self.values.remove(field).ok_or_else(|| OpError::Missing {
            op: self.op.into(),
            field,
        })
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, OpError> {
        let value = self.u64(field)?;
        u32::try_from(value).map_err(|_| OpError::TooLarge {
            field: field.into(),
            value,
        })
    }

    /// Refuses a field the operation does not take.
    fn done(self, op: Op) -> Result<Op, OpError> {
        match self.values.into_keys().next() {
            Some(extra) => Err(OpError::Extra {
                op: self.op.into(),
                field: extra.into(),
            }),
            None => Ok(op),
        }
    }
}

fn fields(text: &str) -> Result<Fields<'_>, OpError> {
    let mut words = text.split_whitespace();
    let op = words.next().ok_or(OpError::Empty)?;
    let mut values = BTreeMap::new();
    for word in words {
        let (field, text) = word
            .split_once('=')
            .ok_or_else(|| OpError::NotKeyValue(word.into()))?;
        let value = number(text).ok_or_else(|| OpError::NotANumber {
            field: field.into(),
            text: text.into(),
        })?;
        if values.insert(field, value).is_some() {
            return Err(OpError::Twice {
                field: field.into(),
            });
        }
    }
    Ok(Fields { op, values })
}

/// Parses one operation; the error names the field that is wrong.
pub fn op_from_line(text: &str) -> Result<Op, OpError> {
    let mut f = fields(text)?;
    let op = match f.op {
        "create-space" => Op::CreateSpace,
        "destroy-space" => Op::DestroySpace {
            space: f.u32("space")?,
        },
        "fork" => Op::Fork {
            space: f.u32("space")?,
        },
        "map-shared" => Op::MapFixed {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            size: f.u64("size")?,
            access: f.u32("access")? | SHARED,
        },
        "map-anywhere" => Op::MapAnywhere {
            space: f.u32("space")?,
            size: f.u64("size")?,
            align: f.u64("align")?,
            access: f.u32("access")?,
        },
        "map-fixed" => Op::MapFixed {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            size: f.u64("size")?,
            access: f.u32("access")?,
        },
        "map-randomized" => Op::MapRandomized {
            space: f.u32("space")?,
            size: f.u64("size")?,
            align: f.u64("align")?,
            access: f.u32("access")?,
        },
        "unmap" => Op::Unmap {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            size: f.u64("size")?,
        },
        "protect" => Op::Protect {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            size: f.u64("size")?,
            access: f.u32("access")?,
        },
        "touch-read" => Op::TouchRead {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
        },
        "touch-write" => Op::TouchWrite {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            value: f.u64("value")?,
        },
        "touch-exec" => Op::TouchExec {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
        },
        "snapshot" => Op::Snapshot {
            space: f.u32("space")?,
        },
        "frames" => Op::Frames {
            space: f.u32("space")?,
        },
        "check-tree" => Op::CheckTree {
            space: f.u32("space")?,
        },
        "kernel-read" => Op::KernelRead {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
        },
        "populate" => Op::Populate {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            size: f.u64("size")?,
        },
        "kernel-write" => Op::KernelWrite {
            space: f.u32("space")?,
            addr: f.u64("addr")?,
            value: f.u64("value")?,
        },
        other => return Err(OpError::UnknownOp(other.into())),
    };
    f.done(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::self_check;

    #[test]
    fn every_op_round_trips_through_text() {
        for step in self_check().steps() {
            let line = op_to_line(&step.op);
            assert_eq!(op_from_line(&line), Ok(step.op), "{line}");
        }
    }

    #[test]
    fn numbers_are_decimal_or_hex_with_optional_underscores() {
        assert_eq!(number("4096"), Some(4096));
        assert_eq!(number("0x1000"), Some(4096));
        assert_eq!(number("0x40_0000"), Some(0x40_0000));
        assert_eq!(number("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(number("0x1_0000_0000_0000_0000"), None);
        assert_eq!(number("0x"), None);
        assert_eq!(number("-1"), None);
        assert_eq!(number("abc"), None);
    }

    #[test]
    fn each_bad_operation_names_its_field() {
        let err = |text: &str| op_from_line(text).unwrap_err().to_string();
        assert_eq!(
            err("map-fixed space=1 addr=zz size=0x1000 access=3"),
            "addr=zz is not a number"
        );
        assert_eq!(err("unmap space=1 addr=0x1000"), "unmap needs size=");
        assert_eq!(
            err("unmap space=1 addr=0x1000 size=0x1000 oops=1"),
            "unmap takes no oops="
        );
        assert_eq!(err("frobnicate"), "unknown operation \"frobnicate\"");
        assert_eq!(err("snapshot space"), "\"space\" is not field=value");
        assert_eq!(
            err("touch-read space=1 space=2 addr=0"),
            "space is given twice"
        );
        assert_eq!(err(""), "no operation");
    }

    #[test]
    fn a_32_bit_field_out_of_range_is_refused_not_cut() {
        assert_eq!(
            op_from_line("destroy-space space=0x100000001"),
            Err(OpError::TooLarge {
                field: "space".into(),
                value: 0x1_0000_0001
            })
        );
        assert_eq!(
            op_from_line("protect space=1 addr=0 size=0x1000 access=4294967296")
                .unwrap_err()
                .to_string(),
            "access=0x100000000 does not fit in 32 bits"
        );
        assert_eq!(
            op_from_line("destroy-space space=0xffffffff"),
            Ok(Op::DestroySpace { space: u32::MAX })
        );
    }
}
