//! Header lines (`# key: value`): which keys the format knows, how their values are checked,
//! and the run settings (seed, RAM, CPUs, backend, seeded bugs, kernel) they record.

use crate::ops::number;
use crate::reproduced::{Reproduced, ReproducedError};
use bounded_io::excerpt::excerpt;
use guest_mm::Bug;
use mm_driver::schedule::{Schedule, ScheduleError};
use mm_driver::Backend;
use std::fmt;

/// Why a known header's value is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    NotANumber {
        key: String,
        value: String,
    },
    UnknownBackend {
        value: String,
    },
    UnknownFeature {
        name: String,
    },
    /// A CPU count outside 1 to `MAX_CPUS`.
    CpusOutOfRange {
        value: u64,
    },
    /// A `schedule` that does not parse.
    Schedule(ScheduleError),
    /// A `reproduced` count that does not parse.
    Reproduced(ReproducedError),
    /// A known key given a second time.
    Twice {
        key: String,
        first_line: usize,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotANumber { key, value } => {
                write!(
                    f,
                    "header {}: {:?} is not a number",
                    excerpt(key),
                    excerpt(value)
                )
            }
            HeaderError::UnknownBackend { value } => {
                write!(f, "header backend: {:?} is not kvm or sim", excerpt(value))
            }
            HeaderError::UnknownFeature { name } => {
                let known: Vec<&str> = Bug::ALL.iter().map(|b| b.feature()).collect();
                write!(
                    f,
                    "header guest-features: unknown feature {:?} (the seeded bugs are {})",
                    excerpt(name),
                    known.join(", ")
                )
            }
            HeaderError::CpusOutOfRange { value } => write!(
                f,
                "header cpus: {value} is not 1 to {}",
                shared_mm::smp::MAX_CPUS
            ),
            HeaderError::Schedule(e) => write!(f, "header {e}"),
            HeaderError::Reproduced(e) => write!(f, "{e}"),
            HeaderError::Twice { key, first_line } => {
                write!(
                    f,
                    "header {} is given twice (first on line {first_line})",
                    excerpt(key)
                )
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// Keys whose value is a number: the run's setup, and what `vmm fuzz` records about a finding.
const NUMBER_KEYS: [&str; 6] = [
    "seed",
    "memory-mib",
    "cpus",
    "job",
    "found-after-ops",
    "original-length",
];

/// Whether `key` is a header key: a lowercase word of letters, digits and dashes.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `key` is one the format knows: a file may give it once. Any other key is free text
/// and may repeat.
pub fn is_known(key: &str) -> bool {
    NUMBER_KEYS.contains(&key)
        || [
            "backend",
            "guest-features",
            "kernel",
            "schedule",
            "reproduced",
        ]
        .contains(&key)
}

fn features(value: &str) -> Result<Vec<String>, HeaderError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| match Bug::from_feature(name) {
            Some(_) => Ok(name.to_string()),
            None => Err(HeaderError::UnknownFeature { name: name.into() }),
        })
        .collect()
}

/// A header value, typed by its key.
enum Value<'t> {
    Number(u64),
    Backend(Backend),
    Features(Vec<String>),
    Schedule(Schedule),
    /// A checked value `vmm fuzz` records about a finding (not a setting).
    Recorded,
    Text(&'t str),
}

fn value<'t>(key: &str, text: &'t str) -> Result<Value<'t>, HeaderError> {
    Ok(match key {
        "backend" => Value::Backend(
            text.parse()
                .map_err(|_| HeaderError::UnknownBackend { value: text.into() })?,
        ),
        "guest-features" => Value::Features(features(text)?),
        "schedule" => Value::Schedule(text.parse().map_err(HeaderError::Schedule)?),
        "reproduced" => {
            text.parse::<Reproduced>()
                .map_err(HeaderError::Reproduced)?;
            Value::Recorded
        }
        key if NUMBER_KEYS.contains(&key) => {
            let n = number(text).ok_or_else(|| HeaderError::NotANumber {
                key: key.into(),
                value: text.into(),
            })?;
            if key == "cpus" && !(1..=u64::from(shared_mm::smp::MAX_CPUS)).contains(&n) {
                return Err(HeaderError::CpusOutOfRange { value: n });
            }
            Value::Number(n)
        }
        _ => Value::Text(text),
    })
}

/// Checks one header line's value; unknown keys are free text and always pass.
pub fn check(key: &str, text: &str) -> Result<(), HeaderError> {
    value(key, text).map(drop)
}

/// What a header records about the run it belongs to; `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The seed of the guest's randomized placement.
    pub seed: Option<u64>,
    pub memory_mib: Option<u64>,
    /// CPUs; a header names them only when there are several.
    pub cpus: Option<u32>,
    pub backend: Option<Backend>,
    /// Seeded bugs (cargo features of the guest); `Some(empty)` says: none.
    pub guest_features: Option<Vec<String>>,
    /// The kernel: a path, or `embedded`.
    pub kernel: Option<String>,
    /// With several CPUs on the sim, the schedule its rounds follow (`mm_driver::schedule`).
    pub schedule: Option<Schedule>,
}

/// The header line that records the schedule a sim of several CPUs ran, unless every round ran
/// as the default would.
pub fn schedule_line(schedule: Option<&Schedule>) -> Option<(String, String)> {
    let schedule = schedule.filter(|s| !s.is_empty())?;
    Some(("schedule".into(), schedule.to_string()))
}

/// The header line that records how many of the replays before saving showed the failure.
pub fn reproduced_line(reproduced: Option<Reproduced>) -> Option<(String, String)> {
    Some(("reproduced".into(), reproduced?.to_string()))
}

/// The header line that records `cpus` CPUs, if they are several (one is the default, and a
/// one-CPU run's files stay as they were).
pub fn cpus_line(cpus: u32) -> Option<(String, String)> {
    (cpus > 1).then(|| ("cpus".into(), cpus.to_string()))
}

impl Settings {
    /// The settings of `header` (where a key repeats, its first line counts), every value
    /// checked.
    pub fn of(header: &[(String, String)]) -> Result<Settings, HeaderError> {
        let mut settings = Settings::default();
        for (key, text) in header.iter().rev() {
            match (key.as_str(), value(key, text)?) {
                ("seed", Value::Number(n)) => settings.seed = Some(n),
                ("memory-mib", Value::Number(n)) => settings.memory_mib = Some(n),
                // In range: checked by `value`.
                ("cpus", Value::Number(n)) => settings.cpus = u32::try_from(n).ok(),
                (_, Value::Backend(b)) => settings.backend = Some(b),
                (_, Value::Features(list)) => settings.guest_features = Some(list),
                (_, Value::Schedule(schedule)) => settings.schedule = Some(schedule),
                ("kernel", Value::Text(path)) => settings.kernel = Some(path.to_string()),
                _ => {}
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(lines: &[(&str, &str)]) -> Vec<(String, String)> {
        lines
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_are_typed_from_the_header() {
        let settings = Settings::of(&header(&[
            ("failure", "x"),
            ("seed", "0x10"),
            ("memory-mib", "64"),
            ("cpus", "2"),
            ("backend", "sim"),
            ("guest-features", "bug-stale-pte, bug-overlap"),
            ("kernel", "embedded"),
            ("job", "1"),
            ("schedule", "2: cpu1:4 cpu0"),
        ]))
        .expect("valid");
        assert_eq!(
            settings,
            Settings {
                seed: Some(16),
                memory_mib: Some(64),
                cpus: Some(2),
                backend: Some(Backend::Sim),
                guest_features: Some(vec!["bug-stale-pte".into(), "bug-overlap".into()]),
                kernel: Some("embedded".into()),
                schedule: Some("2: cpu1:4 cpu0".parse().expect("a schedule")),
            }
        );
        assert_eq!(Settings::of(&[]), Ok(Settings::default()));
        let empty = Settings::of(&header(&[("guest-features", "")])).expect("valid");
        assert_eq!(empty.guest_features, Some(Vec::new()));
    }

    #[test]
    fn a_bad_schedule_is_refused_with_its_reason() {
        let refused = Settings::of(&header(&[("schedule", "2: cpu1:x")])).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("header schedule: \"cpu1:x\" is not a slice"),
            "{refused}"
        );
    }

    #[test]
    fn bad_values_of_known_keys_are_refused_and_free_text_passes() {
        assert_eq!(
            Settings::of(&header(&[("memory-mib", "lots")])),
            Err(HeaderError::NotANumber {
                key: "memory-mib".into(),
                value: "lots".into()
            })
        );
        assert!(check("found-after-ops", "1e3").is_err());
        for cpus in ["0", "9"] {
            assert!(matches!(
                check("cpus", cpus),
                Err(HeaderError::CpusOutOfRange { .. })
            ));
        }
        assert!(check("cpus", "8").is_ok());
        assert!(check("backend", "KVM").is_err());
        assert!(check("detail", "anything: at all").is_ok());
        assert!(check("kernel", "/any/path").is_ok());
        assert!(check("reproduced", "3/3").is_ok());
        assert!(matches!(
            check("reproduced", "4/3"),
            Err(HeaderError::Reproduced(_))
        ));
        assert!(is_known("reproduced"));
        assert!(is_key("memory-mib") && !is_key("Memory") && !is_key("a b") && !is_key(""));
    }
}
