//! Pearson's chi-square goodness-of-fit test over equal cells, for the placement uniformity
//! rule, with its p-value from the exact null distribution of the statistic rather than the
//! chi-square approximation: at the p-values the rule tests (10^-7 and below) the
//! approximation understates the tail by orders of magnitude (see the tests), so a false-alarm
//! rate computed from it would be wrong.
#![forbid(unsafe_code)]

/// Pearson's statistic of `counts` over equal cells: the sum over cells of
/// `(count - expected)^2 / expected`, with `expected = draws / cells`.
pub fn statistic(counts: &[u64]) -> f64 {
    let draws: u64 = counts.iter().sum();
    let expected = draws as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&count| (count as f64 - expected).powi(2) / expected)
        .sum()
}

/// The exact upper tail of the statistic for `draws` uniform draws over `cells` equal cells.
/// For equal cells the statistic is `cells / draws * S - draws`, with `S` the sum of the
/// squared counts, so the tail is a function of `S`, computed once by a dynamic program over
/// the cells (the state: draws so far and `S` so far, sums past a cap merged).
#[derive(Clone, Debug)]
pub struct ExactTail {
    draws: u64,
    cells: u64,
    /// `tail[s]`: the probability that `S >= s`, for `s` up to the cap.
    tail: Vec<f64>,
}

impl ExactTail {
    /// The tail for statistics up to `max_statistic` (beyond it nothing can be told apart).
    pub fn new(draws: u64, cells: u64, max_statistic: f64) -> ExactTail {
        let (n, c) = (draws as usize, cells as usize);
        let cap = sum_of_squares(draws, cells, max_statistic) as usize;
        // factor[k] = p^k / k!, with p = 1 / cells.
        let p = 1.0 / cells as f64;
        let mut factor = vec![1.0; n + 1];
        for k in 1..=n {
            factor[k] = factor[k - 1] * p / k as f64;
        }
        // weight[d][s]: the sum over the count vectors of the cells so far, with d draws and
        // (capped) sum of squares s, of the product of p^count / count!.
        let mut weight = vec![vec![0.0; cap + 1]; n + 1];
        weight[0][0] = 1.0;
        for _ in 0..c {
            let mut next = vec![vec![0.0; cap + 1]; n + 1];
            for (d, row) in weight.iter().enumerate() {
                for (s, &w) in row.iter().enumerate().filter(|(_, &w)| w != 0.0) {
                    for k in 0..=n - d {
                        next[d + k][(s + k * k).min(cap)] += w * factor[k];
                    }
                }
            }
            weight = next;
        }
        // Times draws!, the multinomial coefficient's numerator; then summed from the top.
        let scale: f64 = (1..=n).map(|k| k as f64).product();
        let mut tail: Vec<f64> = weight[n].iter().map(|w| w * scale).collect();
        for s in (0..cap).rev() {
            tail[s] += tail[s + 1];
        }
        ExactTail { draws, cells, tail }
    }

    /// The probability that uniform draws give a statistic at least that of `counts` (one per
    /// cell, summing to the draws); past the cap, the tail at the cap (an upper bound).
    pub fn p_value(&self, counts: &[u64]) -> f64 {
        assert_eq!(counts.len() as u64, self.cells, "one count per cell");
        assert_eq!(
            counts.iter().sum::<u64>(),
            self.draws,
            "counts sum to the draws"
        );
        let squares: u64 = counts.iter().map(|c| c * c).sum();
        let at = (squares as usize).min(self.tail.len() - 1);
        self.tail[at]
    }

    /// The smallest statistic whose p-value is at most `alpha`; `None` if the table's cap has a
    /// larger p-value (no test at `alpha` is possible with it).
    pub fn critical(&self, alpha: f64) -> Option<f64> {
        let s = self.tail.iter().position(|&p| p <= alpha)?;
        Some(self.cells as f64 / self.draws as f64 * s as f64 - self.draws as f64)
    }
}

/// The smallest sum of squared counts whose statistic is at least `statistic`.
fn sum_of_squares(draws: u64, cells: u64, statistic: f64) -> u64 {
    ((statistic + draws as f64) * draws as f64 / cells as f64)
        .ceil()
        .max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `P(X >= x)` for `X` chi-square distributed with `df` (even) degrees of freedom: the
    /// approximation the exact tail replaces.
    fn chi_square_survival(x: f64, df: u32) -> f64 {
        let half = x / 2.0;
        let mut term = 1.0;
        let mut sum = 1.0;
        for j in 1..df / 2 {
            term *= half / f64::from(j);
            sum += term;
        }
        (-half).exp() * sum
    }

    #[test]
    fn the_statistic_of_a_perfect_fit_is_zero() {
        assert_eq!(statistic(&[3, 3, 3]), 0.0);
        assert_eq!(statistic(&[6, 0, 3]), 6.0);
    }

    #[test]
    fn small_cases_match_enumeration() {
        // Two draws over two cells: counts (2,0) or (0,2) with probability 1/2, statistic 2;
        // (1,1) with 1/2, statistic 0.
        let tail = ExactTail::new(2, 2, 10.0);
        assert!((tail.p_value(&[1, 1]) - 1.0).abs() < 1e-12);
        assert!((tail.p_value(&[2, 0]) - 0.5).abs() < 1e-12);
        // Rejecting at a statistic of 1 or more rejects exactly the statistic 2.
        assert_eq!(tail.critical(0.5), Some(1.0));
        // Three draws over three cells: all in one cell (3 of 27) gives the statistic 6.
        let tail = ExactTail::new(3, 3, 10.0);
        assert!((tail.p_value(&[0, 3, 0]) - 3.0 / 27.0).abs() < 1e-12);
        assert!((tail.p_value(&[1, 1, 1]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_chi_square_approximation_understates_the_far_tail() {
        // 128 draws over 9 cells, the rule's size: close at p = 0.01, but at the p-values
        // the rule tests the exact tail is far heavier (X^2 >= 80: 5.9e-12 against 4.9e-14).
        let tail = ExactTail::new(128, 9, 200.0);
        // The exact tail at the smallest sum of squares whose statistic reaches `x`.
        let exact = |x: f64| tail.tail[sum_of_squares(128, 9, x) as usize];
        let ratio = |x: f64| exact(x) / chi_square_survival(x, 8);
        assert!((0.9..1.1).contains(&ratio(20.0)), "{}", ratio(20.0));
        assert!(ratio(80.0) > 100.0, "{}", ratio(80.0));
        assert!(ratio(200.0) > 1e10, "{}", ratio(200.0));
    }
}
