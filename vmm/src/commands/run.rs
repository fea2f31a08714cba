//! `vmm run`: boot the guest and run its MM self-check, with the agreement checker after every
//! batch unless `--no-check`, or a scenario file (`--scenario`); `--misbehave` makes the guest
//! fail on purpose, to test the VMM's error reports.
#![forbid(unsafe_code)]

use super::guest::{config, recorded_args};
use crate::{GuestArgs, Misbehave};
use anyhow::bail;
use mm_checker::Checked;
use mm_driver::{Boot, Guest};
use mm_fuzz::self_check::SelfCheck;
use mm_scenario::builtin::SELF_CHECK_NAME;
use mm_scenario::file::load;
use mm_scenario::header::Settings;
use shared_mm::boot_info::GuestCommand;
use std::path::Path;
use vmm::VmmError;

/// `vmm run`: the self-check, or `scenario` when one is given.
pub fn run(
    guest: &GuestArgs,
    no_check: bool,
    misbehave: Option<Misbehave>,
    scenario: Option<&Path>,
) -> anyhow::Result<u32> {
    if let Some(file) = scenario {
        return run_scenario(guest, file, !no_check);
    }
    let command = guest_command(misbehave);
    let on_an_ap = matches!(
        command,
        GuestCommand::ApPanic | GuestCommand::ApTripleFault | GuestCommand::ApSilent
    );
    if on_an_ap && guest.cpus() < 2 {
        bail!("this --misbehave mode needs --cpus 2 or more: it names the last CPU");
    }
    let (config, backends) = config(guest, command)?;
    let mut vm = backends.boot(&config).map_err(VmmError::from)?;
    let (status, check, findings) = if no_check {
        let mut check = SelfCheck::with_cpus(guest.cpus());
        let status = vm.run(&mut check).map_err(VmmError::from)?;
        (status, check, Vec::new())
    } else {
        self_check_checked(vm.as_mut(), guest.cpus())?
    };
    judge_self_check(status, &check, findings)
}

/// What the guest does after boot: serve the MM's work, or misbehave as asked.
fn guest_command(misbehave: Option<Misbehave>) -> GuestCommand {
    match misbehave {
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
    }
}

/// Runs the self-check for `cpus` CPUs on `vm` with the agreement checker after every batch: the guest's exit
/// status, the self-check, and the checker's findings, one line each. A guest that fails shows
/// what the checker saw before it and how far the self-check got, then its error.
fn self_check_checked(
    vm: &mut dyn Guest,
    cpus: u32,
) -> anyhow::Result<(u32, SelfCheck, Vec<String>)> {
    let mut checked = Checked::new(SelfCheck::with_cpus(cpus));
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
    Ok((status, checked.into_inner(), findings))
}

/// The verdict on a self-check that ran to the guest's exit with `status`: every step done and
/// passed, and no finding, or the error that says what failed.
fn judge_self_check(status: u32, check: &SelfCheck, findings: Vec<String>) -> anyhow::Result<u32> {
    let mut failures = check.failures.clone();
    failures.extend(findings);
    if status != 0 || check.checked < check.step_count() || !check.probe_judged {
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
