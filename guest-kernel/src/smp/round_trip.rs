//! The IPI round trip, timed by CPU 0 with the TSC: a ping to a set of halted CPUs until all
//! have acknowledged, the median over many, against the median cost of reading the TSC itself
//! (which every sample includes once).
#![forbid(unsafe_code)]

use super::cross_call::{self, Request};
use crate::arch::x86_64::tsc::rdtsc;
use shared_mm::smp::CpuSet;

/// Pings per measurement: enough for a stable median, few enough not to slow a boot down
/// (each is a few tens of µs here).
pub const PINGS: usize = 256;

/// What [`measure`] found, in TSC cycles.
pub struct RoundTrip {
    pub targets: CpuSet,
    pub pings: usize,
    pub median: u64,
    /// The median of two back-to-back TSC reads.
    pub tsc_read: u64,
}

/// Pings `targets` [`PINGS`] times, one ping to all of them at once each time.
pub fn measure(targets: CpuSet) -> RoundTrip {
    let mut samples = [0u64; PINGS];
    for sample in samples.iter_mut() {
        let start = rdtsc();
        cross_call::call(targets, Request::Ping);
        *sample = rdtsc().wrapping_sub(start);
    }
    let round_trip = median(&mut samples);
    for sample in samples.iter_mut() {
        let start = rdtsc();
        *sample = rdtsc().wrapping_sub(start);
    }
    RoundTrip {
        targets,
        pings: PINGS,
        median: round_trip,
        tsc_read: median(&mut samples),
    }
}

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}
