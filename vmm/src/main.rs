//! The `vmm` command line: boot the guest and run its MM self-check, inspect, fuzz and replay.

use clap::{Parser, Subcommand};
use shared_mm::boot_info::GuestCommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vmm::checker::Checked;
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
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory: u64,
    /// Stop the guest after this many seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Seed for the guest's randomized placement.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
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
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Misbehave {
    Panic,
    Hang,
    TripleFault,
}

fn config(args: &GuestArgs, command: GuestCommand) -> Result<VmConfig, VmmError> {
    let kernel = match &args.kernel {
        Some(path) => std::fs::read(path).map_err(|source| VmmError::KernelUnreadable {
            path: path.clone(),
            source,
        })?,
        None => vmm::vm::EMBEDDED_KERNEL.to_vec(),
    };
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        return Err(VmmError::Driver(format!(
            "--timeout {} is not a number of seconds",
            args.timeout
        )));
    }
    Ok(VmConfig {
        kernel,
        // Saturates: an overflowing size is then refused by the VM's own size check.
        memory: args.memory.saturating_mul(1 << 20),
        timeout: (args.timeout > 0.0).then(|| Duration::from_secs_f64(args.timeout)),
        echo_console: true,
        random_seed: args.seed,
        command,
    })
}

fn run(cli: Cli) -> Result<u32, VmmError> {
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
                return Err(VmmError::SelfCheckFailed(failures));
            }
            eprintln!(
                "vmm: MM self-check passed: {} of {} steps",
                check.checked,
                check.step_count()
            );
            Ok(status)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(status) => {
            eprintln!("vmm: guest exited with status {status}");
            ExitCode::from(status.min(255) as u8)
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
