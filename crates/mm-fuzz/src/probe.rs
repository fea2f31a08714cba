//! The placement probe: small controlled layouts on which `map-randomized` is drawn
//! [`DRAWS`] times each, every draw unmapped again, so that every draw sees the same holes and
//! the uniformity rule ([`super::uniformity`]) can test them. The generator sends a probe after
//! [`PROBE_FIRST`] operations and then every [`PROBE_EVERY`].
#![forbid(unsafe_code)]

use super::model::Model;
use super::uniformity::{Spending, Uniformity, DRAWS};
use mm_scenario::ops::op_to_line;
use shared_mm::abi::access_bits::{READ, USER};
use shared_mm::abi::{Op, OpResult, USER_SPACE_BASE, USER_SPACE_END};

/// Generated operations before the first probe.
pub const PROBE_FIRST: usize = 1_024;
/// Generated operations between two probes.
pub const PROBE_EVERY: usize = 16_384;

const PAGE: u64 = 4096;
/// Where a layout's holes lie: everything below and above is one region each.
const WINDOW: u64 = 0x4000_0000;
/// Read-only, user: nothing in a probe is ever touched, so it costs no frame.
const ACCESS: u32 = USER | READ;

/// A layout: its holes in pages from [`WINDOW`] (start, end), in order, and the placement
/// drawn in it. Its valid positions are a multiple of the rule's cells.
struct Layout {
    holes: &'static [(u64, u64)],
    size_pages: u64,
    align_pages: u64,
}

const LAYOUTS: [Layout; 2] = [
    // One hole of 37 pages, two-page placements: 36 positions, every slot of the gap index
    // a valid start (the draw the guest takes first).
    Layout {
        holes: &[(0, 37)],
        size_pages: 2,
        align_pages: 1,
    },
    // Three unequal holes, one page at 16 KiB: 3 + 7 + 8 = 18 positions, with near misses
    // at the holes' edges (the draws the guest rejects, and its scan).
    Layout {
        holes: &[(1, 14), (20, 47), (50, 83)],
        size_pages: 1,
        align_pages: 4,
    },
];

/// The operations of one probe, its spaces numbered from `first_space`: per layout a new
/// space, its regions around the holes, the draws each followed by an unmap of every hole,
/// and the space destroyed.
pub fn ops(first_space: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    for (layout, space) in LAYOUTS.iter().zip(first_space..) {
        ops.push(Op::CreateSpace);
        ops.extend(regions(layout).map(|(addr, size)| Op::MapFixed {
            space,
            addr,
            size,
            access: ACCESS,
        }));
        let draw = Op::MapRandomized {
            space,
            size: layout.size_pages * PAGE,
            align: layout.align_pages * PAGE,
            access: ACCESS,
        };
        let unmaps = layout.holes.iter().map(|&(start, end)| Op::Unmap {
            space,
            addr: WINDOW + start * PAGE,
            size: (end - start) * PAGE,
        });
        let round: Vec<Op> = std::iter::once(draw).chain(unmaps).collect();
        for _ in 0..DRAWS {
            ops.extend_from_slice(&round);
        }
        ops.push(Op::DestroySpace { space });
    }
    ops
}

/// A probe run on its own, outside a campaign (the self-check runs one after its steps), and
/// judged as a campaign judges it: the model follows the layouts, and the uniformity rule tests
/// each layout's draws. Its tests are the first two of a one-job campaign's, so a correct guest
/// fails it with probability below `CAMPAIGN_ALPHA` (10^-6): 5 x 10^-7 + 1.7 x 10^-7.
pub struct Standalone {
    first_space: u32,
    ops: Vec<Op>,
}

impl Standalone {
    /// The probe for a guest whose next space gets the id `first_space`.
    pub fn new(first_space: u32) -> Self {
        Standalone {
            first_space,
            ops: ops(first_space),
        }
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// What `results` (one per operation) break: the first result the model does not allow,
    /// and every layout whose draws are not uniform. Empty when they hold.
    pub fn judge(&self, results: &[OpResult]) -> Vec<String> {
        if results.len() != self.ops.len() {
            let (got, sent) = (results.len(), self.ops.len());
            return vec![format!(
                "{got} results for the {sent} operations of the probe"
            )];
        }
        let mut model = Model::default().numbering_spaces_from(self.first_space);
        let mut uniformity = Uniformity::new(Spending::default());
        let mut failures = Vec::new();
        for (op, got) in self.ops.iter().zip(results) {
            failures.extend(uniformity.observe(op, got, &model));
            if let Some(m) = model.apply(op, got) {
                let (line, expected) = (op_to_line(op), m.expected);
                failures.push(format!("{line}: expected {expected}, got {got:?}"));
                break;
            }
        }
        failures
    }
}

/// The probe's spaces: one per layout.
pub fn spaces() -> usize {
    LAYOUTS.len()
}

/// The regions of `layout` as (address, size): all of the user range but its holes.
fn regions(layout: &Layout) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut after = USER_SPACE_BASE;
    let holes = layout
        .holes
        .iter()
        .map(|&(start, end)| (WINDOW + start * PAGE, WINDOW + end * PAGE));
    holes
        .chain(std::iter::once((USER_SPACE_END, USER_SPACE_END)))
        .filter_map(move |(start, end)| {
            let region = (after < start).then(|| (after, start - after));
            after = end;
            region
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::placement;
    use crate::uniformity::CELLS;

    #[test]
    fn every_layout_has_its_holes_and_a_testable_number_of_positions() {
        let mut model = Model::default();
        let ops = ops(1);
        // The layout as the model sees it after the first space's regions.
        let maps = ops[1..]
            .iter()
            .take_while(|op| matches!(op, Op::MapFixed { .. }))
            .count();
        for op in &ops[..1 + maps] {
            let got = match *op {
                Op::CreateSpace => OpResult {
                    value: 1,
                    ..OpResult::ok()
                },
                Op::MapFixed { addr, .. } => OpResult {
                    addr,
                    ..OpResult::ok()
                },
                _ => unreachable!(),
            };
            assert_eq!(model.apply(op, &got), None, "{op:?}");
        }
        let holes: Vec<_> = placement::holes(&model.spaces[&1]).collect();
        assert_eq!(holes, [(WINDOW, WINDOW + 37 * PAGE)]);
        for layout in &LAYOUTS {
            let (size, align) = (layout.size_pages * PAGE, layout.align_pages * PAGE);
            let positions: u64 = layout
                .holes
                .iter()
                .filter_map(|&(s, e)| {
                    placement::starts_in((WINDOW + s * PAGE, WINDOW + e * PAGE), size, align)
                })
                .map(|(_, count)| count)
                .sum();
            assert!(positions.is_multiple_of(CELLS) && positions >= CELLS);
        }
        assert_eq!(
            ops.iter().filter(|op| **op == Op::CreateSpace).count(),
            spaces()
        );
    }
}
