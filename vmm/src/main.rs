//! The `vmm` command line: boot the guest and run its MM self-check, inspect, fuzz and replay.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use guest_mm::{Bug, SeededBugs};
use shared_mm::boot_info::GuestCommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vmm::checker::Checked;
use vmm::coverage::CoverageMap;
use vmm::fuzz::campaign::{run_campaign, CampaignConfig};
use vmm::fuzz::repro::{op_to_line, Reproducer};
use vmm::fuzz::shrink::Budget;
use vmm::fuzz::{replay, replay_stopping_at};
use vmm::gdb::GdbServer;
use vmm::guest_build::{build_variant_with, GuestVariant};
use vmm::scenario::SelfCheck;
use vmm::{Backend, Guest, VmConfig, VmmError};

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

    fn features(&self) -> &[String] {
        self.guest_features.as_deref().unwrap_or_default()
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
        /// With --gdb: stop the guest when it starts op N (counted from 0, as replay's
        /// messages count) [default: the op that fails, else the last].
        #[arg(long, value_name = "N")]
        break_at_op: Option<usize>,
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
    /// Build the guest with sanitizer coverage and steer generation toward new edges (kvm
    /// only; needs this source checkout and cargo). A --kernel built with coverage enables it
    /// too.
    #[arg(long)]
    coverage: bool,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Misbehave {
    Panic,
    Hang,
    TripleFault,
}

/// The seeded bugs `features` name; every feature must be one.
fn seeded_bugs(features: &[String]) -> anyhow::Result<SeededBugs> {
    features.iter().try_fold(SeededBugs::NONE, |bugs, name| {
        let bug = Bug::from_feature(name).ok_or_else(|| {
            let known: Vec<&str> = Bug::ALL.iter().map(|b| b.feature()).collect();
            anyhow!(
                "unknown guest feature {name:?} (the seeded bugs are {})",
                known.join(", ")
            )
        })?;
        Ok(bugs.with(bug))
    })
}

/// The kernel image to boot under KVM and how reproducers name it: `--kernel`, a variant
/// built with `features` (and coverage), or the embedded guest.
fn kvm_kernel(args: &GuestArgs, coverage: bool) -> anyhow::Result<(Vec<u8>, String)> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| VmmError::KernelUnreadable {
            path: path.to_path_buf(),
            source,
        })
    };
    if let Some(path) = &args.kernel {
        if coverage || !args.features().is_empty() {
            bail!("--kernel cannot be combined with --coverage or --guest-features");
        }
        return Ok((read(path)?, path.display().to_string()));
    }
    if !coverage && args.features().is_empty() {
        return Ok((vmm::vm::EMBEDDED_KERNEL.to_vec(), "embedded".into()));
    }
    let features: Vec<&str> = args.features().iter().map(String::as_str).collect();
    let mut variant = GuestVariant::new(&features);
    if coverage {
        variant = variant.with_coverage();
    }
    eprintln!("vmm: building guest variant {}", variant.name());
    let path = build_variant_with(&variant).map_err(anyhow::Error::msg)?;
    Ok((read(&path)?, path.display().to_string()))
}

/// The ELF gdb loads for a kernel labelled `label` (a path, or `embedded`).
fn elf_for_gdb(label: &str) -> String {
    let path = if label == "embedded" {
        vmm::vm::EMBEDDED_KERNEL_PATH
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

/// The VM configuration `args` describe, and the kernel's label for reproducers.
fn config_with(
    args: &GuestArgs,
    command: GuestCommand,
    coverage: bool,
) -> anyhow::Result<(VmConfig, String)> {
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        bail!("--timeout {} is not a number of seconds", args.timeout);
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
            (vmm::vm::EMBEDDED_KERNEL.to_vec(), "embedded".into(), seeded)
        }
    };
    let gdb = gdb_server(args, &label)?;
    let config = VmConfig {
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
        backend: args.backend(),
        seeded_bugs,
        gdb,
    };
    Ok((config, label))
}

fn config(args: &GuestArgs, command: GuestCommand) -> anyhow::Result<VmConfig> {
    config_with(args, command, false).map(|(config, _)| config)
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
            let mut vm = Guest::boot(&config(&guest, command)?)?;
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
        Command::Replay {
            guest,
            file,
            break_at_op,
        } => replay_file(&guest, &file, break_at_op),
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
        max_findings,
    } = *args;
    let (check, shrink) = (!no_check, !no_shrink);
    if jobs == 0 || batch == 0 {
        bail!("--jobs and --batch must be at least 1");
    }
    if guest.gdb.is_some() && jobs != 1 {
        bail!("--gdb needs --jobs 1: one gdb debugs one guest");
    }
    let (mut vm, kernel_label) = config_with(guest, GuestCommand::Serve, coverage)?;
    vm.echo_console = false;
    let counters = match guest.backend() {
        Backend::Kvm => CoverageMap::from_elf(&vm.kernel)
            .map_err(anyhow::Error::msg)
            .context("reading the kernel's coverage counters")?,
        Backend::Sim => None,
    };
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
        guest_features: guest.features().to_vec(),
        progress: !quiet,
        coverage: counters,
        max_findings,
    };
    let report = run_campaign(&campaign)?;
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

/// `guest` with what the command line leaves open taken from `repro`: the same seed
/// (randomized placement depends on it), RAM size, backend, seeded bugs and kernel make the
/// same run.
fn recorded_args(guest: &GuestArgs, repro: &Reproducer) -> anyhow::Result<GuestArgs> {
    let mut guest = guest.clone();
    let recorded = |key: &str| repro.header_value(key).and_then(|v| v.parse::<u64>().ok());
    guest.seed = guest.seed.or(recorded("seed"));
    guest.memory = guest.memory.or(recorded("memory-mib"));
    if guest.backend.is_none() {
        if let Some(name) = repro.header_value("backend") {
            guest.backend = Some(name.parse()?);
        }
    }
    if guest.guest_features.is_none() {
        guest.guest_features = repro.header_value("guest-features").map(|list| {
            list.split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect()
        });
    }
    let recorded_kernel = repro.header_value("kernel").map(PathBuf::from);
    let variant_given = !guest.features().is_empty();
    if guest.kernel.is_none() && guest.backend() == Backend::Kvm && !variant_given {
        match recorded_kernel {
            Some(path) if path.is_file() => guest.kernel = Some(path),
            Some(path) if path != Path::new("embedded") => eprintln!(
                "vmm replay: recorded kernel {} is missing; using the embedded one",
                path.display()
            ),
            _ => {}
        }
    }
    Ok(guest)
}

fn replay_file(guest: &GuestArgs, file: &PathBuf, break_at: Option<usize>) -> anyhow::Result<u32> {
    if break_at.is_some() && guest.gdb.is_none() {
        bail!("--break-at-op needs --gdb ADDR");
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read reproducer {}", file.display()))?;
    let repro = Reproducer::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let guest = recorded_args(guest, &repro)?;
    let mut vm = config(&guest, GuestCommand::Serve)?;
    vm.echo_console = false;
    if let Some(expected) = repro.header_value("failure") {
        eprintln!(
            "vmm replay: {} ops on {}; recorded failure: {expected}",
            repro.ops.len(),
            guest.backend()
        );
    }
    let outcome = match vm.gdb.clone() {
        None => replay(&vm, &repro.ops, 1, true)?,
        Some(server) => {
            let at = match break_at {
                Some(at) => at,
                None => failing_op(&vm, &repro.ops)?,
            };
            let op = repro.ops.get(at).ok_or_else(|| {
                anyhow!(
                    "--break-at-op {at}: the reproducer has ops 0 to {}",
                    repro.ops.len().saturating_sub(1)
                )
            })?;
            eprintln!(
                "vmm replay: the guest stops for gdb when it starts op {at} ({})",
                op_to_line(op)
            );
            replay_stopping_at(&vm, &repro.ops, at, server.stop_request())?
        }
    };
    match outcome {
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

/// The op a replay fails at (found by a replay without gdb), else the last one.
fn failing_op(vm: &VmConfig, ops: &[shared_mm::abi::Op]) -> anyhow::Result<usize> {
    if ops.is_empty() {
        bail!("the reproducer has no ops to stop at");
    }
    eprintln!("vmm replay: replaying once without gdb to find the failing op");
    let clean = VmConfig {
        gdb: None,
        ..vm.clone()
    };
    Ok(match replay(&clean, ops, 1, true)? {
        Some((failure, prefix)) => {
            let at = prefix.saturating_sub(1).min(ops.len() - 1);
            eprintln!("vmm replay: op {at} fails: {}", failure.signature);
            at
        }
        None => {
            eprintln!("vmm replay: the failure does not reproduce; stopping at the last op");
            ops.len() - 1
        }
    })
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
