//! The exhaustion skeleton: the shortest shape of a failure that needs RAM filled to one exact
//! level, found by bisecting that level.
//!
//! A failure found under memory pressure (an allocator bug at the end of RAM, say) may show only
//! when frames run out at one operation and not one page earlier or later. Dropping operations
//! or halving sizes never lands in a window one page wide, so delta debugging leaves the long
//! sequence that happened to fill RAM. The skeleton is one space with one region: a `populate`
//! of `fill` pages, then `tail` demand faults on the pages after them. Whether a fill shows the
//! failure, runs out of memory or stops short of it is monotone in `fill`, so bisection finds
//! the level in about log2(RAM pages) replays for each tail length.
#![forbid(unsafe_code)]

use crate::error::FuzzError;
use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::Op;

const PAGE: u64 = 4096;

/// Where the skeleton's region starts: the lowest page a user space maps.
const BASE: u64 = 0x1000;

/// Demand faults tried after the fill, fewest first: a frame handed out twice shows only once
/// something maps it again.
const MAX_TAIL: u64 = 2;

/// How one skeleton ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It failed with the target signature.
    Fails,
    /// Memory ran out before the failure showed: the fill is too large.
    OutOfMemory,
    /// It ran without the target failure and without running out: the fill is too small.
    Short,
}

/// One space, one region of `fill + tail` read-write pages, a populate of the first `fill`,
/// and a write to each of the `tail` pages after them.
pub fn skeleton(fill: u64, tail: u64) -> Vec<Op> {
    let size = fill.saturating_add(tail).saturating_mul(PAGE);
    let mut ops = vec![
        Op::CreateSpace,
        Op::MapFixed {
            space: 1,
            addr: BASE,
            size,
            access: USER | READ | WRITE,
        },
        Op::Populate {
            space: 1,
            addr: BASE,
            size: fill.saturating_mul(PAGE),
        },
    ];
    ops.extend((0..tail).map(|i| Op::TouchWrite {
        space: 1,
        addr: BASE + (fill + i) * PAGE,
        value: 1,
    }));
    ops
}

/// The first skeleton (fewest faults after the fill, then the fill bisection finds) that
/// `probe` says fails, trying fills of 1 to `max_fill` pages and spending at most `budget`
/// probes (decremented as they are spent).
pub fn search(
    max_fill: u64,
    budget: &mut usize,
    mut probe: impl FnMut(&[Op]) -> Result<Probe, FuzzError>,
) -> Result<Option<Vec<Op>>, FuzzError> {
    for tail in 0..=MAX_TAIL {
        let (mut low, mut high) = (1u64, max_fill);
        while low <= high && *budget > 0 {
            *budget -= 1;
            let fill = low + (high - low) / 2;
            let candidate = skeleton(fill, tail);
            match probe(&candidate)? {
                Probe::Fails => return Ok(Some(candidate)),
                Probe::OutOfMemory => high = fill - 1,
                Probe::Short => low = fill + 1,
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_and_tail(ops: &[Op]) -> (u64, u64) {
        match ops[2] {
            Op::Populate { size, .. } => (size / PAGE, ops.len() as u64 - 3),
            _ => panic!("not a skeleton: {ops:?}"),
        }
    }

    /// A fake allocator of `frames` frames whose last frame shows the bug only when one more
    /// fault follows the fill that takes it.
    fn end_of_ram(frames: u64) -> impl FnMut(&[Op]) -> Result<Probe, FuzzError> {
        move |ops| {
            let (fill, tail) = fill_and_tail(ops);
            Ok(match fill {
                f if f > frames => Probe::OutOfMemory,
                f if f == frames && tail >= 1 => Probe::Fails,
                _ => Probe::Short,
            })
        }
    }

    #[test]
    fn bisection_finds_a_window_one_page_wide() {
        let mut budget = 100;
        let found = search(4096, &mut budget, end_of_ram(3158)).expect("no VM involved");
        let found = found.expect("the window exists");
        assert_eq!(fill_and_tail(&found), (3158, 1));
        // Two bisections of 12 probes at most: the tail of 0 never fails.
        assert!(100 - budget <= 24, "spent {}", 100 - budget);
        assert_eq!(
            found[3],
            Op::TouchWrite {
                space: 1,
                addr: BASE + 3158 * PAGE,
                value: 1
            }
        );
    }

    #[test]
    fn gives_up_within_its_budget() {
        let mut budget = 5;
        let never = |_: &[Op]| Ok(Probe::Short);
        assert_eq!(search(4096, &mut budget, never).expect("no VM"), None);
        assert_eq!(budget, 0);
    }
}
