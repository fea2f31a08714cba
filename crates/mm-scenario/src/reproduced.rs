//! How often a reproducer showed its failure when replayed before it was saved: the value of
//! the `# reproduced: K/N` header (`vmm fuzz` on kvm with several CPUs, where timing varies).

use bounded_io::excerpt::excerpt;
use std::fmt;
use std::str::FromStr;

/// `failed` of `replays` replays showed the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reproduced {
    pub failed: u32,
    pub replays: u32,
}

impl Reproduced {
    /// Whether every replay showed the failure.
    pub fn always(&self) -> bool {
        self.replays > 0 && self.failed == self.replays
    }
}

impl fmt::Display for Reproduced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.failed, self.replays)
    }
}

/// Why a `reproduced` value is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReproducedError {
    pub value: String,
}

impl fmt::Display for ReproducedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "header reproduced: {:?} is not K/N with K at most N (failing replays of all)",
            excerpt(&self.value)
        )
    }
}

impl std::error::Error for ReproducedError {}

impl FromStr for Reproduced {
    type Err = ReproducedError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refused = || ReproducedError { value: text.into() };
        let (failed, replays) = text.trim().split_once('/').ok_or_else(refused)?;
        let count = |n: &str| n.trim().parse::<u32>().map_err(|_| refused());
        let (failed, replays) = (count(failed)?, count(replays)?);
        if failed > replays {
            return Err(refused());
        }
        Ok(Reproduced { failed, replays })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_and_parse_back() {
        let seen = Reproduced {
            failed: 2,
            replays: 3,
        };
        assert_eq!(seen.to_string(), "2/3");
        assert_eq!("2/3".parse(), Ok(seen));
        assert!(!seen.always());
        assert!("3/3".parse::<Reproduced>().expect("valid").always());
        for bad in ["4/3", "3", "a/3", "-1/3", ""] {
            assert!(bad.parse::<Reproduced>().is_err(), "{bad}");
        }
    }
}
