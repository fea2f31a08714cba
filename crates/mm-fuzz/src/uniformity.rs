//! The placement uniformity rule: `map-randomized` draws of one size and alignment, repeated on
//! one layout of a space, must be uniform over the layout's valid positions. Every [`DRAWS`]
//! such draws are a chi-square test over [`CELLS`] equal cells of positions (by rank), with
//! its p-value from the exact distribution ([`ExactTail`]). The placement probe
//! ([`super::probe`]) makes such runs on purpose; random fuzzing rarely repeats a layout.
//!
//! **False alarms.** A campaign spends [`CAMPAIGN_ALPHA`] over all its tests: test `i` (from 1)
//! of a job of `J` may reject at `alpha_i = CAMPAIGN_ALPHA / (J * i * (i + 1))`, and the sum
//! over every test of every job is at most `CAMPAIGN_ALPHA`, however long the campaign runs.
//! The p-values are exact for the multinomial (not the chi-square approximation, which
//! understates this tail by orders of magnitude), so the bound holds as stated. A replay
//! counts its tests from 1 as one job, so it rejects whatever the campaign rejected.
#![forbid(unsafe_code)]

use super::chi_square::{statistic, ExactTail};
use super::model::placement::{holes, starts_in};
use super::model::Model;
use shared_mm::abi::{Op, OpResult, Status};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Draws per test.
pub const DRAWS: u64 = 128;
/// Cells per test: a layout's positions split into this many runs of equal length, so it is
/// tested only when its number of positions is a multiple of it.
pub const CELLS: u64 = 9;
/// The false-alarm rate of a whole campaign, over all its jobs and tests.
pub const CAMPAIGN_ALPHA: f64 = 1e-6;
/// Regions a space may have for its layout to be followed: the probe's have at most 6, and
/// comparing layouts costs a scan of the regions.
const SMALL_LAYOUT: usize = 64;
/// The largest statistic the exact tail is computed to (p about 6e-27 for 128 draws over 9
/// cells); a test whose allowed rate is below the tail there is not run.
const MAX_STATISTIC: f64 = 200.0;

/// The exact tail of the statistic for [`DRAWS`] over [`CELLS`], computed once (a few
/// milliseconds in a release build).
fn exact_tail() -> &'static ExactTail {
    static TAIL: OnceLock<ExactTail> = OnceLock::new();
    TAIL.get_or_init(|| ExactTail::new(DRAWS, CELLS, MAX_STATISTIC))
}

/// How a job spends its share of [`CAMPAIGN_ALPHA`]: its number of jobs, and the tests it has
/// run so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spending {
    pub jobs: u64,
    pub tests: u64,
}

impl Default for Spending {
    /// One job that has run no test: a replay's.
    fn default() -> Self {
        Spending { jobs: 1, tests: 0 }
    }
}

impl Spending {
    /// The next test's index (from 1) and the false-alarm rate it may have.
    fn next(&mut self) -> (u64, f64) {
        self.tests += 1;
        let i = self.tests as f64;
        let alpha = CAMPAIGN_ALPHA / (self.jobs.max(1) as f64 * i * (i + 1.0));
        (self.tests, alpha)
    }
}

/// Draws counted so far on one layout of one space.
struct Run {
    size: u64,
    align: u64,
    /// The space's holes when the run started.
    holes: Vec<(u64, u64)>,
    /// Valid positions in them, a multiple of [`CELLS`].
    positions: u64,
    counts: [u64; CELLS as usize],
}

impl Run {
    /// A run on `holes`, if its positions can be tested.
    fn new(size: u64, align: u64, holes: Vec<(u64, u64)>) -> Option<Run> {
        let positions: u64 = holes
            .iter()
            .filter_map(|&hole| starts_in(hole, size, align).map(|(_, count)| count))
            .sum();
        (positions >= CELLS && positions.is_multiple_of(CELLS)).then_some(Run {
            size,
            align,
            holes,
            positions,
            counts: [0; CELLS as usize],
        })
    }

    /// The rank of `addr` among the run's valid positions, in address order.
    fn rank(&self, addr: u64) -> Option<u64> {
        let mut before = 0;
        for &hole in &self.holes {
            let Some((first, count)) = starts_in(hole, self.size, self.align) else {
                continue;
            };
            let offset = addr.checked_sub(first);
            match offset.map(|o| (o / self.align, o % self.align)) {
                Some((k, 0)) if k < count => return Some(before + k),
                _ => before += count,
            }
        }
        None
    }
}

/// The rule's state over a session: one run per space, and the false-alarm budget.
#[derive(Default)]
pub struct Uniformity {
    runs: HashMap<u32, Run>,
    spending: Spending,
}

impl Uniformity {
    pub fn new(spending: Spending) -> Self {
        Uniformity {
            runs: HashMap::new(),
            spending,
        }
    }

    /// The budget as spent so far.
    pub fn spending(&self) -> Spending {
        self.spending
    }

    /// Judges `op`'s result `got`, with `model` as it was before `op`: why the run it ends is
    /// not uniform, if it ends one that is not.
    pub fn observe(&mut self, op: &Op, got: &OpResult, model: &Model) -> Option<String> {
        if got.status != Status::Ok {
            return None;
        }
        let (space, size, align) = match *op {
            Op::MapRandomized {
                space, size, align, ..
            } => (space, size, align),
            Op::DestroySpace { space } => {
                self.runs.remove(&space);
                return None;
            }
            _ => return None,
        };
        let layout = model.spaces.get(&space)?;
        if layout.regions.len() > SMALL_LAYOUT {
            self.runs.remove(&space);
            return None;
        }
        let now: Vec<(u64, u64)> = holes(layout).collect();
        let same = self
            .runs
            .get(&space)
            .is_some_and(|r| (r.size, r.align, &r.holes) == (size, align, &now));
        if !same {
            match Run::new(size, align, now) {
                Some(run) => self.runs.insert(space, run),
                None => self.runs.remove(&space),
            };
        }
        let run = self.runs.get_mut(&space)?;
        let cell = run.rank(got.addr)? / (run.positions / CELLS);
        run.counts[cell as usize] += 1;
        if run.counts.iter().sum::<u64>() < DRAWS {
            return None;
        }
        let counts = std::mem::replace(&mut run.counts, [0; CELLS as usize]);
        let (test, alpha) = self.spending.next();
        let p = exact_tail().p_value(&counts);
        let critical = exact_tail().critical(alpha)?;
        (p <= alpha).then(|| {
            format!(
                "space {space}: {DRAWS} draws of map-randomized size {size:#x} align {align:#x} \
                 over the {} valid positions of {} hole(s) fell {counts:?} into {CELLS} equal \
                 cells by rank: chi-square {:.1}, p = {p:.1e} (exact), above the {critical:.1} \
                 that test {test} of this job may reach (false-alarm rate {alpha:.1e})",
                run.positions,
                run.holes.len(),
                statistic(&counts),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_spent_over_every_test_stays_below_the_campaigns() {
        let mut spending = Spending { jobs: 4, tests: 0 };
        let total: f64 = (0..100_000).map(|_| spending.next().1).sum();
        assert!(total < CAMPAIGN_ALPHA / 4.0, "{total:e}");
        assert!(total > 0.99 * CAMPAIGN_ALPHA / 4.0, "{total:e}");
    }

    #[test]
    fn a_lean_to_half_the_positions_is_far_past_what_the_early_tests_allow() {
        // Draws from half the positions give a statistic about equal to the draws (128). The
        // first test of a one-job campaign rejects at about a third of that; the 100th test
        // of a 64-job campaign (1.6 million operations per job) below it still.
        let critical = |jobs: f64, i: f64| {
            let alpha = CAMPAIGN_ALPHA / (jobs * i * (i + 1.0));
            exact_tail().critical(alpha).expect("in the table")
        };
        let (first, hundredth) = (critical(1.0, 1.0), critical(64.0, 100.0));
        assert!(first < 50.0 && hundredth < 100.0, "{first} {hundredth}");
    }
}
