//! Random sources for randomized placement, and an unbiased-to-2^-76 bounded draw.
#![forbid(unsafe_code)]

/// A source of uniformly distributed 64-bit values.
pub trait RandomSource {
    /// The next value.
    fn next_u64(&mut self) -> u64;
}

/// Vigna's SplitMix64: small, fast, deterministic for a given seed. Not cryptographic;
/// the guest kernel can seed it from RDRAND/RDSEED or the host.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A value in `0..bound` (`bound > 0`) from exactly two draws: `floor(r * bound / 2^128)`
/// for a 128-bit `r`.
///
/// Each result is hit by either `floor(2^128 / bound)` or `ceil(2^128 / bound)` of the
/// 2^128 values of `r`, so its probability differs from `1 / bound` by less than 2^-128,
/// a relative error below `bound / 2^128`. No loop: the time is bounded.
pub(super) fn uniform_below(rng: &mut impl RandomSource, bound: u64) -> u64 {
    let high = u128::from(rng.next_u64());
    let low = u128::from(rng.next_u64());
    let bound = u128::from(bound);
    // r * bound = high * bound * 2^64 + low * bound. `high * bound < 2^128 - 2^65 + 2` and
    // `(low * bound) >> 64 < 2^64`, so the sum below cannot overflow, and dropping the low
    // 64 bits of `low * bound` cannot change the quotient by 2^128 (only a carry could,
    // and the dropped part is below 2^64).
    let upper = high * bound + ((low * bound) >> 64);
    (upper >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed([u64; 2], usize);

    impl RandomSource for Fixed {
        fn next_u64(&mut self) -> u64 {
            self.1 += 1;
            self.0[(self.1 - 1) % 2]
        }
    }

    #[test]
    fn splitmix64_reference_values() {
        // Reference output of the published SplitMix64 for seed 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniform_below_extremes() {
        assert_eq!(uniform_below(&mut Fixed([0, 0], 0), 10), 0);
        assert_eq!(uniform_below(&mut Fixed([u64::MAX, u64::MAX], 0), 10), 9);
        assert_eq!(uniform_below(&mut Fixed([u64::MAX, u64::MAX], 0), 1), 0);
        assert_eq!(
            uniform_below(&mut Fixed([u64::MAX, u64::MAX], 0), u64::MAX),
            u64::MAX - 1
        );
        // r = 2^127 is exactly half way.
        assert_eq!(uniform_below(&mut Fixed([1 << 63, 0], 0), 10), 5);
    }
}
