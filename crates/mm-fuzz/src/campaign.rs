//! A fuzzing campaign: jobs in parallel, each a deterministic stream of generated batches on
//! its own guest, with progress, deduplicated findings, shrunk reproducers and a summary.

use super::corpus::CorpusDir;
use super::generate::Generator;
use super::reduce_rounds::{reduce_rounds, Reduced, Tell};
use super::shrink::{shrink, Budget};
use super::shrink_rounds::ShrunkRounds;
use super::uniformity::Spending;
use super::{narrow, replay, run_session, Failure, Feedback, Run, Session, Signature, Source};
use crate::coverage::{CoverageMap, CoverageSet};
use crate::error::FuzzError;
use bounded_io::files::{write_output, Naming};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mm_driver::{Boot, GuestConfig};
use mm_scenario::header::{cpus_line, reproduced_line};
use mm_scenario::reproduced::Reproduced;
use shared_mm::abi::{Op, Status};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to run a campaign.
#[derive(Clone, Debug)]
pub struct CampaignConfig {
    pub seed: u64,
    /// Operations to generate in total, split evenly over the jobs.
    pub ops: u64,
    pub jobs: usize,
    /// Operations per hypercall batch.
    pub batch: usize,
    /// Run the agreement checker after every batch.
    pub check: bool,
    /// Shrink each new failure before saving it.
    pub shrink: bool,
    pub shrink_budget: Budget,
    pub vm: GuestConfig,
    /// A faster guest that runs the same MM (the sim twin of a KVM guest with known seeded
    /// bugs): failures are shrunk there and the result confirmed on `vm`. `None`: shrink on `vm`.
    pub shrink_on: Option<GuestConfig>,
    /// Where reproducers are written.
    pub out_dir: PathBuf,
    /// Recorded in reproducers: which kernel the run used (a path, or "embedded").
    pub kernel_label: String,
    /// Recorded in reproducers: the seeded bugs planted (cargo features of the guest).
    pub guest_features: Vec<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The kernel's coverage counters, when it was built with them: enables feedback.
    pub coverage: Option<CoverageMap>,
    /// Stop every job once this many distinct failures are recorded (0: never stop early).
    pub max_findings: usize,
    /// Generate in memory-pressure mode (see [`Generator::with_pressure`]).
    pub pressure: bool,
    /// The placement rules: `map-anywhere` held to the best-fit policy, and the placement
    /// probe with its uniformity tests ([`super::uniformity`]). On everywhere; the bench turns
    /// them off to measure what they cost.
    pub placement_rules: bool,
}

/// What a campaign shares with the world outside its process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Links<'a> {
    /// A corpus directory: saved to, loaded at the start, and shared with every other campaign
    /// that names it (see [`super::corpus`]).
    pub corpus: Option<&'a Path>,
    /// Set from outside (by Ctrl-C): every job stops at its next batch boundary, and the
    /// campaign reports what it did.
    pub stop: Option<&'a AtomicBool>,
}

/// What a campaign did with its corpus directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusReport {
    pub dir: PathBuf,
    /// Entries in the directory when the campaign started.
    pub loaded: usize,
    /// Entries this campaign wrote.
    pub saved: usize,
    /// Entries other campaigns wrote while this one ran, that it took (the most any job took).
    pub picked_up: usize,
    /// Batches in the largest job's corpus at the end.
    pub entries: usize,
}

/// One distinct failure the campaign found.
#[derive(Clone, Debug)]
pub struct FoundBug {
    pub signature: Signature,
    pub description: String,
    pub job: usize,
    /// Operations the job had run when it hit the failure.
    pub ops_to_find: u64,
    pub time_to_find: Duration,
    /// Length of the failing sequence before and after shrinking.
    pub original_len: usize,
    pub repro_len: usize,
    pub repro_path: PathBuf,
    /// How many of the replays before saving showed the failure (kvm with several CPUs).
    pub reproduced: Option<Reproduced>,
    /// How many times the campaign hit this signature.
    pub hits: usize,
}

/// What a campaign did.
#[derive(Debug)]
pub struct CampaignReport {
    pub ops_executed: u64,
    /// Operations the guest answered with OutOfMemory (the model judged each).
    pub out_of_memory: u64,
    /// Placement uniformity tests run (see [`super::uniformity`]), over all jobs.
    pub uniformity_tests: u64,
    pub elapsed: Duration,
    /// Time spent shrinking failures (summed over jobs), included in `elapsed`.
    pub shrinking: Duration,
    pub guests_booted: usize,
    pub bugs: Vec<FoundBug>,
    /// Edges reached and edges instrumented, with coverage feedback on.
    pub coverage: Option<(usize, usize)>,
    pub corpus: Option<CorpusReport>,
    /// Whether the stop flag ended the campaign before its budget was spent.
    pub interrupted: bool,
}

impl CampaignReport {
    /// Fuzzing throughput: operations per second of wall time not spent shrinking.
    pub fn ops_per_second(&self) -> f64 {
        let fuzzing = self.elapsed.saturating_sub(self.shrinking);
        self.ops_executed as f64 / fuzzing.as_secs_f64().max(1e-9)
    }
}

/// The seed of job `job`'s generator: distinct per job, fixed per (seed, job).
fn job_seed(seed: u64, job: usize) -> u64 {
    seed ^ (job as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct Shared<'a> {
    config: &'a CampaignConfig,
    backends: &'a dyn Boot,
    corpus: Option<CorpusDir>,
    stop: Option<&'a AtomicBool>,
    /// Corpus figures over the jobs: entries at the start, picked up, and corpus size (maxima).
    loaded: AtomicUsize,
    picked_up: AtomicUsize,
    entries: AtomicUsize,
    start: Instant,
    bar: ProgressBar,
    executed: AtomicUsize,
    out_of_memory: AtomicUsize,
    uniformity_tests: AtomicUsize,
    guests: AtomicUsize,
    bugs: Mutex<BTreeMap<Signature, FoundBug>>,
    /// Failures found to be the symptom of another (their root cause), by signature.
    symptoms: Mutex<BTreeMap<Signature, Signature>>,
    coverage: Mutex<CoverageSet>,
    shrinking: Mutex<Duration>,
}

impl Shared<'_> {
    /// Prints `line` on stderr above the progress bar, or alone when there is no bar (a finding
    /// is reported the moment it is seen, in every output mode).
    fn say(&self, line: String) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// The header of the corpus entries job `job` writes.
    fn entry_header(&self, job: usize) -> Vec<(String, String)> {
        let config = self.config;
        let mut header = vec![
            ("seed".into(), config.seed.to_string()),
            ("job".into(), job.to_string()),
            ("backend".into(), config.vm.backend.to_string()),
            ("kernel".into(), config.kernel_label.clone()),
            ("memory-mib".into(), (config.vm.memory >> 20).to_string()),
        ];
        header.extend(cpus_line(config.vm.cpus));
        header
    }

    fn enough_findings(&self) -> bool {
        let max = self.config.max_findings;
        max > 0 && self.bugs.lock().unwrap_or_else(|e| e.into_inner()).len() >= max
    }

    /// Counts a hit of `signature` (or of the cause it was found to be a symptom of) if the
    /// campaign knows it already; whether it did.
    fn known(&self, signature: &Signature) -> bool {
        let symptoms = self.symptoms.lock().unwrap_or_else(|e| e.into_inner());
        let cause = symptoms.get(signature).unwrap_or(signature);
        let mut bugs = self.bugs.lock().unwrap_or_else(|e| e.into_inner());
        bugs.get_mut(cause).map(|bug| bug.hits += 1).is_some()
    }

    /// Records the failure `run` ended with: shrunk to its root cause (see [`reduce`]), saved
    /// as a reproducer under the cause's name, and counted.
    fn record(
        &self,
        job: usize,
        run: Run,
        found: Failure,
        ops_to_find: u64,
    ) -> Result<(), FuzzError> {
        let time_to_find = self.start.elapsed();
        if self.known(&found.signature) {
            return Ok(());
        }
        let config = self.config;
        self.say(format!(
            "finding (job {job}, after {ops_to_find} ops): {}",
            found.signature
        ));
        let original_len = run.sent.len();
        let shrink_start = Instant::now();
        let reduced = self.reduced(&run, &found)?;
        let failure = reduced.rounds.failure.clone();
        *self.shrinking.lock().unwrap_or_else(|e| e.into_inner()) += shrink_start.elapsed();
        if failure.signature != found.signature {
            self.say(format!(
                "  root cause: {} (the {} came after it)",
                failure.signature, found.signature
            ));
            self.symptoms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(found.signature, failure.signature.clone());
            if self.known(&failure.signature) {
                return Ok(());
            }
        }
        let header = vec![
            ("failure".into(), failure.signature.to_string()),
            ("detail".into(), failure.description.clone()),
            ("seed".into(), config.seed.to_string()),
            ("job".into(), job.to_string()),
            ("backend".into(), config.vm.backend.to_string()),
            ("guest-features".into(), config.guest_features.join(",")),
            ("kernel".into(), config.kernel_label.clone()),
            ("memory-mib".into(), (config.vm.memory >> 20).to_string()),
            ("found-after-ops".into(), ops_to_find.to_string()),
            ("original-length".into(), original_len.to_string()),
        ];
        let mut repro = reduced.rounds.reproducer(header);
        repro.header.extend(reproduced_line(reduced.reproduced));
        std::fs::create_dir_all(&config.out_dir).map_err(|source| FuzzError::Output {
            path: config.out_dir.clone(),
            source,
        })?;
        let mut bugs = self.bugs.lock().unwrap_or_else(|e| e.into_inner());
        let path = config
            .out_dir
            .join(format!("repro-seed{}-{}.txt", config.seed, bugs.len() + 1));
        write_output(&path, repro.to_text().as_bytes(), Naming::Chosen).map_err(FuzzError::File)?;
        let reproduced = reduced.reproduced.map_or(String::new(), |count| {
            format!("; {count} replays on {} showed it", config.vm.backend)
        });
        self.say(format!(
            "  saved {} ({} ops, shrunk from {original_len}{reproduced})",
            path.display(),
            repro.ops.len()
        ));
        bugs.insert(
            failure.signature.clone(),
            FoundBug {
                signature: failure.signature,
                description: failure.description,
                job,
                ops_to_find,
                time_to_find,
                original_len,
                repro_len: repro.ops.len(),
                repro_path: path,
                reproduced: reduced.reproduced,
                hits: 1,
            },
        );
        let found = bugs.len();
        self.bar.set_message(format!("{found} finding(s)"));
        Ok(())
    }

    /// The failure `found`, with which `run` ended, reduced for its reproducer (see [`reduce`]
    /// and [`reduce_rounds`]), or as found when the campaign does not shrink.
    fn reduced(&self, run: &Run, found: &Failure) -> Result<Reduced, FuzzError> {
        let config = self.config;
        let cpus = config.vm.cpus;
        if !config.shrink {
            let rounds = ShrunkRounds::as_found(run, found, cpus);
            return Ok(Reduced {
                rounds,
                reproduced: None,
            });
        }
        if cpus > 1 {
            let tell = Tell {
                stop: self.stop,
                say: &|line| self.say(line),
                doing: &|message| self.bar.set_message(message),
            };
            return reduce_rounds(config, self.backends, run, found, tell);
        }
        self.bar
            .set_message(format!("shrinking {} ops", run.sent.len()));
        let (ops, failure) = reduce(config, self.backends, run, found, &|line| self.say(line))?;
        let rounds = ShrunkRounds {
            ops,
            cpus: Vec::new(),
            round_starts: Vec::new(),
            cpu_count: 1,
            schedule: None,
            failure,
            replays: 0,
        };
        Ok(Reduced {
            rounds,
            reproduced: None,
        })
    }

    fn run_job(&self, job: usize, budget: u64) -> Result<(), FuzzError> {
        let config = self.config;
        let mut generator = Generator::new(job_seed(config.seed, job));
        if config.pressure {
            generator = generator.with_pressure();
        }
        if !config.placement_rules {
            generator = generator.without_probes();
        }
        let mut feedback = (config.coverage.is_some() || self.corpus.is_some())
            .then(|| Feedback::new(config.coverage, &self.coverage));
        if let (Some(fb), Some(dir)) = (&mut feedback, &self.corpus) {
            let loaded = fb
                .sync_with(dir, self.entry_header(job))
                .map_err(FuzzError::File)?;
            self.loaded.fetch_max(loaded, Ordering::Relaxed);
        }
        let mut remaining = budget as usize;
        let mut done_in_job = 0u64;
        // The job's share of the campaign's false-alarm rate, over all its guests.
        let mut spending = Spending {
            jobs: config.jobs.max(1) as u64,
            tests: 0,
        };
        // The bar moves as batches complete; the count of ops run is settled per guest, so
        // the ops of a failing batch count too (as they do in `ops_to_find`).
        let shown = AtomicUsize::new(0);
        let progress = |n: usize| {
            self.bar.inc(n as u64);
            shown.fetch_add(n, Ordering::Relaxed);
        };
        while remaining > 0 && !self.enough_findings() && !self.stopped() {
            let before = remaining;
            let source = Source::Generated {
                generator: &mut generator,
                budget: remaining,
                feedback: feedback.as_mut(),
            };
            let mut session =
                Session::new(source, config.batch, Some(&progress)).with_spending(spending);
            if let Some(stop) = self.stop {
                session = session.with_stop(stop);
            }
            if !config.placement_rules {
                session = session.without_placement_rules();
            }
            self.guests.fetch_add(1, Ordering::Relaxed);
            let run = run_session(self.backends, &config.vm, session, config.check)?;
            if let Some(e) = feedback.as_mut().and_then(Feedback::take_error) {
                return Err(FuzzError::File(e));
            }
            spending = run.spending;
            let sent = run.sent.len();
            self.bar
                .inc(sent.saturating_sub(shown.swap(0, Ordering::Relaxed)) as u64);
            self.executed.fetch_add(sent, Ordering::Relaxed);
            remaining = before.saturating_sub(sent);
            done_in_job += sent as u64;
            let oom = run
                .results
                .iter()
                .filter(|r| r.status == Status::OutOfMemory)
                .count();
            self.out_of_memory.fetch_add(oom, Ordering::Relaxed);
            match run.failure.clone() {
                Some(failure) => self.record(job, run, failure, done_in_job)?,
                None if sent == 0 => break,
                None => {}
            }
        }
        self.uniformity_tests
            .fetch_add(spending.tests as usize, Ordering::Relaxed);
        if let Some(fb) = &feedback {
            self.picked_up.fetch_max(fb.picked_up(), Ordering::Relaxed);
            self.entries.fetch_max(fb.corpus().len(), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The failure `found`, with which `run` ended, reduced for its reproducer: first its root
/// cause, the earliest failure a finer replay of the failing batch shows
/// ([`narrow::root_cause`]; a crash right after a checker finding is the finding's symptom,
/// kept in the description); then the run's ops up to the cause, shrunk to what still shows
/// it (on the faster twin where there is one, confirmed on the campaign's own guest). Returns
/// the ops and the failure as a one-op-per-batch replay of them shows it. `say` reports
/// progress.
pub fn reduce(
    config: &CampaignConfig,
    backends: &dyn Boot,
    run: &Run,
    found: &Failure,
    say: &dyn Fn(String),
) -> Result<(Vec<Op>, Failure), FuzzError> {
    let twins: Vec<&GuestConfig> = config.shrink_on.iter().chain([&config.vm]).collect();
    let mut cause = None;
    for vm in &twins {
        let (batch, from) = (config.batch, run.last_batch);
        cause = narrow::root_cause(backends, vm, &run.sent, batch, from, found, config.check)?;
        if cause.is_some() {
            break;
        }
    }
    let (ops, target) = match &cause {
        Some(cause) => (&run.sent[..cause.prefix], cause.failure.signature.clone()),
        None => (&run.sent[..], found.signature.clone()),
    };
    let described = |failure: Failure| match &cause {
        Some(cause) => cause.describe(failure),
        None => failure,
    };
    let confirmed = |shrunk: &[Op]| -> Result<Option<Failure>, FuzzError> {
        let pinned = replay(backends, &config.vm, shrunk, 1, true)?.map(|(f, _)| f);
        Ok(pinned.filter(|f| f.shows(&target)).map(described))
    };
    let shrink_on = |vm: &GuestConfig| {
        let budget = config.shrink_budget;
        shrink(
            backends,
            vm,
            ops,
            &run.results,
            &target,
            budget,
            config.pressure,
        )
        .map(|s| s.ops)
    };
    if let Some(twin) = &config.shrink_on {
        let shrunk = shrink_on(twin)?;
        if let Some(pinned) = confirmed(&shrunk)? {
            return Ok((shrunk, pinned));
        }
        say(format!(
            "  the {} twin's reproducer does not fail on {}; shrinking there instead",
            twin.backend, config.vm.backend
        ));
    }
    let shrunk = shrink_on(&config.vm)?;
    let fallback = match &cause {
        Some(cause) => described(cause.failure.clone()),
        None => found.clone(),
    };
    let failure = confirmed(&shrunk)?.unwrap_or(fallback);
    Ok((shrunk, failure))
}

/// Runs the campaign to the end (every job's budget spent); failures are findings, not errors.
/// Errors are setup problems (no KVM, unusable kernel, unwritable output directory).
pub fn run_campaign(
    config: &CampaignConfig,
    backends: &dyn Boot,
) -> Result<CampaignReport, FuzzError> {
    run_campaign_with(config, backends, Links::default())
}

/// [`run_campaign`], with a corpus directory and a stop flag.
pub fn run_campaign_with(
    config: &CampaignConfig,
    backends: &dyn Boot,
    links: Links<'_>,
) -> Result<CampaignReport, FuzzError> {
    let jobs = config.jobs.max(1);
    let corpus = links
        .corpus
        .map(CorpusDir::open)
        .transpose()
        .map_err(FuzzError::File)?;
    let bar = ProgressBar::with_draw_target(
        Some(config.ops),
        if config.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} ops, {per_sec} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("0 findings");
    let shared = Shared {
        config,
        backends,
        corpus,
        stop: links.stop,
        loaded: AtomicUsize::new(0),
        picked_up: AtomicUsize::new(0),
        entries: AtomicUsize::new(0),
        start: Instant::now(),
        bar,
        executed: AtomicUsize::new(0),
        out_of_memory: AtomicUsize::new(0),
        uniformity_tests: AtomicUsize::new(0),
        guests: AtomicUsize::new(0),
        bugs: Mutex::new(BTreeMap::new()),
        symptoms: Mutex::new(BTreeMap::new()),
        coverage: Mutex::new(CoverageSet::new()),
        shrinking: Mutex::new(Duration::ZERO),
    };
    let per_job = config.ops / jobs as u64;
    let extra = config.ops % jobs as u64;
    let results: Vec<Result<(), FuzzError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|job| {
                let shared = &shared;
                let budget = per_job + u64::from((job as u64) < extra);
                scope.spawn(move || shared.run_job(job, budget))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(FuzzError::JobPanicked)))
            .collect()
    });
    shared.bar.finish_and_clear();
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    let interrupted = shared.stopped();
    let bugs = shared.bugs.into_inner().unwrap_or_else(|e| e.into_inner());
    let covered = shared
        .coverage
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .covered();
    Ok(CampaignReport {
        ops_executed: shared.executed.load(Ordering::Relaxed) as u64,
        out_of_memory: shared.out_of_memory.load(Ordering::Relaxed) as u64,
        uniformity_tests: shared.uniformity_tests.load(Ordering::Relaxed) as u64,
        elapsed: shared.start.elapsed(),
        shrinking: shared
            .shrinking
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        guests_booted: shared.guests.load(Ordering::Relaxed),
        bugs: bugs.into_values().collect(),
        coverage: config.coverage.map(|map| (covered, map.len())),
        corpus: shared.corpus.as_ref().map(|dir| CorpusReport {
            dir: dir.path().to_path_buf(),
            loaded: shared.loaded.load(Ordering::Relaxed),
            saved: dir.saved(),
            picked_up: shared.picked_up.load(Ordering::Relaxed),
            entries: shared.entries.load(Ordering::Relaxed),
        }),
        interrupted,
    })
}
