//! The plan `vmm inspect` runs: four address spaces (one forked) with regions of every kind of
//! access, split by protect and unmap, some pages touched from ring 3 and some left untouched.

use mm_scenario::Expect;
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{FaultKind, Op, USER_SPACE_END};

const URW: u32 = USER | READ | WRITE;
const UR: u32 = USER | READ;
const URX: u32 = USER | READ | EXECUTE;
/// Shared anonymous memory: a fork shares it instead of copying it.
const SHARED_URW: u32 = URW | SHARED;
/// Kernel-only read-write: mapped in a user space, but not reachable from ring 3.
const KRW: u32 = READ | WRITE;
/// PROT_NONE: the region stays, nothing can access it.
const NONE: u32 = USER;
const TWO_MIB: u64 = 2 << 20;

/// One step of the plan. With `placed_by: Some(i)`, the op's `addr` is an offset into the
/// region that step `i` (counted over all batches) placed, so it must be in a later batch.
#[derive(Clone, Copy, Debug)]
pub struct Planned {
    pub what: &'static str,
    pub op: Op,
    pub expect: Expect,
    pub placed_by: Option<usize>,
}

const fn at(what: &'static str, op: Op, expect: Expect) -> Planned {
    Planned {
        what,
        op,
        expect,
        placed_by: None,
    }
}

const fn placed(what: &'static str, by: usize, op: Op, expect: Expect) -> Planned {
    Planned {
        what,
        op,
        expect,
        placed_by: Some(by),
    }
}

/// `op` with `base` added to its address.
pub fn relocate(op: Op, base: u64) -> Op {
    let moved = |addr: u64| addr.wrapping_add(base);
    match op {
        Op::TouchRead { space, addr } => Op::TouchRead {
            space,
            addr: moved(addr),
        },
        Op::TouchWrite { space, addr, value } => Op::TouchWrite {
            space,
            addr: moved(addr),
            value,
        },
        Op::TouchExec { space, addr } => Op::TouchExec {
            space,
            addr: moved(addr),
        },
        other => other,
    }
}

/// The scenario in batches; the second batch touches what the first placed anywhere or at random.
///
/// Spaces 1, 2 and 3 (a fresh guest numbers its spaces from 1). In space 1:
/// `0x400000` 8 pages u-rw-, pages 0-4 and 6 written, then pages 2-3 protected u-r-- and page
/// 6 unmapped (four regions); `0x600000` 2 pages u-r-x, page 0 executed; `0x700000` kernel-only
/// --rw-; `0x800000` 2 pages written, then protected to PROT_NONE; two adjacent u-rw- regions at
/// `0x900000` and `0x902000`, written on both sides of their boundary; 4 pages placed anywhere
/// 2 MiB-aligned and 16 pages u-r-- placed at random, one page of each touched later.
/// Space 2: `0x400000` u-r-- (the same address as space 1, read there), `0x1000` u-r-x executed,
/// 2 MiB u-rw- at random, untouched. Space 3: 1 MiB u-rw- at `0x10000000` with two pages
/// written in its middle, the top page of user space, untouched, and 2 pages of shared memory
/// at `0x20000000`, page 0 written. Space 4 is space 3's fork: it reads the first written page
/// (still copy-on-write in both), writes the second (its own copy now) and page 1 of the shared
/// region, which space 3 then reads.
pub fn batches() -> Vec<Vec<Planned>> {
    use Expect::*;
    use Op::*;
    let (a, b, c) = (1, 2, 3);
    let write = |space, addr, value| {
        at(
            "write from ring 3",
            TouchWrite { space, addr, value },
            Value(value),
        )
    };
    let segv = Fault {
        kind: FaultKind::SegvAccess,
        at: None,
    };
    let first = vec![
        at("create space 1", CreateSpace, Value(1)),
        at("create space 2", CreateSpace, Value(2)),
        at("create space 3", CreateSpace, Value(3)),
        // Space 1.
        at(
            "map 8 pages u-rw-",
            MapFixed {
                space: a,
                addr: 0x40_0000,
                size: 0x8000,
                access: URW,
            },
            At(0x40_0000),
        ),
        write(a, 0x40_0000, 1),
        write(a, 0x40_1000, 2),
        write(a, 0x40_2000, 3),
        write(a, 0x40_3000, 4),
        write(a, 0x40_4000, 5),
        at(
            "protect pages 2-3 u-r-- (split in 3)",
            Protect {
                space: a,
                addr: 0x40_2000,
                size: 0x2000,
                access: UR,
            },
            Ok,
        ),
        write(a, 0x40_6000, 7),
        at(
            "unmap page 6, written (split the last piece; its PTE goes and is flushed)",
            Unmap {
                space: a,
                addr: 0x40_6000,
                size: 0x1000,
            },
            Ok,
        ),
        at(
            "write to the read-only piece faults",
            TouchWrite {
                space: a,
                addr: 0x40_2000,
                value: 6,
            },
            segv,
        ),
        at(
            "map 2 pages u-r-x",
            MapFixed {
                space: a,
                addr: 0x60_0000,
                size: 0x2000,
                access: URX,
            },
            At(0x60_0000),
        ),
        at(
            "execute the first page from ring 3",
            TouchExec {
                space: a,
                addr: 0x60_0000,
            },
            Ok,
        ),
        at(
            "map a kernel-only page --rw-",
            MapFixed {
                space: a,
                addr: 0x70_0000,
                size: 0x1000,
                access: KRW,
            },
            At(0x70_0000),
        ),
        at(
            "user read of the kernel-only page faults",
            TouchRead {
                space: a,
                addr: 0x70_0000,
            },
            segv,
        ),
        at(
            "map 2 pages u-rw-",
            MapFixed {
                space: a,
                addr: 0x80_0000,
                size: 0x2000,
                access: URW,
            },
            At(0x80_0000),
        ),
        write(a, 0x80_0000, 7),
        at(
            "protect to PROT_NONE",
            Protect {
                space: a,
                addr: 0x80_0000,
                size: 0x2000,
                access: NONE,
            },
            Ok,
        ),
        at(
            "read of the PROT_NONE page faults",
            TouchRead {
                space: a,
                addr: 0x80_0000,
            },
            segv,
        ),
        at(
            "map 2 pages u-rw-",
            MapFixed {
                space: a,
                addr: 0x90_0000,
                size: 0x2000,
                access: URW,
            },
            At(0x90_0000),
        ),
        at(
            "map 2 adjacent pages u-rw-",
            MapFixed {
                space: a,
                addr: 0x90_2000,
                size: 0x2000,
                access: URW,
            },
            At(0x90_2000),
        ),
        write(a, 0x90_1000, 8),
        write(a, 0x90_2000, 9),
        at(
            "map 4 pages anywhere, 2 MiB aligned",
            MapAnywhere {
                space: a,
                size: 0x4000,
                align: TWO_MIB,
                access: URW,
            },
            AlignedTo(TWO_MIB),
        ),
        at(
            "map 16 pages u-r-- at random, 64 KiB aligned",
            MapRandomized {
                space: a,
                size: 0x1_0000,
                align: 0x1_0000,
                access: UR,
            },
            AlignedTo(0x1_0000),
        ),
        // Space 2.
        at(
            "map 4 pages u-r-- where space 1 has its own",
            MapFixed {
                space: b,
                addr: 0x40_0000,
                size: 0x4000,
                access: UR,
            },
            At(0x40_0000),
        ),
        at(
            "read sees zero, not space 1's data",
            TouchRead {
                space: b,
                addr: 0x40_1000,
            },
            Value(0),
        ),
        at(
            "map the lowest user page u-r-x",
            MapFixed {
                space: b,
                addr: 0x1000,
                size: 0x1000,
                access: URX,
            },
            At(0x1000),
        ),
        at(
            "execute it from ring 3",
            TouchExec {
                space: b,
                addr: 0x1000,
            },
            Ok,
        ),
        at(
            "map 2 MiB at random, untouched",
            MapRandomized {
                space: b,
                size: TWO_MIB,
                align: TWO_MIB,
                access: URW,
            },
            AlignedTo(TWO_MIB),
        ),
        // Space 3.
        at(
            "map 1 MiB u-rw-",
            MapFixed {
                space: c,
                addr: 0x1000_0000,
                size: 0x10_0000,
                access: URW,
            },
            At(0x1000_0000),
        ),
        write(c, 0x1008_0000, 10),
        write(c, 0x1008_1000, 12),
        at(
            "map the top page of user space, untouched",
            MapFixed {
                space: c,
                addr: USER_SPACE_END - 0x1000,
                size: 0x1000,
                access: URW,
            },
            At(USER_SPACE_END - 0x1000),
        ),
        at(
            "map 2 pages of shared memory u-rw-",
            MapFixed {
                space: c,
                addr: 0x2000_0000,
                size: 0x2000,
                access: SHARED_URW,
            },
            At(0x2000_0000),
        ),
        write(c, 0x2000_0000, 13),
        // Space 4.
        at("fork space 3 into space 4", Fork { space: c }, Value(4)),
        at(
            "the child reads its parent's page, still copy-on-write",
            TouchRead {
                space: 4,
                addr: 0x1008_0000,
            },
            Value(10),
        ),
        write(4, 0x1008_1000, 14),
        write(4, 0x2000_1000, 15),
        at(
            "the parent reads what the child wrote to shared memory",
            TouchRead {
                space: c,
                addr: 0x2000_1000,
            },
            Value(15),
        ),
        at(
            "the parent keeps its own copy of the page the child wrote",
            TouchRead {
                space: c,
                addr: 0x1008_1000,
            },
            Value(12),
        ),
    ];
    let anywhere = first
        .iter()
        .position(|p| matches!(p.op, MapAnywhere { .. }))
        .expect("the first batch maps anywhere");
    let random = first
        .iter()
        .position(|p| matches!(p.op, MapRandomized { space: 1, .. }))
        .expect("the first batch maps at random in space 1");
    let second = vec![
        placed(
            "write the second page of the 2 MiB-aligned region",
            anywhere,
            TouchWrite {
                space: a,
                addr: 0x1000,
                value: 11,
            },
            Value(11),
        ),
        placed(
            "read the middle of the random region",
            random,
            TouchRead {
                space: a,
                addr: 0x8000,
            },
            Value(0),
        ),
    ];
    vec![first, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_steps_refer_to_earlier_batches() {
        let batches = batches();
        let mut seen = 0;
        for batch in &batches {
            for planned in batch {
                if let Some(by) = planned.placed_by {
                    assert!(by < seen, "{planned:?} refers to its own batch or later");
                }
            }
            seen += batch.len();
        }
        assert!(batches.iter().flatten().count() <= shared_mm::abi::MAX_BATCH);
    }

    #[test]
    fn relocate_moves_touches_only() {
        let touch = Op::TouchRead {
            space: 1,
            addr: 0x10,
        };
        assert_eq!(
            relocate(touch, 0x40_0000),
            Op::TouchRead {
                space: 1,
                addr: 0x40_0010
            }
        );
        assert_eq!(relocate(Op::CreateSpace, 0x1000), Op::CreateSpace);
    }
}
