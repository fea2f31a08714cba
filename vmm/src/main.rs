//! The `vmm` command line: boot the guest and run its MM self-check, inspect, fuzz and replay.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use shared_mm::boot_info::GuestCommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vmm::checker::Checked;
use vmm::coverage::CoverageMap;
use vmm::fuzz::campaign::{run_campaign, CampaignConfig};
use vmm::fuzz::replay;
use vmm::fuzz::repro::Reproducer;
use vmm::fuzz::shrink::Budget;
use vmm::guest_build::{build_variant_with, GuestVariant};
use vmm::scenario::SelfCheck;
use vmm::{Vm, VmConfig, VmmError};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Boot, inspect and fuzz a guest memory manager under KVM"
)]
struct Cli {
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
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Stop a guest that makes no hypercall for this many seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Seed for the guest's randomized placement, and for fuzz the operation generator
    /// [default: 24301 (0x5eed); replay: the reproducer's].
    #[arg(long)]
    seed: Option<u64>,
}

/// Guest RAM when `--memory` is not given.
const DEFAULT_MEMORY_MIB: u64 = 256;
/// Seed when `--seed` is not given.
const DEFAULT_SEED: u64 = 0x5eed;

impl GuestArgs {
    fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Boot the guest and run its memory-manager self-check.
    Run {
        #[command(flatten)]
        guest: GuestArgs,
        /// Skip the agreement checker (page tables against region trees) after each batch.
        #[arg(long)]
        no_check: bool,
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
        /// The reproducer file.
        file: PathBuf,
    },
}

/// Options of `vmm fuzz`.
#[derive(clap::Args, Clone)]
struct FuzzArgs {
    /// Operations to generate in total.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Guests fuzzed in parallel (each a deterministic stream of its own).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Operations per hypercall batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
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
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_findings: usize,
    /// Build the guest with sanitizer coverage and steer generation toward new edges (needs
    /// this source checkout and cargo). A --kernel built with coverage enables it too.
    #[arg(long)]
    coverage: bool,
    /// Build the guest with these cargo features (comma-separated, e.g. a seeded bug:
    /// bug-stale-pte) instead of using the embedded one.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    guest_features: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Misbehave {
    Panic,
    Hang,
    TripleFault,
}

fn config(args: &GuestArgs, command: GuestCommand) -> anyhow::Result<VmConfig> {
    let kernel = match &args.kernel {
        Some(path) => std::fs::read(path).map_err(|source| VmmError::KernelUnreadable {
            path: path.clone(),
            source,
        })?,
        None => vmm::vm::EMBEDDED_KERNEL.to_vec(),
    };
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        bail!("--timeout {} is not a number of seconds", args.timeout);
    }
    Ok(VmConfig {
        kernel,
        // Saturates: an overflowing size is then refused by the VM's own size check.
        memory: args
            .memory
            .unwrap_or(DEFAULT_MEMORY_MIB)
            .saturating_mul(1 << 20),
        timeout: (args.timeout > 0.0).then(|| Duration::from_secs_f64(args.timeout)),
        echo_console: true,
        random_seed: args.seed(),
        command,
    })
}

fn run(cli: Cli) -> anyhow::Result<u32> {
    match cli.command {
        Command::Run {
            guest,
            no_check,
            misbehave,
        } => {
            let command = match misbehave {
                None => GuestCommand::Serve,
                Some(Misbehave::Panic) => GuestCommand::Panic,
                Some(Misbehave::Hang) => GuestCommand::Hang,
                Some(Misbehave::TripleFault) => GuestCommand::TripleFault,
            };
            let mut vm = Vm::new(&config(&guest, command)?)?;
            let (status, check, findings) = if no_check {
                let mut check = SelfCheck::new();
                (vm.run(&mut check)?, check, Vec::new())
            } else {
                let mut checked = Checked::new(SelfCheck::new());
                let status = vm.run(&mut checked)?;
                eprintln!("vmm: agreement checker ran {} times", checked.checks_run);
                let findings = checked
                    .findings
                    .iter()
                    .map(|(run, f)| format!("check {run}: {f}"))
                    .collect();
                (status, checked.into_inner(), findings)
            };
            let mut failures = check.failures.clone();
            failures.extend(findings);
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
            let config = VmConfig {
                echo_console: false,
                ..config(&guest, GuestCommand::Serve)?
            };
            let report = vmm::inspect::inspect(&config)?;
            print!(
                "{}",
                if json {
                    report.to_json()
                } else {
                    report.to_table()
                }
            );
            if let Some(path) = &svg {
                std::fs::write(path, report.to_svg())
                    .with_context(|| format!("cannot write the SVG map to {}", path.display()))?;
                eprintln!("vmm: wrote the address-space map to {}", path.display());
            }
            let problems = report.problems();
            if !problems.is_empty() {
                return Err(VmmError::SelfCheckFailed(problems).into());
            }
            Ok(report.exit_status)
        }
        Command::Fuzz { guest, fuzz: args } => fuzz(&guest, &args),
        Command::Replay { guest, file } => replay_file(&guest, &file),
    }
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
        ref guest_features,
        max_findings,
    } = *args;
    let (check, shrink) = (!no_check, !no_shrink);
    if jobs == 0 || batch == 0 {
        bail!("--jobs and --batch must be at least 1");
    }
    let mut vm = config(guest, GuestCommand::Serve)?;
    vm.echo_console = false;
    let mut kernel_label = guest
        .kernel
        .as_ref()
        .map_or("embedded".into(), |p| p.display().to_string());
    if coverage || !guest_features.is_empty() {
        if guest.kernel.is_some() {
            bail!("--kernel cannot be combined with --coverage or --guest-features");
        }
        let features: Vec<&str> = guest_features.iter().map(String::as_str).collect();
        let mut variant = GuestVariant::new(&features);
        if coverage {
            variant = variant.with_coverage();
        }
        eprintln!("vmm fuzz: building guest variant {}", variant.name());
        let path = build_variant_with(&variant).map_err(anyhow::Error::msg)?;
        vm.kernel = std::fs::read(&path).map_err(|source| VmmError::KernelUnreadable {
            path: path.clone(),
            source,
        })?;
        kernel_label = path.display().to_string();
    }
    let counters = CoverageMap::from_elf(&vm.kernel)
        .map_err(anyhow::Error::msg)
        .context("reading the kernel's coverage counters")?;
    if coverage && counters.is_none() {
        bail!("the coverage guest has no sanitizer-coverage counters");
    }
    let campaign = CampaignConfig {
        seed: guest.seed(),
        ops,
        jobs,
        batch,
        check,
        shrink,
        shrink_budget: Budget::default(),
        vm,
        out_dir: out.clone(),
        kernel_label,
        progress: !quiet,
        coverage: counters,
        max_findings,
    };
    let report = run_campaign(&campaign)?;
    eprintln!(
        "vmm fuzz: {} ops in {:.1} s ({:.1} s of it shrinking; {:.0} ops/s fuzzing) on {} guest boot(s), seed {}, {} job(s), checker {}",
        report.ops_executed,
        report.elapsed.as_secs_f64(),
        report.shrinking.as_secs_f64(),
        report.ops_per_second(),
        report.guests_booted,
        guest.seed(),
        jobs,
        if check { "on" } else { "off" }
    );
    if let Some((covered, total)) = report.coverage {
        eprintln!(
            "vmm fuzz: coverage {covered} of {total} guest edges ({:.1}%)",
            100.0 * covered as f64 / total as f64
        );
    }
    if report.bugs.is_empty() {
        eprintln!("vmm fuzz: no findings");
        return Ok(0);
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
    Ok(1)
}

fn replay_file(guest: &GuestArgs, file: &PathBuf) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read reproducer {}", file.display()))?;
    let repro = Reproducer::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    // What the command line leaves open comes from the reproducer: the same seed (randomized
    // placement depends on it), RAM size and kernel make the same run.
    let mut guest = guest.clone();
    let recorded = |key: &str| repro.header_value(key).and_then(|v| v.parse::<u64>().ok());
    guest.seed = guest.seed.or(recorded("seed"));
    guest.memory = guest.memory.or(recorded("memory-mib"));
    if guest.kernel.is_none() {
        match repro.header_value("kernel").map(PathBuf::from) {
            Some(path) if path.is_file() => guest.kernel = Some(path),
            Some(path) if path != Path::new("embedded") => {
                eprintln!(
                    "vmm replay: recorded kernel {} is missing; using the embedded one",
                    path.display()
                )
            }
            _ => {}
        }
    }
    let mut vm = config(&guest, GuestCommand::Serve)?;
    vm.echo_console = false;
    if let Some(expected) = repro.header_value("failure") {
        eprintln!(
            "vmm replay: {} ops; recorded failure: {expected}",
            repro.ops.len()
        );
    }
    match replay(&vm, &repro.ops, 1, true)? {
        Some((failure, at)) => {
            eprintln!(
                "vmm replay: reproduced after {at} ops: {}\n{}",
                failure.signature, failure.description
            );
            Ok(1)
        }
        None => {
            eprintln!(
                "vmm replay: all {} ops ran clean; the failure did not reproduce",
                repro.ops.len()
            );
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(status) => ExitCode::from(status.min(255) as u8),
        Err(e) => {
            eprintln!("vmm: error: {e:#}");
            // A VMM error anywhere in the chain decides the code; other errors are bad input.
            let vmm_error = e.chain().find_map(|cause| cause.downcast_ref::<VmmError>());
            ExitCode::from(vmm_error.map_or(2, VmmError::exit_code) as u8)
        }
    }
}
