//! The byte format of libFuzzer inputs: any bytes decode to MM operations, most of them from
//! four-byte records whose every byte is one choice (the kind of operation, an address slot, a
//! size class, an access mask), so that a mutated byte changes one choice of one operation and
//! a short input is a meaningful program. Addresses come from four small windows where regions
//! meet, cross page-table boundaries or reach the ends of user space; spaces are those the
//! input made. Two records stand for whole sequences a byte-level mutator would hardly build:
//! the placement probe ([`super::super::probe`]) and a fill that uses up every guest frame. A
//! literal record carries any operation exactly: [`encode`] writes scenarios and `vmm fuzz`
//! corpus entries as inputs that decode back to the same operations.
//!
//! A record's first byte, modulo 32, picks its kind from [`KINDS`]; the next three are its
//! arguments `a`, `b` and `c` (zero past the end of the input):
//!
//! | Kind | Operation (on the current space) | `a` | `b` | `c` |
//! | --- | --- | --- | --- | --- |
//! | create | `create-space`; the new space becomes current | | | |
//! | use | none; space number `a` (modulo those made) becomes current | space | | |
//! | fork | `fork`; the child becomes current if `a` is odd | flag | | |
//! | destroy | `destroy-space` | | | |
//! | map-fixed | `map-fixed` (or `map-shared`, by the access) | address | size | access |
//! | map-anywhere, map-randomized | the same | size | alignment | access |
//! | unmap, populate | the same | address | size | |
//! | protect | `protect` | address | size | access |
//! | touch-read, touch-exec, kernel-read | the same, at the address plus `8 b` | address | offset | |
//! | touch-write, kernel-write | the same, writing a value made of `c` and the op's index | address | offset | value |
//! | report | `snapshot`, `frames` or `check-tree`, by `a` modulo 3 | which | | |
//! | probe | the placement probe, on two new spaces (the first probe record only) | | | |
//! | fill | a 1 GiB read-write region, populated in halving pieces from 256 MiB to a page | | | |
//! | literal | any operation: the bytes after the kind are the kind's number (modulo 17, plus one), then the fields of its 48-byte record (space, address, size, alignment, access, value) as LEB128 numbers | | | |
//!
//! The address windows (`a >> 6` picks one, `a & 63` the slot): 64 pages inside one page
//! table at 4 MiB; 64 pages across the 2 MiB page-table boundary at 6 MiB; 64 slots 2 MiB
//! apart across the 1 GiB boundary; and the lowest 32 pages of the address space (0 and
//! `USER_SPACE_BASE` among them) and the 32 pages around the end of user space (the last 16
//! user pages, the trampoline page, then the non-canonical hole).
#![forbid(unsafe_code)]

use crate::probe;
use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::{Op, OP_RECORD_SIZE, USER_SPACE_END};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
/// Bytes of a compact record: its kind and three arguments.
pub const RECORD: usize = 4;
/// Where the fill's region lies: far above the address windows.
const FILL_BASE: u64 = 0x1000_0000_0000;
/// The fill populates pieces of 2^k pages for k from this down to 0.
const FILL_ORDER: u32 = 16;
/// Bits of the values `touch-write` and `kernel-write` store, above the record's choices.
const VALUE_BASE: u64 = 0x5eed_0000_0000_0000;

/// What a record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Create,
    Use,
    Fork,
    Destroy,
    MapFixed,
    MapAnywhere,
    MapRandomized,
    Unmap,
    Protect,
    Populate,
    TouchRead,
    TouchWrite,
    TouchExec,
    KernelRead,
    KernelWrite,
    Report,
    Probe,
    Fill,
    Literal,
}

/// The kind of each value of a record's first byte modulo 32: the operations that change
/// mappings and touch memory more often than the rest.
const KINDS: [Kind; 32] = {
    use Kind::*;
    [
        Create,
        Use,
        Use,
        Fork,
        Destroy,
        MapFixed,
        MapFixed,
        MapFixed,
        MapAnywhere,
        MapRandomized,
        Unmap,
        Unmap,
        Unmap,
        Protect,
        Protect,
        Populate,
        TouchRead,
        TouchRead,
        TouchWrite,
        TouchWrite,
        TouchWrite,
        TouchExec,
        KernelRead,
        KernelWrite,
        Report,
        Report,
        Probe,
        Fill,
        Literal,
        Create,
        Fork,
        Populate,
    ]
};

/// Sizes of the odd size class: empty, not page-sized, huge, and one that overflows.
const ODD_SIZES: [u64; 8] = [
    0,
    1,
    PAGE - 1,
    PAGE + 8,
    1 << 30,
    1 << 39,
    1 << 47,
    0xFFFF_FFFF_FFFF_F000,
];
/// Alignments of the odd class: zero, not powers of two or below a page, and huge.
const ODD_ALIGNS: [u64; 8] = [0, 1, 8, 3 * 1024, PAGE + 1, 3 * PAGE, 1 << 47, 1 << 63];

/// A slot of one of the four address windows.
fn address(a: u8) -> u64 {
    let slot = u64::from(a & 63);
    match a >> 6 {
        0 => 0x40_0000 + slot * PAGE,
        1 => 0x60_0000 - 32 * PAGE + slot * PAGE,
        2 => 0x4000_0000 - 32 * HUGE + slot * HUGE,
        _ if slot < 32 => slot * PAGE,
        _ => USER_SPACE_END - 16 * PAGE + (slot - 32) * PAGE,
    }
}

/// Half the time 1 to 16 pages; else 16 to 1024 pages in steps of 16, 2 to 64 MiB in steps of
/// 2 MiB, or an odd size.
fn size(z: u8) -> u64 {
    match z {
        0..=127 => u64::from(z % 16 + 1) * PAGE,
        128..=191 => u64::from(z - 127) * 16 * PAGE,
        192..=223 => u64::from(z - 191) * HUGE,
        _ => ODD_SIZES[usize::from(z & 7)],
    }
}

/// A power of two from a page to 2 GiB, or an odd alignment.
fn alignment(g: u8) -> u64 {
    match g {
        0..=223 => PAGE << (g % 20),
        _ => ODD_ALIGNS[usize::from(g & 7)],
    }
}

/// The five access bits (read, write, execute, user, shared), or bits no access has.
fn access(c: u8) -> u32 {
    match c {
        0..=223 => u32::from(c & 0x1f),
        _ => u32::from(c),
    }
}

/// What decoding remembers: the spaces the input made, and which one its operations name.
#[derive(Debug, Default)]
struct Decoder {
    ops: Vec<Op>,
    /// Every space id the input made, in order (destroyed ones too).
    spaces: Vec<u32>,
    /// The id the guest gives the next space: it numbers them from 1.
    next_id: u32,
    /// The space the operations name; 0 (no space) before the first is made.
    current: u32,
    probed: bool,
}

impl Decoder {
    fn new() -> Self {
        Decoder {
            next_id: 1,
            ..Decoder::default()
        }
    }

    fn made(&mut self) -> u32 {
        let id = self.next_id;
        self.spaces.push(id);
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// Appends the operations of a compact record of `kind` with arguments `[a, b, c]`.
    fn compact(&mut self, kind: Kind, [a, b, c]: [u8; 3]) {
        let space = self.current;
        let touched = address(a) + u64::from(b) * 8;
        let value = VALUE_BASE | (self.ops.len() as u64) << 8 | u64::from(c);
        let op = match kind {
            Kind::Create => {
                self.current = self.made();
                Op::CreateSpace
            }
            Kind::Use => {
                if !self.spaces.is_empty() {
                    self.current = self.spaces[usize::from(a) % self.spaces.len()];
                }
                return;
            }
            Kind::Fork => {
                let child = self.made();
                if a & 1 == 1 {
                    self.current = child;
                }
                Op::Fork { space }
            }
            Kind::Destroy => Op::DestroySpace { space },
            Kind::MapFixed => Op::MapFixed {
                space,
                addr: address(a),
                size: size(b),
                access: access(c),
            },
            Kind::MapAnywhere => Op::MapAnywhere {
                space,
                size: size(a),
                align: alignment(b),
                access: access(c),
            },
            Kind::MapRandomized => Op::MapRandomized {
                space,
                size: size(a),
                align: alignment(b),
                access: access(c),
            },
            Kind::Unmap => Op::Unmap {
                space,
                addr: address(a),
                size: size(b),
            },
            Kind::Protect => Op::Protect {
                space,
                addr: address(a),
                size: size(b),
                access: access(c),
            },
            Kind::Populate => Op::Populate {
                space,
                addr: address(a),
                size: size(b),
            },
            Kind::TouchRead => Op::TouchRead {
                space,
                addr: touched,
            },
            Kind::TouchWrite => Op::TouchWrite {
                space,
                addr: touched,
                value,
            },
            Kind::TouchExec => Op::TouchExec {
                space,
                addr: touched,
            },
            Kind::KernelRead => Op::KernelRead {
                space,
                addr: touched,
            },
            Kind::KernelWrite => Op::KernelWrite {
                space,
                addr: touched,
                value,
            },
            Kind::Report => match a % 3 {
                0 => Op::Snapshot { space },
                1 => Op::Frames { space },
                _ => Op::CheckTree { space },
            },
            Kind::Probe => return self.probe(),
            Kind::Fill => return self.ops.extend(fill(space)),
            Kind::Literal => unreachable!("a literal record is not compact"),
        };
        self.ops.push(op);
    }

    /// The placement probe on two new spaces, the first time only: it is 1,000 operations.
    fn probe(&mut self) {
        if std::mem::replace(&mut self.probed, true) {
            return;
        }
        let first = self.next_id;
        for _ in 0..probe::spaces() {
            self.made();
        }
        self.ops.extend(probe::ops(first));
    }

    /// Appends a literal operation, if `record` holds one; the spaces it makes count as the
    /// compact records' do.
    fn literal(&mut self, record: &[u8; OP_RECORD_SIZE]) {
        let Some(op) = Op::decode(record) else {
            return;
        };
        match op {
            Op::CreateSpace => self.current = self.made(),
            Op::Fork { .. } => {
                self.made();
            }
            _ => {}
        }
        self.ops.push(op);
    }
}

/// The fill: a read-write region of 2^(FILL_ORDER + 2) pages in `space`, and populates of
/// 2^k pages of it, one after the other, for k from [`FILL_ORDER`] down to 0, then of two more
/// pages. Each populate is all or nothing, so together they leave any guest of up to 256 MiB
/// fewer free frames than one more page (and the tables it needs) takes.
fn fill(space: u32) -> Vec<Op> {
    let mut ops = vec![Op::MapFixed {
        space,
        addr: FILL_BASE,
        size: PAGE << (FILL_ORDER + 2),
        access: USER | READ | WRITE,
    }];
    let mut offset = 0;
    let pages = (0..=FILL_ORDER).rev().map(|k| 1 << k).chain([1, 1]);
    for pages in pages {
        let size = pages * PAGE;
        ops.push(Op::Populate {
            space,
            addr: FILL_BASE + offset,
            size,
        });
        offset += size;
    }
    ops
}

/// Byte offset and width of each field of an operation's 48-byte record, in its order: kind,
/// space, address, size, alignment, access, value (the padding after access is left out).
const FIELDS: [(usize, usize); 7] = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 4), (40, 8)];

/// Reads a LEB128 number from `bytes`: the rest of the input after it, and the number (bits
/// past 64 dropped, a number cut off by the end of the input ends there).
fn leb128(bytes: &[u8]) -> (&[u8], u64) {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate() {
        if i < 10 {
            value |= u64::from(byte & 0x7f) << (7 * i);
        }
        if byte & 0x80 == 0 {
            return (&bytes[i + 1..], value);
        }
    }
    (&[], value)
}

fn put_leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            return out.push(byte);
        }
        out.push(byte | 0x80);
    }
}

/// Reads a literal record's fields (after its kind byte): the rest of the input, and the
/// operation's 48-byte record.
fn literal_record(mut bytes: &[u8]) -> (&[u8], [u8; OP_RECORD_SIZE]) {
    let mut record = [0u8; OP_RECORD_SIZE];
    for (i, &(at, width)) in FIELDS.iter().enumerate() {
        let (rest, mut value) = leb128(bytes);
        bytes = rest;
        if i == 0 {
            // Any number names a kind: the wire's kinds are 1 to 17.
            value = value % 17 + 1;
        }
        record[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
    (bytes, record)
}

/// The operations `bytes` stand for. Every byte string decodes; a record cut off by the end of
/// the input reads zeros for what is missing.
pub fn decode(bytes: &[u8]) -> Vec<Op> {
    let mut decoder = Decoder::new();
    let mut rest = bytes;
    while let Some((&first, after)) = rest.split_first() {
        let kind = KINDS[usize::from(first % 32)];
        if kind == Kind::Literal {
            let (after, record) = literal_record(after);
            decoder.literal(&record);
            rest = after;
            continue;
        }
        let mut args = [0u8; 3];
        let taken = after.len().min(3);
        args[..taken].copy_from_slice(&after[..taken]);
        decoder.compact(kind, args);
        rest = &after[taken..];
    }
    decoder.ops
}

/// The first byte of a literal record.
fn literal_kind() -> u8 {
    let at = KINDS.iter().position(|&k| k == Kind::Literal);
    at.expect("the kinds include literal") as u8
}

/// An input that decodes to exactly `ops`: one literal record each.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        let mut record = [0u8; OP_RECORD_SIZE];
        op.encode(&mut record)
            .expect("an operation fits its record");
        out.push(literal_kind());
        for (i, &(at, width)) in FIELDS.iter().enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..width].copy_from_slice(&record[at..at + width]);
            let value = u64::from_le_bytes(bytes);
            // The decoder adds one to the kind it reads.
            put_leb128(&mut out, if i == 0 { value - 1 } else { value });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_scenario::self_check;
    use shared_mm::abi::access_bits::SHARED;

    /// The record bytes of `kind` with arguments `args`.
    fn record(kind: Kind, args: [u8; 3]) -> Vec<u8> {
        let first = KINDS.iter().position(|&k| k == kind).expect("a kind") as u8;
        let mut bytes = vec![first];
        bytes.extend(args);
        bytes
    }

    #[test]
    fn compact_records_name_the_current_space_and_the_windows() {
        let bytes: Vec<u8> = [
            record(Kind::Create, [0; 3]),
            record(Kind::MapFixed, [3, 1, 0x0b]),
            record(Kind::TouchWrite, [0x43, 2, 7]),
            record(Kind::Create, [0; 3]),
            record(Kind::Use, [2, 0, 0]),
            record(Kind::Unmap, [0x80, 0x80, 0]),
            record(Kind::Fork, [1, 0, 0]),
            record(Kind::Protect, [0xf0, 0xe0, 0x1b]),
        ]
        .concat();
        assert_eq!(
            decode(&bytes),
            [
                Op::CreateSpace,
                Op::MapFixed {
                    space: 1,
                    addr: 0x40_3000,
                    size: 2 * PAGE,
                    access: 0x0b
                },
                Op::TouchWrite {
                    space: 1,
                    addr: 0x5e_0000 + 3 * PAGE + 16,
                    value: VALUE_BASE | 2 << 8 | 7
                },
                Op::CreateSpace,
                // `use 2` of two spaces: the first again.
                Op::Unmap {
                    space: 1,
                    addr: 0x4000_0000 - 32 * HUGE,
                    size: 16 * PAGE
                },
                Op::Fork { space: 1 },
                Op::Protect {
                    space: 3,
                    addr: USER_SPACE_END,
                    size: 0,
                    access: 0x0b | SHARED
                },
            ]
        );
    }

    #[test]
    fn any_bytes_decode_and_a_cut_record_reads_zeros() {
        assert_eq!(decode(&[]), []);
        let cut = record(Kind::MapFixed, [0; 3]);
        assert_eq!(
            decode(&cut[..2]),
            [Op::MapFixed {
                space: 0,
                addr: 0x40_0000,
                size: PAGE,
                access: 0
            }]
        );
        // Every kind byte and argument decodes, and a literal cut off anywhere too.
        let all: Vec<u8> = (0..=255u8)
            .flat_map(|b| [b, b, 255 - b, b ^ 0x5a])
            .collect();
        assert!(decode(&all).len() > 200);
        for end in 0..40 {
            decode(&all[..end]);
        }
    }

    #[test]
    fn the_probe_comes_once_on_new_spaces_and_the_fill_takes_up_to_256_mib() {
        let bytes: Vec<u8> = [
            record(Kind::Create, [0; 3]),
            record(Kind::Probe, [0; 3]),
            record(Kind::Probe, [0; 3]),
            record(Kind::Create, [0; 3]),
            record(Kind::Fill, [0; 3]),
        ]
        .concat();
        let ops = decode(&bytes);
        let probe = probe::ops(2);
        assert_eq!(ops[1..1 + probe.len()], probe[..]);
        let rest = &ops[1 + probe.len()..];
        assert_eq!(rest[0], Op::CreateSpace);
        let fill = &rest[1..];
        assert_eq!(fill, super::fill(4));
        let populated: u64 = fill[1..]
            .iter()
            .map(|op| match op {
                Op::Populate { size, .. } => size / PAGE,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(populated, (2 << FILL_ORDER) + 1);
        assert!(populated * PAGE >= 256 << 20);
    }

    #[test]
    fn encoded_operations_decode_to_themselves() {
        let mut ops: Vec<Op> = self_check().steps().map(|s| s.op).collect();
        ops.extend(probe::ops(7));
        ops.push(Op::TouchWrite {
            space: u32::MAX,
            addr: u64::MAX,
            value: u64::MAX,
        });
        ops.push(Op::CheckTree { space: 0 });
        let bytes = encode(&ops);
        assert_eq!(decode(&bytes), ops);
        // Compact: a self-check op takes about ten bytes.
        assert!(bytes.len() < 16 * ops.len(), "{} bytes", bytes.len());
    }

    #[test]
    fn a_long_literal_number_keeps_its_low_64_bits() {
        let mut bytes = vec![literal_kind(), 16];
        bytes.extend([0xff; 12]);
        bytes.push(0x01);
        let ops = decode(&bytes);
        assert!(
            matches!(ops[..], [Op::CheckTree { space: u32::MAX }]),
            "{ops:?}"
        );
    }
}
