//! `vmm replay`: a reproducer (or an input of the libFuzzer target, decoded) run again in
//! batches with the checker after each, a failing batch narrowed to its op, optionally under gdb
//! (stopping at an op) and recorded as a regression scenario.
#![forbid(unsafe_code)]

use super::guest::{config, recorded_args};
use crate::GuestArgs;
use anyhow::{anyhow, bail, Context};
use bounded_io::files::{write_output, Naming};
use mm_driver::{Boot, GuestConfig};
use mm_fuzz::libfuzzer::convert::{is_libfuzzer_name, load_input};
use mm_fuzz::narrow::{replay_narrowed, replay_planned, Plan, Replayed};
use mm_fuzz::repro::Reproducer;
use mm_scenario::file::load;
use mm_scenario::header::{cpus_line, Settings};
use mm_scenario::ops::op_to_line;
use mm_scenario::record::record;
use shared_mm::boot_info::GuestCommand;
use std::path::Path;
use vmm::gdb::GdbServer;
use vmm::{Backends, VmmError};

/// Operations per batch when `--batch` is not given, for a reproducer or scenario.
const DEFAULT_BATCH: usize = 256;

/// How `vmm replay` runs: its batch size (`None`: the file's kind decides), whether the file is
/// a libFuzzer input whatever its name, the scenario to save, the op to stop at under gdb.
pub struct ReplayWays<'a> {
    pub batch: Option<usize>,
    pub libfuzzer_input: bool,
    pub save: Option<&'a Path>,
    pub break_at: Option<usize>,
}

/// The reproducer in `file`, and the batch size to replay it in: a libFuzzer input (by the
/// name libFuzzer gave it, or as `--libfuzzer-input` says) decoded, with the target's settings
/// in its header, in the target's batches; otherwise a reproducer or scenario.
fn load_reproducer(file: &Path, ways: &ReplayWays<'_>) -> anyhow::Result<(Reproducer, usize)> {
    if ways.libfuzzer_input || is_libfuzzer_name(file) {
        let repro = load_input(file).map_err(VmmError::File)?;
        eprintln!(
            "vmm replay: {} is an input of the libFuzzer target mm_ops: {} ops",
            bounded_io::excerpt::path(file),
            repro.ops.len()
        );
        return Ok((repro, ways.batch.unwrap_or(mm_fuzz::libfuzzer::BATCH)));
    }
    let repro = Reproducer::from(load(file, "reproducer")?);
    Ok((repro, ways.batch.unwrap_or(DEFAULT_BATCH)))
}

/// `vmm replay FILE`: exits 1 if the reproducer's failure still happens.
pub fn replay_file(guest: &GuestArgs, file: &Path, ways: ReplayWays<'_>) -> anyhow::Result<u32> {
    if ways.break_at.is_some() && guest.gdb.is_none() {
        bail!("--break-at-op needs --gdb ADDR");
    }
    let (repro, batch) = load_reproducer(file, &ways)?;
    if repro.ops.is_empty() {
        bail!(
            "{}: the reproducer has no operations to replay",
            bounded_io::excerpt::path(file)
        );
    }
    let settings = Settings::of(&repro.header)?;
    let guest = recorded_args(guest, &settings)?;
    let (mut vm, backends) = config(&guest, GuestCommand::Serve)?;
    vm.schedule = settings.schedule;
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
    if let Some(rounds) = repro.cpu_rounds() {
        return replay_rounds_file(&backends, &vm, rounds, &ways);
    }
    let replayed = match &backends.gdb {
        None => replay_narrowed(&backends, &vm, &repro.ops, batch).map_err(VmmError::from)?,
        Some(server) => replay_under_gdb((&backends, &vm), &repro.ops, (batch, &ways), server)?,
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

/// A reproducer of several CPUs, replayed in its rounds, each op on its CPU, with the checker
/// after each round; it is not narrowed (a round's ops race each other by design). Under
/// `--gdb` that one guest waits for gdb.
fn replay_rounds_file(
    backends: &Backends,
    vm: &GuestConfig,
    rounds: Vec<Vec<mm_driver::driver::CpuBatch>>,
    ways: &ReplayWays<'_>,
) -> anyhow::Result<u32> {
    if ways.save.is_some() {
        bail!("a reproducer of several CPUs replays without --save-scenario");
    }
    if ways.break_at.is_some() {
        bail!(
            "--break-at-op needs a reproducer of one CPU: under --gdb, a reproducer of several \
             CPUs replays its rounds once, and gdb's own breakpoints stop it"
        );
    }
    let count = rounds.len();
    let run = mm_fuzz::replay_rounds(backends, vm, rounds, true).map_err(VmmError::from)?;
    match &run.failure {
        None => eprintln!(
            "vmm replay: all {} ops ran clean in {count} round(s), the checker after each; the \
             failure did not reproduce",
            run.sent.len()
        ),
        Some(failure) => eprintln!(
            "vmm replay: reproduced in its {count} round(s): {}\n{}",
            failure.signature, failure.description
        ),
    }
    Ok(u32::from(run.failure.is_some()))
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

/// `vmm replay --gdb`: the replay, in batches of `batch` but for the op it stops at, alone in
/// its batch: the guest stops for gdb when it starts op `break_at` (by default the op that
/// fails).
fn replay_under_gdb(
    (backends, vm): (&Backends, &GuestConfig),
    ops: &[shared_mm::abi::Op],
    (batch, ways): (usize, &ReplayWays<'_>),
    server: &GdbServer,
) -> anyhow::Result<Replayed> {
    let at = match ways.break_at {
        Some(at) => at,
        None => failing_op(vm, ops, batch)?,
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
    let plan = Plan::new(ops.len(), batch, at..at + 1);
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
