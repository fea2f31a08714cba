//! The byte format of libFuzzer inputs: any bytes decode to MM operations, in records of one
//! to three bytes whose every byte is a choice, so that a short input is already a meaningful
//! program and a mutated byte changes one choice of one operation.
//!
//! An input starts with a space made for it (an implicit `create-space`, space 1), unless its
//! first record is a literal one (see below). A record's first byte picks its kind (its low
//! five bits, from the table `KINDS`) and a variant (its top three bits). Most operations work
//! on the *current* space and near the *last range*: the range the last fixed map, or unmap,
//! protect or populate with explicit arguments, named (at first, the first two pages of the
//! first window). So `map-fixed`, then a touch, then an unmap (five bytes) plant and free a
//! page of one region, as a generator that reuses its ranges would; map-touch and an unmap (two
//! bytes) do it on the first range.
//!
//! | Kind | Bytes | Operation |
//! | --- | --- | --- |
//! | create | 1 | `create-space`; the new space becomes current |
//! | use | 1 | none: the variant-th space made before the last becomes current |
//! | fork | 1 | `fork`; with an odd variant the child becomes current |
//! | destroy | 1 | `destroy-space` |
//! | map-fixed | 3 | `map-fixed` (`map-shared` for the shared accesses) at address `a`, size `b`, an access by the variant; it is the last range |
//! | map-touch | 1 | the same on the last range, then a touch of its first and its last page (writes if the access allows writes, else reads): mapped pages, present and cached, which most MM bugs start from; so three one-byte records (map-touch, fork, write) break a copy-on-write page |
//! | map-anywhere, map-randomized | 3 | the same, size `a`, alignment `b`, an access by the variant |
//! | unmap, populate | 1 or 3 | the same, on a range by the variant; variants 6 and 7 read address `a` and size `b` |
//! | protect | 2 or 4 | the same, on a range by the variant, then access `c` |
//! | touch-read, touch-write, touch-exec, kernel-read, kernel-write | 1 or 2 | the same, at an address by the variant; variants 6 and 7 read address `a`; a write stores a value made of the op's index |
//! | report | 1 | `snapshot`, `frames` or `check-tree`, by the variant modulo 3 |
//! | probe | 1 | the placement probe ([`crate::probe`]) on two new spaces (the first probe record only: it is 1,000 operations) |
//! | fill | 1 | a 1 GiB read-write region, populated in halving pieces from 256 MiB down to a page and two more pages: every frame of a guest of up to 256 MiB is used up |
//! | literal | 2 or more | any operation: the kind's number (modulo 17, plus one), then the fields of its 48-byte record (space, address, size, alignment, access, value) as LEB128 numbers |
//!
//! Ranges by the variant, from the last range: 0 all of it, 1 its first page, 2 its last page,
//! 3 the page before it and its first, 4 its last page and the page after it, 5 all but its
//! first and last pages. Touch addresses by the variant: 0 the first page, 1 the end of the last
//! page, 2 the second page, 3 the page before the range, 4 the page after it, 5 the user
//! trampoline. Accesses by the variant: [`ACCESSES`]; access `c` of protect: below 128 one of
//! the same (`c` modulo 8), so that a protect to read-only or read-write is likely; else its
//! low five bits, or above 223 bits no access has.
//!
//! Explicit addresses come from four windows (`a >> 6` picks one, `a & 63` the slot): 64
//! pages inside one page table at 4 MiB; 64 pages across the 2 MiB page-table boundary at
//! 6 MiB; 64 slots 2 MiB apart across the 1 GiB boundary; and the lowest 32 pages of the
//! address space (0 and `USER_SPACE_BASE` among them) and the 32 pages around the end of user
//! space (the last 16 user pages, the trampoline page, then the non-canonical hole). Sizes
//! (`b`): half the time 1 to 16 pages, else 16 to 1024 pages, 2 to 64 MiB, or an odd size
//! (zero, not page-sized, huge, overflowing). Alignments: a page to 2 GiB, or odd ones.
//!
//! A literal record carries any operation exactly: [`encode`] writes scenarios and `vmm fuzz`
//! corpus entries as inputs that decode back to the same operations. A record cut off by the
//! end of the input reads zeros for what is missing.
#![forbid(unsafe_code)]

use crate::probe;
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{Op, OP_RECORD_SIZE, USER_SPACE_END, USER_TRAMPOLINE};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
/// Where the fill's region lies: far above the address windows.
const FILL_BASE: u64 = 0x1000_0000_0000;
/// The fill populates pieces of 2^k pages for k from this down to 0.
const FILL_ORDER: u32 = 16;
/// Bits of the values `touch-write` and `kernel-write` store, above the op's index.
const VALUE_BASE: u64 = 0x5eed_0000_0000_0000;
/// The last range before any operation named one: the first two pages of the first window, so
/// that an unmap or protect of one page of it (one byte) splits the region.
const FIRST_RANGE: (u64, u64) = (0x40_0000, 2 * PAGE);

/// What a record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Create,
    Use,
    Fork,
    Destroy,
    MapFixed,
    MapTouch,
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

/// The kind of each value of a record's low five bits: the operations that change mappings
/// and touch memory more often than the rest.
#[rustfmt::skip]
const KINDS: [Kind; 32] = {
    use Kind::*;
    [
        Create, Use, Fork, Destroy, MapFixed, MapFixed, MapTouch, MapAnywhere, MapRandomized,
        Unmap, Unmap, Unmap, Protect, Protect, Populate, TouchRead, TouchRead, TouchWrite,
        TouchWrite, TouchWrite, TouchExec, KernelRead, KernelWrite, Report, Probe, Fill,
        Literal, Create, Fork, Use, MapTouch, Protect,
    ]
};

/// The accesses of maps, by the record's variant: user read-write, read-only, read-execute
/// and read-write-execute, user without rights, kernel-only read-write, and shared read-write
/// and read-only.
pub const ACCESSES: [u32; 8] = [
    USER | READ | WRITE,
    USER | READ,
    USER | READ | EXECUTE,
    USER | READ | WRITE | EXECUTE,
    USER,
    READ | WRITE,
    USER | READ | WRITE | SHARED,
    USER | READ | SHARED,
];

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
fn size(b: u8) -> u64 {
    match b {
        0..=127 => u64::from(b % 16 + 1) * PAGE,
        128..=191 => u64::from(b - 127) * 16 * PAGE,
        192..=223 => u64::from(b - 191) * HUGE,
        _ => ODD_SIZES[usize::from(b & 7)],
    }
}

/// A power of two from a page to 2 GiB, or an odd alignment.
fn alignment(b: u8) -> u64 {
    match b {
        0..=223 => PAGE << (b % 20),
        _ => ODD_ALIGNS[usize::from(b & 7)],
    }
}

/// Half the time an access of [`ACCESSES`]; else any of the five access bits (read, write,
/// execute, user, shared), or bits no access has.
fn access(c: u8) -> u32 {
    match c {
        0..=127 => ACCESSES[usize::from(c & 7)],
        128..=223 => u32::from(c & 0x1f),
        _ => u32::from(c),
    }
}

/// Pages a range of `size` bytes touches (at least one); wrapping, as every address here.
fn pages(size: u64) -> u64 {
    size.div_ceil(PAGE).max(1)
}

/// A range relative to `(base, size)`, by `variant` (0 to 5: see the module's doc).
fn relative((base, size): (u64, u64), variant: u8) -> (u64, u64) {
    let last = base.wrapping_add((pages(size) - 1).wrapping_mul(PAGE));
    match variant {
        0 => (base, size),
        1 => (base, PAGE),
        2 => (last, PAGE),
        3 => (base.wrapping_sub(PAGE), 2 * PAGE),
        4 => (last, 2 * PAGE),
        _ => (
            base.wrapping_add(PAGE),
            (pages(size).saturating_sub(2)).max(1).wrapping_mul(PAGE),
        ),
    }
}

/// An address to touch relative to `(base, size)`, by `variant` (0 to 5).
fn touched((base, size): (u64, u64), variant: u8) -> u64 {
    let end = base.wrapping_add(pages(size).wrapping_mul(PAGE));
    match variant {
        0 => base,
        1 => end.wrapping_sub(8),
        2 if size > PAGE => base.wrapping_add(PAGE),
        2 => base,
        3 => base.wrapping_sub(PAGE),
        4 => end,
        _ => USER_TRAMPOLINE + 8,
    }
}

/// The input still to decode: bytes taken one by one, zero past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&byte, rest)) => {
                self.0 = rest;
                byte
            }
            None => 0,
        }
    }

    /// A LEB128 number (bits past 64 dropped; a number cut off by the end of the input ends
    /// there).
    fn leb128(&mut self) -> u64 {
        let mut value = 0u64;
        for i in 0.. {
            let Some((&byte, rest)) = self.0.split_first() else {
                break;
            };
            self.0 = rest;
            if i < 10 {
                value |= u64::from(byte & 0x7f) << (7 * i);
            }
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
}

/// What decoding remembers: the spaces the input made, which one its operations name, and the
/// last range.
#[derive(Debug, Default)]
struct Decoder {
    ops: Vec<Op>,
    /// Every space id the input made, in order (destroyed ones too).
    spaces: Vec<u32>,
    /// The id the guest gives the next space: it numbers them from 1.
    next_id: u32,
    /// The space operations name; 0, which is none, before the first is made.
    current: u32,
    range: (u64, u64),
    probed: bool,
}

impl Decoder {
    /// A decoder at the start of an input; one whose input has made its first space if
    /// `implicit`.
    fn new(implicit: bool) -> Self {
        let mut decoder = Decoder {
            next_id: 1,
            range: FIRST_RANGE,
            ..Decoder::default()
        };
        if implicit {
            decoder.current = decoder.made();
            decoder.ops.push(Op::CreateSpace);
        }
        decoder
    }

    fn made(&mut self) -> u32 {
        let id = self.next_id;
        self.spaces.push(id);
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// The range of a record with `variant`: relative to the last range, or (6, 7) explicit,
    /// which becomes the last range.
    fn range(&mut self, variant: u8, bytes: &mut Bytes<'_>) -> (u64, u64) {
        if variant < 6 {
            return relative(self.range, variant);
        }
        self.range = (address(bytes.next()), size(bytes.next()));
        self.range
    }

    fn touched(&self, variant: u8, bytes: &mut Bytes<'_>) -> u64 {
        match variant {
            0..=5 => touched(self.range, variant),
            _ => address(bytes.next()),
        }
    }

    /// Decodes the record that starts with `first`, its other bytes from `bytes`.
    fn record(&mut self, first: u8, bytes: &mut Bytes<'_>) {
        let (kind, variant) = (KINDS[usize::from(first & 31)], first >> 5);
        let space = self.current;
        let value = VALUE_BASE | (self.ops.len() as u64) << 8 | u64::from(first);
        let op = match kind {
            Kind::Create => {
                self.current = self.made();
                Op::CreateSpace
            }
            Kind::Use => {
                let back = self.spaces.len().saturating_sub(2 + usize::from(variant));
                self.current = self.spaces.get(back).copied().unwrap_or(self.current);
                return;
            }
            Kind::Fork => {
                let child = self.made();
                if variant & 1 == 1 {
                    self.current = child;
                }
                Op::Fork { space }
            }
            Kind::Destroy => Op::DestroySpace { space },
            Kind::MapFixed => {
                self.range = (address(bytes.next()), size(bytes.next()));
                let (addr, size) = self.range;
                let access = ACCESSES[usize::from(variant)];
                Op::MapFixed {
                    space,
                    addr,
                    size,
                    access,
                }
            }
            Kind::MapTouch => return self.map_touch(ACCESSES[usize::from(variant)], value),
            Kind::MapAnywhere => Op::MapAnywhere {
                space,
                size: size(bytes.next()),
                align: alignment(bytes.next()),
                access: ACCESSES[usize::from(variant)],
            },
            Kind::MapRandomized => Op::MapRandomized {
                space,
                size: size(bytes.next()),
                align: alignment(bytes.next()),
                access: ACCESSES[usize::from(variant)],
            },
            Kind::Unmap => {
                let (addr, size) = self.range(variant, bytes);
                Op::Unmap { space, addr, size }
            }
            Kind::Protect => {
                let (addr, size) = self.range(variant, bytes);
                let access = access(bytes.next());
                Op::Protect {
                    space,
                    addr,
                    size,
                    access,
                }
            }
            Kind::Populate => {
                let (addr, size) = self.range(variant, bytes);
                Op::Populate { space, addr, size }
            }
            Kind::TouchRead => Op::TouchRead {
                space,
                addr: self.touched(variant, bytes),
            },
            Kind::TouchWrite => Op::TouchWrite {
                space,
                addr: self.touched(variant, bytes),
                value,
            },
            Kind::TouchExec => Op::TouchExec {
                space,
                addr: self.touched(variant, bytes),
            },
            Kind::KernelRead => Op::KernelRead {
                space,
                addr: self.touched(variant, bytes),
            },
            Kind::KernelWrite => Op::KernelWrite {
                space,
                addr: self.touched(variant, bytes),
                value,
            },
            Kind::Report => match variant % 3 {
                0 => Op::Snapshot { space },
                1 => Op::Frames { space },
                _ => Op::CheckTree { space },
            },
            Kind::Probe => return self.probe(),
            Kind::Fill => return self.ops.extend(fill(space)),
            Kind::Literal => return self.literal(bytes),
        };
        self.ops.push(op);
    }

    /// `map-fixed` of the last range with `access` in the current space, then a write of
    /// `value` to its first and its last page if `access` allows writes, else reads.
    fn map_touch(&mut self, access: u32, value: u64) {
        let (space, (base, size)) = (self.current, self.range);
        self.ops.push(Op::MapFixed {
            space,
            addr: base,
            size,
            access,
        });
        let last = relative(self.range, 2).0;
        for addr in [base, last].into_iter().take(1 + usize::from(last != base)) {
            self.ops.push(match access & WRITE {
                0 => Op::TouchRead { space, addr },
                _ => Op::TouchWrite { space, addr, value },
            });
        }
    }

    /// The placement probe on two new spaces, the first time only.
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

    /// A literal operation: its kind, then its record's fields. The spaces it makes and the
    /// range it names count as a compact record's do.
    fn literal(&mut self, bytes: &mut Bytes<'_>) {
        let mut record = [0u8; OP_RECORD_SIZE];
        for (i, &(at, width)) in FIELDS.iter().enumerate() {
            let mut value = bytes.leb128();
            if i == 0 {
                // Any number names a kind: the wire's kinds are 1 to 17.
                value = value % 17 + 1;
            }
            record[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        let Some(op) = Op::decode(&record) else {
            return;
        };
        match op {
            Op::CreateSpace => self.current = self.made(),
            Op::Fork { .. } => {
                self.made();
            }
            Op::MapFixed { addr, size, .. }
            | Op::Unmap { addr, size, .. }
            | Op::Protect { addr, size, .. }
            | Op::Populate { addr, size, .. } => self.range = (addr, size),
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
    let pieces = (0..=FILL_ORDER).rev().map(|k| 1 << k).chain([1, 1]);
    for pages in pieces {
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

/// The operations `bytes` stand for (the implicit `create-space` first, unless the input starts
/// with a literal record). Every byte string decodes.
pub fn decode(bytes: &[u8]) -> Vec<Op> {
    let implicit = bytes
        .first()
        .is_none_or(|&first| first & 31 != literal_kind());
    let mut decoder = Decoder::new(implicit);
    let mut rest = Bytes(bytes);
    while let Some((&first, after)) = rest.0.split_first() {
        rest.0 = after;
        decoder.record(first, &mut rest);
    }
    decoder.ops
}

/// The first byte of a literal record.
fn literal_kind() -> u8 {
    let at = KINDS.iter().position(|&k| k == Kind::Literal);
    at.expect("the kinds include literal") as u8
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

    /// The first byte of a record of `kind` with `variant`.
    fn first(kind: Kind, variant: u8) -> u8 {
        let at = KINDS.iter().position(|&k| k == kind).expect("a kind") as u8;
        at | variant << 5
    }

    #[test]
    fn records_work_on_the_current_space_near_the_last_range() {
        let bytes = [
            first(Kind::MapFixed, 0),
            3,
            1,
            first(Kind::TouchWrite, 1),
            first(Kind::Unmap, 1),
            first(Kind::Create, 0),
            first(Kind::Use, 0),
            first(Kind::Protect, 7),
            0xf0,
            0xe0,
            0x9b,
            first(Kind::Fork, 1),
            first(Kind::TouchRead, 6),
            0x43,
        ];
        let urw = USER | READ | WRITE;
        assert_eq!(
            decode(&bytes),
            [
                Op::CreateSpace,
                Op::MapFixed {
                    space: 1,
                    addr: 0x40_3000,
                    size: 2 * PAGE,
                    access: urw
                },
                Op::TouchWrite {
                    space: 1,
                    addr: 0x40_4ff8,
                    value: VALUE_BASE | 2 << 8 | u64::from(bytes[3])
                },
                Op::Unmap {
                    space: 1,
                    addr: 0x40_3000,
                    size: PAGE
                },
                Op::CreateSpace,
                // `use 0`: the space made before the last.
                Op::Protect {
                    space: 1,
                    addr: USER_SPACE_END,
                    size: 0,
                    access: urw | SHARED
                },
                Op::Fork { space: 1 },
                Op::TouchRead {
                    space: 3,
                    addr: 0x5e_3000
                },
            ]
        );
    }

    #[test]
    fn three_one_byte_records_break_a_copy_on_write_page() {
        let bytes = [
            first(Kind::MapTouch, 0),
            first(Kind::Fork, 0),
            first(Kind::TouchWrite, 0),
        ];
        let (addr, size) = FIRST_RANGE;
        let write = |at: u64, first: u8| Op::TouchWrite {
            space: 1,
            addr,
            value: VALUE_BASE | at << 8 | u64::from(first),
        };
        assert_eq!(
            decode(&bytes),
            [
                Op::CreateSpace,
                Op::MapFixed {
                    space: 1,
                    addr,
                    size,
                    access: USER | READ | WRITE
                },
                write(1, bytes[0]),
                Op::TouchWrite {
                    space: 1,
                    addr: addr + PAGE,
                    value: VALUE_BASE | 1 << 8 | u64::from(bytes[0]),
                },
                Op::Fork { space: 1 },
                write(5, bytes[2]),
            ]
        );
        // Without write access the touches read.
        let read_only = decode(&[first(Kind::MapTouch, 1)]);
        let reads = [addr, addr + PAGE].map(|addr| Op::TouchRead { space: 1, addr });
        assert_eq!(read_only[2..], reads);
    }

    #[test]
    fn ranges_and_touches_by_variant_are_around_the_last_range() {
        let range = (0x40_0000, 3 * PAGE);
        let ranges: Vec<_> = (0..6).map(|v| relative(range, v)).collect();
        assert_eq!(
            ranges,
            [
                (0x40_0000, 3 * PAGE),
                (0x40_0000, PAGE),
                (0x40_2000, PAGE),
                (0x3f_f000, 2 * PAGE),
                (0x40_2000, 2 * PAGE),
                (0x40_1000, PAGE),
            ]
        );
        let touches: Vec<_> = (0..6).map(|v| touched(range, v)).collect();
        assert_eq!(
            touches,
            [
                0x40_0000,
                0x40_2ff8,
                0x40_1000,
                0x3f_f000,
                0x40_3000,
                USER_TRAMPOLINE + 8
            ]
        );
        // Odd sizes wrap instead of overflowing.
        let huge = (u64::MAX - PAGE + 1, u64::MAX);
        for v in 0..6 {
            relative(huge, v);
            touched(huge, v);
        }
    }

    #[test]
    fn any_bytes_decode_and_a_cut_record_reads_zeros() {
        assert_eq!(decode(&[]), [Op::CreateSpace]);
        assert_eq!(
            decode(&[first(Kind::MapFixed, 0), 3]),
            [
                Op::CreateSpace,
                Op::MapFixed {
                    space: 1,
                    addr: 0x40_3000,
                    size: PAGE,
                    access: USER | READ | WRITE
                }
            ]
        );
        let all: Vec<u8> = (0..=255u8).flat_map(|b| [b, 255 - b, b ^ 0x5a]).collect();
        assert!(decode(&all).len() > 200);
        for end in 0..64 {
            decode(&all[..end]);
        }
    }

    #[test]
    fn the_probe_comes_once_on_new_spaces_and_the_fill_takes_up_to_256_mib() {
        let bytes = [
            first(Kind::Probe, 0),
            first(Kind::Probe, 0),
            first(Kind::Create, 0),
            first(Kind::Fill, 0),
        ];
        let ops = decode(&bytes);
        let probe = probe::ops(2);
        assert_eq!(ops[1..1 + probe.len()], probe[..]);
        let rest = &ops[1 + probe.len()..];
        assert_eq!(rest[0], Op::CreateSpace);
        assert_eq!(rest[1..], fill(4));
        let populated: u64 = rest[2..]
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
        assert_eq!(decode(&bytes), [Op::CheckTree { space: u32::MAX }]);
    }
}
