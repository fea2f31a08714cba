//! Moving a reproducer's addresses down to the bottom of the address space, for reading.
//!
//! A fuzzer picks addresses anywhere in the 128 TiB user range; a reproducer reads better
//! when its regions start at 0x1000. Shifting every address of one space by the same amount
//! keeps the layout of that space, and shifting by a multiple of a page-table level's span
//! also keeps which addresses share a table at that level, so the candidates try the largest
//! spans first. A space with placements the MM chooses (`map-anywhere`, `map-randomized`) is
//! left alone: later operations aim at those results.
#![forbid(unsafe_code)]

use shared_mm::abi::Op;

const PAGE: u64 = 4096;

/// Spans of the page-table levels, largest first: shifting by a multiple of one keeps every
/// table of that level and below.
const SPANS: [u64; 4] = [1 << 39, 1 << 30, 1 << 21, PAGE];

/// Copies of `ops` with every address of `space` (every space's, for `None`: a fork's family
/// shares its layout) among the operations at `kept` moved down, most structure-preserving
/// first. Empty when the addresses already start low or a placement was chosen by the MM.
pub fn candidates(ops: &[Op], kept: &[usize], space: Option<u32>) -> Vec<Vec<Op>> {
    let of_space = || {
        kept.iter().map(|&i| (i, ops[i])).filter(move |(_, op)| {
            op.space().is_some() && space.is_none_or(|s| op.space() == Some(s))
        })
    };
    if of_space().any(|(_, op)| matches!(op, Op::MapAnywhere { .. } | Op::MapRandomized { .. })) {
        return Vec::new();
    }
    let Some(lowest) = of_space()
        .filter_map(|(_, mut op)| op.addr_mut().map(|a| *a))
        .min()
    else {
        return Vec::new();
    };
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut deltas: Vec<u64> = Vec::new();
    for span in SPANS {
        let target = lowest % span;
        let target = if target < PAGE {
            target + span.max(PAGE)
        } else {
            target
        };
        let Some(delta) = lowest.checked_sub(target).filter(|&d| d > 0) else {
            continue;
        };
        if deltas.contains(&delta) {
            continue;
        }
        deltas.push(delta);
        let mut shifted = ops.to_vec();
        for (i, _) in of_space() {
            if let Some(addr) = shifted[i].addr_mut() {
                *addr -= delta;
            }
        }
        out.push(shifted);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(addr: u64) -> Op {
        Op::MapFixed {
            space: 1,
            addr,
            size: 0x4000,
            access: 0xb,
        }
    }

    #[test]
    fn addresses_move_down_keeping_their_offsets_within_each_span() {
        let ops = [
            Op::CreateSpace,
            map(0x1760_4000),
            Op::TouchRead {
                space: 1,
                addr: 0x1760_7008,
            },
        ];
        let all = candidates(&ops, &[0, 1, 2], Some(1));
        let firsts: Vec<u64> = all
            .iter()
            .map(|c| match c[1] {
                Op::MapFixed { addr, .. } => addr,
                _ => 0,
            })
            .collect();
        // The 2 MiB span keeps the offset within the last-level table (0x4000); the page span
        // goes down to 0x1000.
        assert_eq!(firsts, [0x4000, 0x1000]);
        assert_eq!(
            all[0][2],
            Op::TouchRead {
                space: 1,
                addr: 0x7008
            }
        );
        assert_eq!(
            all[1][2],
            Op::TouchRead {
                space: 1,
                addr: 0x4008
            }
        );
    }

    #[test]
    fn a_space_with_chosen_placements_or_already_low_is_left_alone() {
        let chosen = [
            Op::CreateSpace,
            Op::MapAnywhere {
                space: 1,
                size: 0x1000,
                align: 0x1000,
                access: 0xb,
            },
            map(0x5000_0000),
        ];
        assert!(candidates(&chosen, &[0, 1, 2], Some(1)).is_empty());
        assert!(candidates(&[Op::CreateSpace, map(0x1000)], &[0, 1], None).is_empty());
    }
}
