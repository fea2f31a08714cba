//! The `vmm` command line: its arguments, parsed with clap, and the exit code of what the
//! subcommand (`commands/`) did: boot the guest and run its MM self-check, inspect, fuzz and
//! replay. Every subcommand and option: `docs/commands.md`; the exit codes:
//! `docs/exit-codes-and-bounds.md`.
#![forbid(unsafe_code)]

mod commands;

use bounded_io::excerpt::{excerpt, MAX_QUOTED};
use clap::{Parser, Subcommand};
use commands::replay::ReplayWays;
use mm_driver::Backend;
use shared_mm::smp::MAX_CPUS;
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::error::exit_code_of;

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
    /// CPUs, 1 to 8, sharing one MM; run adds an SMP part that shoots down across them, fuzz
    /// runs rounds over them (on sim, in interleavings a scheduler chooses and a reproducer
    /// records) [default: 1; replay: the reproducer's].
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

/// A replay count of at least 1.
fn parse_replays(text: &str) -> Result<usize, String> {
    match parse_u64(text)?.try_into() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a replay count from 1")),
        Ok(n) => Ok(n),
    }
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

/// Guest RAM when `--memory` is not given.
const DEFAULT_MEMORY_MIB: u64 = 256;
/// Seed when `--seed` is not given.
const DEFAULT_SEED: u64 = 0x5eed;

impl GuestArgs {
    fn memory_mib(&self) -> u64 {
        self.memory.unwrap_or(DEFAULT_MEMORY_MIB)
    }

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
    /// Replay a reproducer saved by `vmm fuzz`, or an input of the libFuzzer target `mm_ops`
    /// (a crash artifact); exits 1 if the failure still happens.
    Replay {
        #[command(flatten)]
        guest: GuestArgs,
        /// Operations per batch, with the checker after each (1 to 1024); a batch that fails is
        /// replayed again one op per batch, to pin the failure to its op [default: 256; a
        /// libFuzzer input: 64, the target's].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        batch: Option<u16>,
        /// The reproducer file, or a libFuzzer input: one libFuzzer named (crash-HASH and the
        /// other artifacts, or a corpus file's HASH), or any file with --libfuzzer-input. An
        /// input runs on the target's guest (sim, 16 MiB) unless options say otherwise.
        file: PathBuf,
        /// Read FILE as an input of the libFuzzer target `mm_ops`, whatever its name.
        #[arg(long)]
        libfuzzer_input: bool,
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
    /// Convert a fuzz corpus: `vmm fuzz --corpus` entries into inputs of the libFuzzer target
    /// `mm_ops` (--to libfuzzer), or its inputs into entries (--to scenarios).
    ConvertCorpus {
        /// What to write: libfuzzer inputs, or scenarios (corpus entries, a batch of at most
        /// 1024 ops each).
        #[arg(long, value_enum)]
        to: CorpusFormat,
        /// The corpus directory to read.
        from_dir: PathBuf,
        /// The directory to write into (created if missing).
        to_dir: PathBuf,
    },
}

/// The two formats of a fuzz corpus.
#[derive(clap::ValueEnum, Clone, Copy)]
enum CorpusFormat {
    /// Inputs of the libFuzzer target `mm_ops`.
    Libfuzzer,
    /// Scenario files, as `vmm fuzz --corpus` keeps them.
    Scenarios,
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
    /// Replays a failure's shrink may spend on each backend it shrinks on (a guest boot each on
    /// kvm; at least 1).
    #[arg(long, value_name = "N", default_value_t = mm_fuzz::shrink::Budget::DEFAULT_REPLAYS, value_parser = parse_replays)]
    shrink_budget: usize,
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

/// Runs the subcommand `cli` names; its exit status.
fn run(cli: Cli) -> anyhow::Result<u32> {
    match cli.command {
        Command::Run {
            guest,
            no_check,
            misbehave,
            scenario,
        } => commands::run::run(&guest, no_check, misbehave, scenario.as_deref()),
        Command::Inspect { guest, json, svg } => {
            commands::inspect::inspect(&guest, json, svg.as_deref())
        }
        Command::Fuzz { guest, fuzz } => commands::fuzz::fuzz(&guest, &fuzz),
        Command::Replay {
            guest,
            batch,
            file,
            libfuzzer_input,
            save_scenario,
            break_at_op,
        } => {
            let ways = ReplayWays {
                batch: batch.map(usize::from),
                libfuzzer_input,
                save: save_scenario.as_deref(),
                break_at: break_at_op,
            };
            commands::replay::replay_file(&guest, &file, ways)
        }
        Command::ConvertCorpus {
            to,
            from_dir,
            to_dir,
        } => {
            let to_libfuzzer = matches!(to, CorpusFormat::Libfuzzer);
            commands::corpus::convert(to_libfuzzer, &from_dir, &to_dir)
        }
    }
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
