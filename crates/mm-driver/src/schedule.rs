//! Schedules of simulated CPUs: which CPU the sim runs when, written so that a person can read
//! one and write one by hand. A schedule lists, for some rounds, the slices the round runs in
//! order: `cpu1:5` runs CPU 1 until its fifth preemption point (a PTE write, a flush, a lock
//! taken or released, a frame allocated or freed, an IPI, an entry to ring 3) and then switches;
//! `cpu0` runs CPU 0 until it waits (for a lock or for acknowledgements) or its batch is done.
//! A slice also ends early when its CPU waits or is done. Past its last slice, and in a round it
//! does not list, a round runs each CPU until it waits or is done, the lowest-numbered runnable
//! CPU first. In text (the `# schedule:` header of a scenario or reproducer), rounds are
//! separated by `;` and numbered from 1 in the order the guest runs them, counting only the
//! rounds where several CPUs have work (a round of one CPU has one schedule; a checked run
//! adds rounds of its own for its snapshots, on CPU 0 alone):
//!
//! ```text
//! # schedule: 2: cpu1:3 cpu0 cpu1; 4: cpu0:12 cpu1
//! ```
#![forbid(unsafe_code)]

use shared_mm::smp::MAX_CPUS;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One stretch of a round on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slice {
    pub cpu: u32,
    /// Preemption points to run before the switch; `None`: until the CPU waits or is done.
    pub points: Option<u32>,
}

impl Slice {
    /// Whether this slice ends with a preemption (its CPU could have gone on).
    pub fn preempts(&self) -> bool {
        self.points.is_some()
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.points {
            Some(points) => write!(f, "cpu{}:{points}", self.cpu),
            None => write!(f, "cpu{}", self.cpu),
        }
    }
}

/// The slices of the rounds a schedule lists, by round (from 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub rounds: BTreeMap<u64, Vec<Slice>>,
}

impl Schedule {
    /// The slices of `round` (from 1); empty if the schedule leaves it to the default.
    pub fn round(&self, round: u64) -> &[Slice] {
        self.rounds.get(&round).map_or(&[], Vec::as_slice)
    }

    /// Preemptions the schedule forces: slices that end while their CPU could go on.
    pub fn preemptions(&self) -> usize {
        self.rounds
            .values()
            .flatten()
            .filter(|s| s.preempts())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (round, slices)) in self.rounds.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{round}:")?;
            for slice in slices {
                write!(f, " {slice}")?;
            }
        }
        Ok(())
    }
}

/// Why a schedule's text does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// A round without `N:` before its slices, or with a number that is not from 1.
    Round(String),
    /// A round listed twice.
    RoundTwice(u64),
    /// A slice that is not `cpuN` or `cpuN:points` with N below the most CPUs and points
    /// from 1.
    Slice(String),
    /// A round with no slices.
    Empty(u64),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Round(text) => write!(
                f,
                "schedule: {text:?} does not start with a round number from 1 and a colon (2: cpu1:3 cpu0)"
            ),
            ScheduleError::RoundTwice(round) => write!(f, "schedule: round {round} is listed twice"),
            ScheduleError::Slice(word) => write!(
                f,
                "schedule: {word:?} is not a slice: cpuN (until it waits or is done) or cpuN:P \
                 (P preemption points, from 1), N below {MAX_CPUS}"
            ),
            ScheduleError::Empty(round) => write!(f, "schedule: round {round} lists no slice"),
        }
    }
}

impl std::error::Error for ScheduleError {}

fn slice(word: &str) -> Result<Slice, ScheduleError> {
    let bad = || ScheduleError::Slice(word.into());
    let rest = word.strip_prefix("cpu").ok_or_else(bad)?;
    let (cpu, points) = match rest.split_once(':') {
        Some((cpu, points)) => (cpu, Some(points)),
        None => (rest, None),
    };
    let cpu = cpu
        .parse::<u32>()
        .ok()
        .filter(|c| *c < MAX_CPUS)
        .ok_or_else(bad)?;
    let points = match points {
        None => None,
        Some(p) => Some(p.parse::<u32>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
    };
    Ok(Slice { cpu, points })
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let mut schedule = Schedule::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (round, slices) = part
                .split_once(':')
                .ok_or_else(|| ScheduleError::Round(part.into()))?;
            let round = round
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| ScheduleError::Round(part.into()))?;
            let slices = slices
                .split_whitespace()
                .map(slice)
                .collect::<Result<Vec<_>, _>>()?;
            if slices.is_empty() {
                return Err(ScheduleError::Empty(round));
            }
            if schedule.rounds.insert(round, slices).is_some() {
                return Err(ScheduleError::RoundTwice(round));
            }
        }
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_round_trips_through_text() {
        let text = "2: cpu1:3 cpu0 cpu1; 4: cpu0:12 cpu1";
        let schedule: Schedule = text.parse().expect("parses");
        assert_eq!(schedule.to_string(), text);
        assert_eq!(schedule.preemptions(), 2);
        assert_eq!(
            schedule.round(2),
            [
                Slice {
                    cpu: 1,
                    points: Some(3)
                },
                Slice {
                    cpu: 0,
                    points: None
                },
                Slice {
                    cpu: 1,
                    points: None
                }
            ]
        );
        assert!(schedule.round(3).is_empty());
        assert_eq!("".parse::<Schedule>(), Ok(Schedule::default()));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, error) in [
            ("cpu1:3", ScheduleError::Round("cpu1:3".into())),
            ("0: cpu1", ScheduleError::Round("0: cpu1".into())),
            ("1: cpu9", ScheduleError::Slice("cpu9".into())),
            ("1: cpu1:0", ScheduleError::Slice("cpu1:0".into())),
            ("1: core1", ScheduleError::Slice("core1".into())),
            ("1:", ScheduleError::Empty(1)),
            ("1: cpu0; 1: cpu1", ScheduleError::RoundTwice(1)),
        ] {
            assert_eq!(text.parse::<Schedule>(), Err(error), "{text}");
        }
    }
}
