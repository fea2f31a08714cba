//! The `vmm` command line: boot the guest and run its MM self-check, inspect, fuzz and replay.
#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context};
use bounded_io::excerpt::{excerpt, MAX_QUOTED};
use bounded_io::files::{open_regular, read_capped, write_output, FileError, Naming};
use clap::{Parser, Subcommand};
use guest_image::variant::{build_variant_with, GuestVariant};
use guest_mm::{Bug, SeededBugs};
use mm_checker::Checked;
use mm_driver::{Backend, Boot, GuestConfig};
use mm_fuzz::campaign::{run_campaign_with, CampaignConfig, CampaignReport, Links};
use mm_fuzz::coverage::CoverageMap;
use mm_fuzz::narrow::{replay_narrowed, replay_planned, Plan, Replayed};
use mm_fuzz::repro::Reproducer;
use mm_fuzz::shrink::Budget;
use mm_scenario::builtin::SELF_CHECK_NAME;
use mm_scenario::file::load;
use mm_scenario::header::{cpus_line, Settings};
use mm_scenario::ops::op_to_line;
use mm_scenario::record::record;
use mm_scenario::SelfCheck;
use shared_mm::boot_info::GuestCommand;
use shared_mm::smp::MAX_CPUS;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vmm::error::exit_code_of;
use vmm::gdb::GdbServer;
use vmm::{Backends, VmmError};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Boot, inspect and fuzz a guest memory manager under KVM"
)]
struct Cli {
    /// Hidden: parse the command line (subcommand, options and their values), then exit 0
    /// without booting or reading anything; a bad one exits 2 as usual. The README test
    /// (`vmm/tests/readme/`) checks the command lines the README shows with it. Goes before
    /// the subcommand: `vmm --check-args run --backend sim`.
    #[arg(long, hide = true)]
    check_args: bool,
    #[command(subcommand)]
    command: Command,
}

/// Options every guest-booting subcommand shares.
#[derive(clap::Args, Clone)]
struct GuestArgs {
    /// Guest kernel ELF to boot instead of the embedded one.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Guest RAM in MiB [default: 256; replay: the reproducer's].
    #[arg(long, value_name = "MIB", value_parser = parse_u64)]
    memory: Option<u64>,
    /// CPUs, 1 to 8 (more than 1: kvm only). CPU 0 runs the MM; the others come online and
    /// serve IPIs [default: 1; replay: the reproducer's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CPUS)))]
    cpus: Option<u32>,
    /// Stop a guest that makes no progress (no hypercall, and no heartbeat from a long loop)
    /// for this many seconds (0: never; at most a year).
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Seed for the guest's randomized placement, and for fuzz the operation generator,
    /// decimal or 0x-hex [default: 0x5eed; replay: the reproducer's].
    #[arg(long, value_parser = parse_u64)]
    seed: Option<u64>,
    /// Where the MM runs: kvm (the guest kernel under KVM) or sim (the MM library on the
    /// in-process simulated machine) [default: kvm; replay: the reproducer's].
    #[arg(long, value_name = "kvm|sim")]
    backend: Option<Backend>,
    /// Plant these seeded bugs (comma-separated cargo features of the guest, e.g.
    /// bug-stale-pte). kvm builds a guest variant (needs this source checkout and cargo); sim
    /// switches them on at run time [replay: the reproducer's].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    guest_features: Option<Vec<String>>,
    /// Wait for gdb on ADDR (HOST:PORT, or :PORT for 127.0.0.1; port 0 picks a free one)
    /// before the guest's first instruction (kvm only; fuzz needs --jobs 1).
    #[arg(long, value_name = "ADDR")]
    gdb: Option<String>,
}

/// A number as the README writes them: decimal or `0x` hexadecimal, `_` allowed between digits.
fn parse_u64(text: &str) -> Result<u64, String> {
    let digits = text.replace('_', "");
    let parsed = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    parsed.map_err(|e| {
        format!(
            "{:?} is not a 64-bit number, decimal or 0x-hex ({e})",
            excerpt(text)
        )
    })
}

/// Longest `--timeout`: a year, so the deadline arithmetic can never overflow.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

fn parse_timeout(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{:?} is not a number of seconds", excerpt(text)))?;
    if !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "{} is not between 0 and {MAX_TIMEOUT_SECS} seconds (a year)",
            excerpt(text)
        ));
    }
    Ok(secs)
}

/// Most operations `vmm fuzz --ops` takes.
const MAX_OPS: u64 = 1_000_000_000_000;

fn parse_ops(text: &str) -> Result<u64, String> {
    let ops = parse_u64(text)?;
    if ops > MAX_OPS {
        return Err(format!("{ops} is more than {MAX_OPS} operations"));
    }
    Ok(ops)
}

/// Largest kernel image `--kernel` reads.
const MAX_KERNEL_BYTES: u64 = 64 << 20;

/// Guest RAM when `--memory` is not given.
const DEFAULT_MEMORY_MIB: u64 = 256;
/// Seed when `--seed` is not given.
const DEFAULT_SEED: u64 = 0x5eed;

impl GuestArgs {
    fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    fn backend(&self) -> Backend {
        self.backend.unwrap_or_default()
    }

    fn cpus(&self) -> u32 {
        self.cpus.unwrap_or(1)
    }

    fn features(&self) -> &[String] {
        self.guest_features.as_deref().unwrap_or_default()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Boot the guest and run its memory-manager self-check, or a scenario file.
    Run {
        #[command(flatten)]
        guest: GuestArgs,
        /// Skip the agreement checker (page tables against region trees) after each batch.
        #[arg(long)]
        no_check: bool,
        /// Run this scenario file instead of the built-in self-check, and report each step
        /// whose result differs from its expectation by line [seed, RAM size, CPUs, backend,
        /// seeded bugs and kernel: the file's header's, unless given].
        #[arg(long, value_name = "FILE", conflicts_with = "misbehave")]
        scenario: Option<PathBuf>,
        /// Make the guest misbehave on purpose (for testing the VMM's error reports).
        #[arg(long, value_enum, hide = true)]
        misbehave: Option<Misbehave>,
    },
    /// Run a built-in scenario, then show each address space's regions and present pages
    /// (from the host's own page-table walk) and the agreement checker's verdict.
    Inspect {
        #[command(flatten)]
        guest: GuestArgs,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw the address-space map as SVG into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Fuzz the guest MM: generated operations checked against a host model and the agreement
    /// checker; each failure is shrunk and saved as a reproducer. `--seed` seeds everything.
    Fuzz {
        #[command(flatten)]
        guest: GuestArgs,
        #[command(flatten)]
        fuzz: FuzzArgs,
    },
    /// Replay a reproducer saved by `vmm fuzz`; exits 1 if the failure still happens.
    Replay {
        #[command(flatten)]
        guest: GuestArgs,
        /// Operations per batch, with the checker after each (1 to 1024); a batch that fails is
        /// replayed again one op per batch, to pin the failure to its op.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1024))]
        batch: u16,
        /// The reproducer file.
        file: PathBuf,
        /// Also run the operations once more, in the replay's batches with the checker, and
        /// save them with the results observed as their expectations: a regression scenario
        /// for `vmm run --scenario`.
        #[arg(long, value_name = "OUT")]
        save_scenario: Option<PathBuf>,
        /// With --gdb: stop the guest when it starts op N (counted from 0, as replay's
        /// messages count) [default: the op that fails, else the last].
        #[arg(long, value_name = "N")]
        break_at_op: Option<usize>,
    },
}

/// Options of `vmm fuzz`.
#[derive(clap::Args, Clone)]
struct FuzzArgs {
    /// Operations to generate in total (at most 10^12).
    #[arg(long, default_value_t = 100_000, value_parser = parse_ops)]
    ops: u64,
    /// Guests fuzzed in parallel, each a deterministic stream of its own (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Operations per hypercall batch (1 to 1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Skip the agreement checker after each batch.
    #[arg(long)]
    no_check: bool,
    /// Save failures without shrinking them.
    #[arg(long)]
    no_shrink: bool,
    /// Directory for reproducer files.
    #[arg(long, value_name = "DIR", default_value = "fuzz-out")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Stop once this many distinct failures are found (0: run the whole budget).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_u64)]
    max_findings: u64,
    /// Build the guest with sanitizer coverage and steer generation toward new edges (kvm
    /// only; needs this source checkout and cargo). A --kernel built with coverage enables it
    /// too.
    #[arg(long)]
    coverage: bool,
    /// Memory pressure: fill big regions until the guest runs out of frames, then give them
    /// back, again and again (best with a small --memory).
    #[arg(long)]
    pressure: bool,
    /// Corpus directory: batches that reached new edges are saved there, and the entries in
    /// it (also those other campaigns add while this one runs) are mutated like its own. On
    /// sim, which has no coverage, entries are only read.
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Misbehave {
    Panic,
    Hang,
    TripleFault,
    /// Page tables that alias each other (a hostile guest).
    AliasTables,
    /// A hypercall with an absurd record count (a hostile guest).
    HugeCount,
    /// The last CPU panics after it reports in (needs --cpus 2 or more).
    ApPanic,
    /// The last CPU triple-faults after it reports in (needs --cpus 2 or more).
    ApTripleFault,
    /// The last CPU never reports in (needs --cpus 2 or more).
    ApSilent,
    /// Exit with status 7 before asking for any work.
    ExitEarly,
}

/// The seeded bugs `features` name; every feature must be one.
fn seeded_bugs(features: &[String]) -> anyhow::Result<SeededBugs> {
    features.iter().try_fold(SeededBugs::NONE, |bugs, name| {
        let bug = Bug::from_feature(name).ok_or_else(|| {
            let known: Vec<&str> = Bug::ALL.iter().map(|b| b.feature()).collect();
            anyhow!(
                "unknown guest feature {:?} (the seeded bugs are {})",
                excerpt(name),
                known.join(", ")
            )
        })?;
        Ok(bugs.with(bug))
    })
}

/// The kernel image to boot under KVM and how reproducers name it: `--kernel`, a variant
/// built with `features` (and coverage), or the embedded guest.
fn kvm_kernel(args: &GuestArgs, coverage: bool) -> anyhow::Result<(Vec<u8>, String)> {
    let read = |path: &Path| -> Result<Vec<u8>, VmmError> {
        read_capped(path, MAX_KERNEL_BYTES).map_err(|e| match e {
            FileError::Io { path, source } => VmmError::KernelUnreadable { path, source },
            FileError::NotRegular { path, kind } => VmmError::KernelUnreadable {
                path,
                source: std::io::Error::other(format!("{kind}, not a regular file")),
            },
            too_large => VmmError::File(too_large),
        })
    };
    if let Some(path) = &args.kernel {
        if coverage || !args.features().is_empty() {
            bail!("--kernel cannot be combined with --coverage or --guest-features");
        }
        return Ok((read(path)?, path.display().to_string()));
    }
    if !coverage && args.features().is_empty() {
        return Ok((guest_image::EMBEDDED_KERNEL.to_vec(), "embedded".into()));
    }
    let features: Vec<&str> = args.features().iter().map(String::as_str).collect();
    let mut variant = GuestVariant::new(&features);
    if coverage {
        variant = variant.with_coverage();
    }
    eprintln!("vmm: building guest variant {}", variant.name());
    let path = build_variant_with(&variant)?;
    Ok((read(&path)?, path.display().to_string()))
}

/// The ELF gdb loads for a kernel labelled `label` (a path, or `embedded`).
fn elf_for_gdb(label: &str) -> String {
    let path = if label == "embedded" {
        guest_image::EMBEDDED_KERNEL_PATH
    } else {
        label
    };
    if Path::new(path).is_file() {
        path.to_string()
    } else {
        format!("<the guest ELF; {path} is gone>")
    }
}

/// The gdb stub `--gdb` asks for, listening, with the command line that connects to it.
fn gdb_server(args: &GuestArgs, label: &str) -> anyhow::Result<Option<GdbServer>> {
    let Some(addr) = &args.gdb else {
        return Ok(None);
    };
    if args.backend() == Backend::Sim {
        bail!("--gdb needs --backend kvm: sim runs the MM in-process, with no guest CPU to debug");
    }
    let server = GdbServer::bind(addr).map_err(VmmError::from)?;
    let at = server.local_addr();
    eprintln!(
        "vmm: gdb stub listening on {at}; connect with: gdb -q {} -ex 'target remote {at}'",
        elf_for_gdb(label)
    );
    Ok(Some(server))
}

/// The guest configuration `args` describe, the backends that boot it (with the gdb stub
/// `--gdb` asks for), and the kernel's label for reproducers.
fn config_with(
    args: &GuestArgs,
    command: GuestCommand,
    coverage: bool,
) -> anyhow::Result<(GuestConfig, Backends, String)> {
    if args.backend() == Backend::Sim {
        mm_sim::check_cpus(args.cpus()).map_err(VmmError::from)?;
    }
    let seeded = seeded_bugs(args.features())?;
    let (kernel, label, seeded_bugs) = match args.backend() {
        Backend::Kvm => {
            let (kernel, label) = kvm_kernel(args, coverage)?;
            (kernel, label, SeededBugs::NONE)
        }
        Backend::Sim => {
            if args.kernel.is_some() {
                bail!("--kernel needs --backend kvm: sim runs the MM library built into vmm");
            }
            if coverage {
                bail!("--coverage needs --backend kvm: the sim's MM is not instrumented");
            }
            // The embedded image only lays out RAM; its code does not run.
            (
                guest_image::EMBEDDED_KERNEL.to_vec(),
                "embedded".into(),
                seeded,
            )
        }
    };
    if args.cpus() > 1 && args.gdb.is_some() {
        bail!("--gdb needs --cpus 1: the stub debugs one vCPU in this version");
    }
    let gdb = gdb_server(args, &label)?;
    let config = GuestConfig {
        kernel,
        cpus: args.cpus(),
        // Saturates: an overflowing size is then refused by the VM's own size check.
        memory: args
            .memory
            .unwrap_or(DEFAULT_MEMORY_MIB)
            .saturating_mul(1 << 20),
        timeout: (args.timeout > 0.0)
            .then(|| Duration::try_from_secs_f64(args.timeout))
            .transpose()
            .map_err(|e| anyhow!("--timeout {}: {e}", args.timeout))?,
        echo_console: true,
        random_seed: args.seed(),
        command,
        backend: args.backend(),
        trace: true,
        seeded_bugs,
    };
    Ok((config, Backends { gdb }, label))
}

fn config(args: &GuestArgs, command: GuestCommand) -> anyhow::Result<(GuestConfig, Backends)> {
    config_with(args, command, false).map(|(config, backends, _)| (config, backends))
}

fn run(cli: Cli) -> anyhow::Result<u32> {
    match cli.command {
        Command::Run {
            guest,
            no_check,
            misbehave,
            scenario,
        } => {
            if let Some(file) = scenario {
                return run_scenario(&guest, &file, !no_check);
            }
            let command = match misbehave {
                None => GuestCommand::Serve,
                Some(Misbehave::Panic) => GuestCommand::Panic,
                Some(Misbehave::Hang) => GuestCommand::Hang,
                Some(Misbehave::TripleFault) => GuestCommand::TripleFault,
                Some(Misbehave::AliasTables) => GuestCommand::AliasTables,
                Some(Misbehave::HugeCount) => GuestCommand::HugeCount,
                Some(Misbehave::ApPanic) => GuestCommand::ApPanic,
                Some(Misbehave::ApTripleFault) => GuestCommand::ApTripleFault,
                Some(Misbehave::ApSilent) => GuestCommand::ApSilent,
                Some(Misbehave::ExitEarly) => GuestCommand::ExitEarly,
            };
            let on_an_ap = matches!(
                command,
                GuestCommand::ApPanic | GuestCommand::ApTripleFault | GuestCommand::ApSilent
            );
            if on_an_ap && guest.cpus() < 2 {
                bail!("this --misbehave mode needs --cpus 2 or more: it names the last CPU");
            }
            let (config, backends) = config(&guest, command)?;
            let mut vm = backends.boot(&config).map_err(VmmError::from)?;
            let (status, check, findings) = if no_check {
                let mut check = SelfCheck::new();
                (
                    vm.run(&mut check).map_err(VmmError::from)?,
                    check,
                    Vec::new(),
                )
            } else {
                let mut checked = Checked::new(SelfCheck::new());
                let outcome = vm.run(&mut checked);
                eprintln!("vmm: agreement checker ran {} times", checked.checks_run);
                let findings: Vec<String> = checked
                    .findings
                    .iter()
                    .map(|(run, f)| format!("check {run}: {f}"))
                    .collect();
                let status = match outcome {
                    Ok(status) => status,
                    Err(crash) => {
                        // What the checker saw before the guest failed is often its cause.
                        for finding in &findings {
                            eprintln!("vmm: {SELF_CHECK_NAME}: {finding}");
                        }
                        let check = checked.inner();
                        eprintln!(
                            "vmm: the guest failed after {} of {} steps",
                            check.checked,
                            check.step_count()
                        );
                        return Err(VmmError::from(crash).into());
                    }
                };
                (status, checked.into_inner(), findings)
            };
            let mut failures = check.failures.clone();
            failures.extend(findings);
            if status != 0 || check.checked < check.step_count() {
                // What went wrong before the guest ended is often its cause: show it first.
                for failure in &failures {
                    eprintln!("vmm: {failure}");
                }
                return Err(VmmError::GuestExited {
                    status,
                    work: "self-check",
                    done: check.checked,
                    steps: check.step_count(),
                }
                .into());
            }
            if !check.passed() || !failures.is_empty() {
                return Err(VmmError::SelfCheckFailed(failures).into());
            }
            eprintln!(
                "vmm: MM self-check passed: {} of {} steps",
                check.checked,
                check.step_count()
            );
            eprintln!("vmm: guest exited with status {status}");
            Ok(status)
        }
        Command::Inspect { guest, json, svg } => {
            let (config, backends) = config(&guest, GuestCommand::Serve)?;
            let config = GuestConfig {
                echo_console: false,
                ..config
            };
            let report = vmm::inspect::inspect(&backends, &config)?;
            print!(
                "{}",
                if json {
                    report.to_json()
                } else {
                    report.to_table()
                }
            );
            if let Some(path) = &svg {
                write_output(path, report.to_svg().as_bytes(), Naming::Named)
                    .context("cannot write the SVG map")?;
                eprintln!("vmm: wrote the address-space map to {}", path.display());
            }
            let problems = report.problems();
            if !problems.is_empty() {
                return Err(VmmError::SelfCheckFailed(problems).into());
            }
            Ok(report.exit_status)
        }
        Command::Fuzz { guest, fuzz: args } => fuzz(&guest, &args),
        Command::Replay {
            guest,
            batch,
            file,
            save_scenario,
            break_at_op,
        } => {
            let ways = ReplayWays {
                batch: batch.into(),
                save: save_scenario.as_deref(),
                break_at: break_at_op,
            };
            replay_file(&guest, &file, ways)
        }
    }
}

/// `vmm run --scenario FILE`: a scenario file, its header's settings under the command line's.
fn run_scenario(guest: &GuestArgs, file: &Path, check: bool) -> anyhow::Result<u32> {
    let scenario = load(file, "scenario")?;
    let guest = recorded_args(guest, &Settings::of(&scenario.header)?)?;
    let (config, backends) = config(&guest, GuestCommand::Serve)?;
    let mut vm = backends.boot(&config).map_err(VmmError::from)?;
    let mut outcome = mm_scenario::run(vm.as_mut(), &scenario, check).map_err(VmmError::from)?;
    if check {
        eprintln!("vmm: agreement checker ran {} times", outcome.checks_run);
    }
    let ended = match outcome.crash.take() {
        Some(crash) => {
            eprintln!(
                "vmm: the guest failed after {} of {} steps",
                outcome.judged, outcome.steps
            );
            Some(VmmError::from(crash))
        }
        None if outcome.exit_status != 0 || outcome.judged < outcome.steps => {
            Some(VmmError::GuestExited {
                status: outcome.exit_status,
                work: "scenario",
                done: outcome.judged,
                steps: outcome.steps,
            })
        }
        None => None,
    };
    if let Some(ended) = ended {
        // What went wrong before the guest ended is often its cause: show it first.
        for problem in outcome.problems() {
            eprintln!("vmm: {}: {problem}", file.display());
        }
        return Err(ended.into());
    }
    if !outcome.is_clean() {
        return Err(VmmError::ScenarioFailed {
            scenario: file.to_path_buf(),
            problems: outcome.problems(),
        }
        .into());
    }
    eprintln!(
        "vmm: scenario {} passed: {} of {} steps",
        file.display(),
        outcome.judged,
        outcome.steps
    );
    eprintln!("vmm: guest exited with status {}", outcome.exit_status);
    Ok(outcome.exit_status)
}

fn fuzz(guest: &GuestArgs, args: &FuzzArgs) -> anyhow::Result<u32> {
    let FuzzArgs {
        ops,
        jobs,
        batch,
        no_check,
        no_shrink,
        ref out,
        quiet,
        coverage,
        max_findings,
        pressure,
        ref corpus,
    } = *args;
    let (check, shrink) = (!no_check, !no_shrink);
    if guest.gdb.is_some() && jobs != 1 {
        bail!("--gdb needs --jobs 1: one gdb debugs one guest");
    }
    let (mut vm, backends, kernel_label) = config_with(guest, GuestCommand::Serve, coverage)?;
    vm.echo_console = false;
    let counters = match guest.backend() {
        Backend::Kvm => {
            CoverageMap::from_elf(&vm.kernel).context("reading the kernel's coverage counters")?
        }
        Backend::Sim => None,
    };
    if coverage && counters.is_none() {
        bail!("the coverage guest has no sanitizer-coverage counters");
    }
    // A KVM guest whose MM is the library with known seeded bugs has a sim twin: failures
    // shrink there, fast, and are confirmed on KVM. The twin has one CPU: the MM runs on CPU 0
    // alone in this version, so the others change nothing it does.
    let shrink_on =
        (guest.backend() == Backend::Kvm && guest.kernel.is_none()).then(|| GuestConfig {
            backend: Backend::Sim,
            cpus: 1,
            seeded_bugs: seeded_bugs(guest.features()).unwrap_or_default(),
            ..vm.clone()
        });
    let campaign = CampaignConfig {
        seed: guest.seed(),
        ops,
        jobs: jobs.into(),
        batch: batch.into(),
        check,
        shrink,
        shrink_budget: Budget::default(),
        vm,
        shrink_on,
        out_dir: out.clone(),
        kernel_label,
        guest_features: guest.features().to_vec(),
        progress: !quiet,
        coverage: counters,
        max_findings: usize::try_from(max_findings).unwrap_or(usize::MAX),
        pressure,
        placement_rules: true,
    };
    let links = Links {
        corpus: corpus.as_deref(),
        stop: Some(vmm::interrupt::install()?),
    };
    let report = run_campaign_with(&campaign, &backends, links).map_err(VmmError::from)?;
    summary(&report, guest, jobs, check);
    Ok(if report.interrupted {
        vmm::interrupt::EXIT_INTERRUPTED
    } else {
        u32::from(!report.bugs.is_empty())
    })
}

/// The summary of a campaign, on stderr.
fn summary(report: &CampaignReport, guest: &GuestArgs, jobs: u16, check: bool) {
    if report.interrupted {
        eprintln!("vmm fuzz: interrupted by Ctrl-C");
    }
    eprintln!(
        "vmm fuzz: {} ops in {:.1} s ({:.1} s of it shrinking; {:.0} ops/s fuzzing) on {} guest boot(s) ({}), seed {}, {} job(s), checker {}",
        report.ops_executed,
        report.elapsed.as_secs_f64(),
        report.shrinking.as_secs_f64(),
        report.ops_per_second(),
        report.guests_booted,
        guest.backend(),
        guest.seed(),
        jobs,
        if check { "on" } else { "off" }
    );
    if report.out_of_memory > 0 {
        eprintln!(
            "vmm fuzz: {} ops ran out of guest frames (each judged by the model)",
            report.out_of_memory
        );
    }
    if report.uniformity_tests > 0 {
        eprintln!(
            "vmm fuzz: {} placement uniformity tests (chi-square; false-alarm rate at most {:.0e} for the campaign)",
            report.uniformity_tests,
            mm_fuzz::uniformity::CAMPAIGN_ALPHA
        );
    }
    if let Some((covered, total)) = report.coverage {
        eprintln!(
            "vmm fuzz: coverage {covered} of {total} guest edges ({:.1}%)",
            100.0 * covered as f64 / total as f64
        );
    }
    if let Some(corpus) = &report.corpus {
        eprintln!(
            "vmm fuzz: corpus {}: {} entries at the start, {} saved, {} picked up from other campaigns; {} in the largest job's corpus",
            corpus.dir.display(),
            corpus.loaded,
            corpus.saved,
            corpus.picked_up,
            corpus.entries
        );
    }
    if report.bugs.is_empty() {
        eprintln!("vmm fuzz: no findings");
        return;
    }
    eprintln!("vmm fuzz: {} distinct finding(s):", report.bugs.len());
    for bug in &report.bugs {
        eprintln!(
            "  {} (hit {}x; first after {} ops / {:.2} s in job {}); reproducer {} with {} ops (from {})\n    {}",
            bug.signature,
            bug.hits,
            bug.ops_to_find,
            bug.time_to_find.as_secs_f64(),
            bug.job,
            bug.repro_path.display(),
            bug.repro_len,
            bug.original_len,
            bug.description.lines().next().unwrap_or("")
        );
    }
}

/// `guest` with what the command line leaves open taken from a file's header: the same seed
/// (randomized placement depends on it), RAM size, CPUs, backend, seeded bugs and kernel make
/// the same run. A recorded kernel (other than the embedded one) must be a readable regular
/// file: another kernel would not make the same run.
fn recorded_args(guest: &GuestArgs, recorded: &Settings) -> anyhow::Result<GuestArgs> {
    let mut guest = guest.clone();
    guest.seed = guest.seed.or(recorded.seed);
    guest.memory = guest.memory.or(recorded.memory_mib);
    guest.cpus = guest.cpus.or(recorded.cpus);
    guest.backend = guest.backend.or(recorded.backend);
    if guest.guest_features.is_none() {
        guest.guest_features.clone_from(&recorded.guest_features);
    }
    let recorded_kernel = recorded.kernel.as_deref().map(PathBuf::from);
    let variant_given = !guest.features().is_empty();
    if guest.kernel.is_none() && guest.backend() == Backend::Kvm && !variant_given {
        if let Some(path) = recorded_kernel.filter(|p| p != Path::new("embedded")) {
            open_regular(&path)
                .map_err(|e| anyhow!("recorded kernel {e} (give --kernel PATH to boot another)"))?;
            guest.kernel = Some(path);
        }
    }
    Ok(guest)
}

/// How `vmm replay` runs: its batch size, the scenario to save, the op to stop at under gdb.
struct ReplayWays<'a> {
    batch: usize,
    save: Option<&'a Path>,
    break_at: Option<usize>,
}

fn replay_file(guest: &GuestArgs, file: &Path, ways: ReplayWays<'_>) -> anyhow::Result<u32> {
    if ways.break_at.is_some() && guest.gdb.is_none() {
        bail!("--break-at-op needs --gdb ADDR");
    }
    let repro = Reproducer::from(load(file, "reproducer")?);
    if repro.ops.is_empty() {
        bail!(
            "{}: the reproducer has no operations to replay",
            bounded_io::excerpt::path(file)
        );
    }
    let guest = recorded_args(guest, &Settings::of(&repro.header)?)?;
    let (mut vm, backends) = config(&guest, GuestCommand::Serve)?;
    vm.echo_console = false;
    if let Some(expected) = repro.header_value("failure") {
        let cpus = match guest.cpus() {
            1 => String::new(),
            n => format!(" with {n} cpus"),
        };
        eprintln!(
            "vmm replay: {} ops on {}{cpus}; recorded failure: {expected}",
            repro.ops.len(),
            guest.backend()
        );
    }
    let replayed = match &backends.gdb {
        None => replay_narrowed(&backends, &vm, &repro.ops, ways.batch).map_err(VmmError::from)?,
        Some(server) => replay_under_gdb((&backends, &vm), &repro.ops, &ways, server)?,
    };
    report_replay(&replayed, repro.ops.len());
    if let Some(out) = ways.save {
        // Labelled at the last op of the batch after which the failure showed.
        let failed_at = replayed
            .failure
            .as_ref()
            .and_then(|f| Some((replayed.prefix.checked_sub(1)?, f.signature.to_string())));
        let recording_on = (&backends as &dyn Boot, &vm);
        save_scenario(
            recording_on,
            &guest,
            &repro,
            (failed_at, &replayed.plan),
            out,
        )?;
    }
    Ok(u32::from(replayed.failure.is_some()))
}

/// What a replay showed, on stderr.
fn report_replay(replayed: &Replayed, ops: usize) {
    if let Some(batch) = &replayed.narrowed_from {
        eprintln!(
            "vmm replay: the batch of ops {} to {} failed; replayed it again one op per batch",
            batch.start,
            batch.end - 1
        );
    }
    let Some(failure) = &replayed.failure else {
        let batches = replayed.plan.lengths().len();
        eprintln!(
            "vmm replay: all {ops} ops ran clean in {batches} batch(es), the checker after each; \
             the failure did not reproduce"
        );
        return;
    };
    match replayed.failing_batch().filter(|b| b.len() > 1) {
        None => eprintln!(
            "vmm replay: reproduced after {} ops: {}\n{}",
            replayed.prefix, failure.signature, failure.description
        ),
        Some(batch) => eprintln!(
            "vmm replay: reproduced after ops {} to {} as one batch (not one op at a time): {}\n{}",
            batch.start,
            batch.end - 1,
            failure.signature,
            failure.description
        ),
    }
}

/// `vmm replay --save-scenario OUT`: records the reproducer's operations on a fresh `vm` (see
/// [`Reproducer::regression`]), in the batches of the replay's `plan`, and saves them with their
/// observed results as expectations. The header records the seed and RAM size the results
/// depend on, and the guest they were observed on in the free-text `recorded-with`: `vmm run
/// --scenario OUT` runs the guest its command line names.
fn save_scenario(
    (backends, vm): (&dyn Boot, &GuestConfig),
    guest: &GuestArgs,
    repro: &Reproducer,
    (failed_at, plan): (Option<(usize, String)>, &Plan),
    out: &Path,
) -> anyhow::Result<()> {
    let mut recorded_with = format!(
        "backend={} guest-features={}",
        guest.backend(),
        guest.features().join(",")
    );
    if let Some(path) = &guest.kernel {
        recorded_with += &format!(" kernel={}", path.display());
    }
    let mut setup = vec![
        ("seed".into(), guest.seed().to_string()),
        ("memory-mib".into(), (vm.memory >> 20).to_string()),
    ];
    setup.extend(cpus_line(vm.cpus));
    setup.push(("recorded-with".into(), recorded_with));
    let failed_at = failed_at.as_ref().map(|(at, why)| (*at, why.as_str()));
    let scenario = repro.regression(&setup, failed_at, plan.lengths());
    let mut recorder = backends.boot(vm).map_err(VmmError::from)?;
    let recording = record(recorder.as_mut(), &scenario);
    let title =
        "vmm scenario saved by `vmm replay --save-scenario`: expectations are the results observed";
    write_output(
        out,
        recording.scenario.to_text(title).as_bytes(),
        Naming::Named,
    )
    .context("cannot write the scenario")?;
    eprintln!(
        "vmm replay: saved {} ops with their observed results as scenario {}",
        recording.recorded,
        out.display()
    );
    if let Some(e) = recording.stopped {
        let why = e.to_string();
        eprintln!(
            "vmm replay: the recording run stopped early ({}); the ops after it expect nothing",
            why.lines().next().unwrap_or_default()
        );
    }
    Ok(())
}

/// `vmm replay --gdb`: the replay, in batches but for the op it stops at, alone in its batch:
/// the guest stops for gdb when it starts op `break_at` (by default the op that fails).
fn replay_under_gdb(
    (backends, vm): (&Backends, &GuestConfig),
    ops: &[shared_mm::abi::Op],
    ways: &ReplayWays<'_>,
    server: &GdbServer,
) -> anyhow::Result<Replayed> {
    let at = match ways.break_at {
        Some(at) => at,
        None => failing_op(vm, ops, ways.batch)?,
    };
    let op = ops.get(at).ok_or_else(|| {
        anyhow!(
            "--break-at-op {at}: the reproducer has ops 0 to {}",
            ops.len().saturating_sub(1)
        )
    })?;
    eprintln!(
        "vmm replay: the guest stops for gdb when it starts op {at} ({})",
        op_to_line(op)
    );
    let plan = Plan::new(ops.len(), ways.batch, at..at + 1);
    let stop = Some((at, server.stop_request()));
    Ok(replay_planned(backends, vm, ops, plan, stop).map_err(VmmError::from)?)
}

/// The op a replay fails at (found by a replay without gdb, narrowed to its op), else the last.
fn failing_op(vm: &GuestConfig, ops: &[shared_mm::abi::Op], batch: usize) -> anyhow::Result<usize> {
    eprintln!("vmm replay: replaying once without gdb to find the failing op");
    let replayed = replay_narrowed(&Backends::default(), vm, ops, batch).map_err(VmmError::from)?;
    Ok(match &replayed.failure {
        Some(failure) => {
            let at = replayed.prefix.saturating_sub(1).min(ops.len() - 1);
            eprintln!("vmm replay: op {at} fails: {}", failure.signature);
            at
        }
        None => {
            eprintln!("vmm replay: the failure does not reproduce; stopping at the last op");
            ops.len() - 1
        }
    })
}

/// `error` (a usage error: clap's, in clap's format, exit 2) with every piece of the command
/// line it quotes cut to an [`excerpt`].
fn bounded_usage_error(mut error: clap::Error) -> clap::Error {
    use clap::error::ContextValue;
    let cut = |text: &String| excerpt(text).to_string();
    let long: Vec<_> = error
        .context()
        .filter_map(|(kind, value)| match value {
            ContextValue::String(text) if text.len() > MAX_QUOTED => {
                Some((kind, ContextValue::String(cut(text))))
            }
            ContextValue::Strings(list) if list.iter().any(|t| t.len() > MAX_QUOTED) => {
                Some((kind, ContextValue::Strings(list.iter().map(cut).collect())))
            }
            ContextValue::StyledStr(text) if text.to_string().len() > MAX_QUOTED => {
                Some((kind, ContextValue::StyledStr(cut(&text.to_string()).into())))
            }
            _ => None,
        })
        .collect();
    for (kind, value) in long {
        error.insert(kind, value);
    }
    error
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| bounded_usage_error(e).exit());
    if cli.check_args {
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(status) => ExitCode::from(status.min(255) as u8),
        Err(e) => {
            eprintln!("vmm: error: {e:#}");
            // A VMM error (or one of the crates' it wraps) anywhere in the chain decides the
            // code; other errors are bad input.
            let code = e.chain().find_map(exit_code_of);
            ExitCode::from(code.unwrap_or(2) as u8)
        }
    }
}
