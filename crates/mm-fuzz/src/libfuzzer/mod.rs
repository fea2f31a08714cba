//! The libFuzzer target's engine (`fuzz/fuzz_targets/mm_ops.rs` is a thin wrapper around it):
//! an input decoded ([`input`]) and run on a fresh guest of whatever backend the program boots
//! (the target links the sim alone), with the model and the checker after every batch, exactly
//! as `vmm replay` runs the input again; a failure comes back as a reproducer in the one
//! scenario format. [`convert`] turns crash artifacts and corpora into that format and back.
#![forbid(unsafe_code)]

pub mod convert;
pub mod input;

use crate::error::FuzzError;
use crate::repro::Reproducer;
use crate::uniformity::Spending;
use crate::{run_session, Session, Source};
use guest_mm::{Bug, SeededBugs};
use mm_driver::{Backend, Boot, GuestConfig};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Guest RAM of the target's guests, in MiB: the least a guest boots with, so that one fill
/// record ([`input`]) uses up every frame, and a boot costs least.
pub const MEMORY_MIB: u64 = 16;
/// Operations per batch: the checker runs after each.
pub const BATCH: usize = 64;
/// The environment variable that names the seeded bugs the target plants, comma-separated.
pub const BUGS_VAR: &str = "MM_FUZZ_BUGS";
/// The environment variable that names a file the target keeps its [`Tally`] in, rewritten
/// after every input: libFuzzer counts inputs, not the operations they decode to (the bench
/// reads it).
pub const TALLY_VAR: &str = "MM_FUZZ_TALLY";
/// The placement tests' false-alarm budget ([`crate::uniformity`]): every input is a job of
/// its own (libFuzzer's runs know nothing of each other), so the campaign's rate is spread
/// over this many, and a correct MM fails the tests of any of 10^9 inputs with probability
/// below `CAMPAIGN_ALPHA`. A biased placement still fails by orders of magnitude
/// (`bug-aslr-low-half` in `crates/mm-fuzz/tests/libfuzzer.rs`).
const SPENDING: Spending = Spending {
    jobs: 1_000_000_000,
    tests: 0,
};

/// A name in [`BUGS_VAR`] that is no seeded bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBug(pub String);

impl fmt::Display for UnknownBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = Bug::ALL.iter().map(|b| b.feature()).collect();
        write!(
            f,
            "{BUGS_VAR}: {:?} is no seeded bug (they are {})",
            bounded_io::excerpt::excerpt(&self.0),
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownBug {}

/// The header lines a run of the target records: the settings `vmm replay` needs to run an
/// input the same way (a crash artifact has none of its own), and the seeded bugs planted.
pub fn settings(features: &[String]) -> Vec<(String, String)> {
    let config = GuestConfig::new(Vec::new());
    vec![
        ("backend".into(), Backend::Sim.to_string()),
        ("memory-mib".into(), MEMORY_MIB.to_string()),
        ("seed".into(), config.random_seed.to_string()),
        ("guest-features".into(), features.join(",")),
    ]
}

/// What a target has run: inputs, and the operations they sent.
#[derive(Debug, Default)]
pub struct Tally {
    pub inputs: AtomicU64,
    pub ops: AtomicU64,
}

impl Tally {
    fn add(&self, ops: usize) {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
    }

    /// `inputs N` and `ops N`, one a line.
    pub fn to_text(&self) -> String {
        let inputs = self.inputs.load(Ordering::Relaxed);
        let ops = self.ops.load(Ordering::Relaxed);
        format!("inputs {inputs}\nops {ops}\n")
    }

    /// The operations of a text [`Tally::to_text`] wrote.
    pub fn ops_in(text: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix("ops ")?.parse().ok())
    }
}

/// How the target runs its inputs: its guest, with the seeded bugs it plants, and what it has
/// run.
#[derive(Debug)]
pub struct Target {
    config: GuestConfig,
    features: Vec<String>,
    tally: Tally,
    /// Where the tally is kept ([`TALLY_VAR`]), if anywhere.
    tally_file: Option<PathBuf>,
}

impl Target {
    /// A target whose guests lay RAM out with `kernel` (the sim runs none of it) and plant the
    /// seeded bugs `list` names (`bug-stale-pte,bug-overlap`; empty: none).
    pub fn new(kernel: Vec<u8>, list: &str) -> Result<Target, UnknownBug> {
        let features: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(String::from)
            .collect();
        let mut bugs = SeededBugs::NONE;
        for name in &features {
            let bug = Bug::from_feature(name).ok_or_else(|| UnknownBug(name.clone()))?;
            bugs = bugs.with(bug);
        }
        let config = GuestConfig {
            memory: MEMORY_MIB << 20,
            backend: Backend::Sim,
            timeout: None,
            seeded_bugs: bugs,
            ..GuestConfig::new(kernel)
        };
        Ok(Target {
            config,
            features,
            tally: Tally::default(),
            tally_file: None,
        })
    }

    /// The target [`BUGS_VAR`] asks for, keeping its tally where [`TALLY_VAR`] says.
    pub fn from_env(kernel: Vec<u8>) -> Result<Target, UnknownBug> {
        let list = std::env::var(BUGS_VAR).unwrap_or_default();
        let target = Target::new(kernel, &list)?;
        Ok(Target {
            tally_file: std::env::var_os(TALLY_VAR).map(PathBuf::from),
            ..target
        })
    }

    /// What the target has run so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The seeded bugs planted, by name.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Runs `data` on a guest `boot` boots; returns the failure it shows, as a reproducer of
    /// the operations up to the end of the batch that showed it. Errors are setup problems.
    pub fn run(&self, boot: &dyn Boot, data: &[u8]) -> Result<Option<Reproducer>, FuzzError> {
        let ops = input::decode(data);
        if ops.is_empty() {
            return Ok(None);
        }
        let source = Source::Fixed(ops.into_iter().collect());
        let session = Session::new(source, BATCH, None).with_spending(SPENDING);
        let run = run_session(boot, &self.config, session, true)?;
        self.tally.add(run.sent.len());
        if let Some(path) = &self.tally_file {
            // A measurement aid: a file that cannot be written leaves the bench without its
            // figure (it says so), and must not stop the fuzzing.
            let _ = std::fs::write(path, self.tally.to_text());
        }
        let Some(failure) = run.failure else {
            return Ok(None);
        };
        let mut header = vec![
            ("failure".into(), failure.signature.to_string()),
            ("detail".into(), failure.description),
        ];
        header.extend(settings(&self.features));
        Ok(Some(Reproducer {
            header,
            ops: run.sent,
        }))
    }
}
