//! Reproducer files: a header of `# key: value` lines and one operation per line, in a text
//! format people can read and edit (`map-fixed space=1 addr=0x400000 size=0x2000 access=0xb`).

use shared_mm::abi::Op;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One operation as a line.
pub fn op_to_line(op: &Op) -> String {
    match *op {
        Op::CreateSpace => "create-space".into(),
        Op::DestroySpace { space } => format!("destroy-space space={space}"),
        Op::MapAnywhere {
            space,
            size,
            align,
            access,
        } => {
            format!("map-anywhere space={space} size={size:#x} align={align:#x} access={access:#x}")
        }
        Op::MapFixed {
            space,
            addr,
            size,
            access,
        } => {
            format!("map-fixed space={space} addr={addr:#x} size={size:#x} access={access:#x}")
        }
        Op::MapRandomized {
            space,
            size,
            align,
            access,
        } => {
            format!(
                "map-randomized space={space} size={size:#x} align={align:#x} access={access:#x}"
            )
        }
        Op::Unmap { space, addr, size } => {
            format!("unmap space={space} addr={addr:#x} size={size:#x}")
        }
        Op::Protect {
            space,
            addr,
            size,
            access,
        } => {
            format!("protect space={space} addr={addr:#x} size={size:#x} access={access:#x}")
        }
        Op::TouchRead { space, addr } => format!("touch-read space={space} addr={addr:#x}"),
        Op::TouchWrite { space, addr, value } => {
            format!("touch-write space={space} addr={addr:#x} value={value:#x}")
        }
        Op::TouchExec { space, addr } => format!("touch-exec space={space} addr={addr:#x}"),
        Op::Snapshot { space } => format!("snapshot space={space}"),
    }
}

fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

/// Parses one operation line; the error names what is wrong.
pub fn op_from_line(line: &str) -> Result<Op, String> {
    let mut words = line.split_whitespace();
    let kind = words.next().ok_or("empty line")?;
    let mut fields = BTreeMap::new();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not key=value"))?;
        let value = number(value).ok_or_else(|| format!("{key}={value} is not a number"))?;
        if fields.insert(key, value).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    let mut take = |key: &str| {
        fields
            .remove(key)
            .ok_or_else(|| format!("{kind} needs {key}="))
    };
    let op = match kind {
        "create-space" => Op::CreateSpace,
        "destroy-space" => Op::DestroySpace {
            space: take("space")? as u32,
        },
        "map-anywhere" => Op::MapAnywhere {
            space: take("space")? as u32,
            size: take("size")?,
            align: take("align")?,
            access: take("access")? as u32,
        },
        "map-fixed" => Op::MapFixed {
            space: take("space")? as u32,
            addr: take("addr")?,
            size: take("size")?,
            access: take("access")? as u32,
        },
        "map-randomized" => Op::MapRandomized {
            space: take("space")? as u32,
            size: take("size")?,
            align: take("align")?,
            access: take("access")? as u32,
        },
        "unmap" => Op::Unmap {
            space: take("space")? as u32,
            addr: take("addr")?,
            size: take("size")?,
        },
        "protect" => Op::Protect {
            space: take("space")? as u32,
            addr: take("addr")?,
            size: take("size")?,
            access: take("access")? as u32,
        },
        "touch-read" => Op::TouchRead {
            space: take("space")? as u32,
            addr: take("addr")?,
        },
        "touch-write" => Op::TouchWrite {
            space: take("space")? as u32,
            addr: take("addr")?,
            value: take("value")?,
        },
        "touch-exec" => Op::TouchExec {
            space: take("space")? as u32,
            addr: take("addr")?,
        },
        "snapshot" => Op::Snapshot {
            space: take("space")? as u32,
        },
        other => return Err(format!("unknown operation {other:?}")),
    };
    if let Some(extra) = fields.keys().next() {
        return Err(format!("{kind} takes no {extra}="));
    }
    Ok(op)
}

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

    pub fn to_text(&self) -> String {
        let mut text = String::from("# vmm fuzz reproducer: replay with `vmm replay FILE`\n");
        for (key, value) in &self.header {
            let _ = writeln!(text, "# {key}: {}", value.replace('\n', " "));
        }
        for op in &self.ops {
            text += &op_to_line(op);
            text.push('\n');
        }
        text
    }

    /// Parses a reproducer; errors carry the line number.
    pub fn parse(text: &str) -> Result<Reproducer, String> {
        let mut repro = Reproducer {
            header: Vec::new(),
            ops: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some((key, value)) = comment.split_once(':') {
                    let key = key.trim();
                    if !key.contains(' ') {
                        repro
                            .header
                            .push((key.to_string(), value.trim().to_string()));
                    }
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            repro
                .ops
                .push(op_from_line(line).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        Ok(repro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::steps;

    #[test]
    fn every_op_round_trips_through_text() {
        for step in steps() {
            let line = op_to_line(&step.op);
            assert_eq!(op_from_line(&line), Ok(step.op), "{line}");
        }
    }

    #[test]
    fn reproducer_round_trips_and_reports_bad_lines() {
        let repro = Reproducer {
            header: vec![
                ("seed".into(), "7".into()),
                ("failure".into(), "x\ny".into()),
            ],
            ops: steps().into_iter().map(|s| s.op).collect(),
        };
        let parsed = Reproducer::parse(&repro.to_text()).expect("parses");
        assert_eq!(parsed.ops, repro.ops);
        assert_eq!(parsed.header_value("seed"), Some("7"));
        assert_eq!(parsed.header_value("failure"), Some("x y"));
        let err =
            Reproducer::parse("create-space\nmap-fixed space=1 addr=zz size=0x1000 access=3\n")
                .unwrap_err();
        assert!(
            err.starts_with("line 2:") && err.contains("addr=zz"),
            "{err}"
        );
        assert!(op_from_line("unmap space=1 addr=0x1000")
            .unwrap_err()
            .contains("size="));
        assert!(op_from_line("unmap space=1 addr=0x1000 size=0x1000 oops=1")
            .unwrap_err()
            .contains("oops"));
        assert!(op_from_line("frobnicate").unwrap_err().contains("unknown"));
    }
}
