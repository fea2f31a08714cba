//! The libFuzzer target `mm_ops` against the engine `vmm fuzz --backend sim` runs, on the same
//! machine in one run: inputs/s and ops/s, and the edges each reaches in 60 s. Edges are
//! libFuzzer's `cov:` in the target's instrumented build, for both: the engine's operations
//! are replayed through that build afterwards (`-runs=0`), so one count measures both.

use super::results::Row;
use mm_driver::{Backend, GuestConfig};
use mm_fuzz::generate::Generator;
use mm_fuzz::libfuzzer::{input, Tally, MEMORY_MIB, TALLY_VAR};
use mm_fuzz::{run_session, Session, Source};
use shared_mm::abi::Op;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long each side fuzzes.
const SECONDS: u64 = 60;
/// Operations per batch of the engine's session: the target's batch.
const BATCH: usize = mm_fuzz::libfuzzer::BATCH;
/// Operations per input when the engine's operations are replayed in the target: each input
/// boots a fresh guest, so large ones keep most of the state the engine's one guest built,
/// and stay well below libFuzzer's 1 MiB input limit (a literal record is about ten bytes).
const REPLAY_CHUNK: usize = 32_768;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ sits in the repository")
}

/// Builds the target with `scripts/fuzz.sh build` (which installs cargo-fuzz where it is
/// missing); returns the binary.
fn build_target() -> Result<PathBuf, String> {
    eprintln!("bench: building the libFuzzer target mm_ops (bash scripts/fuzz.sh build)");
    let status = Command::new("bash")
        .arg("scripts/fuzz.sh")
        .arg("build")
        .current_dir(repo())
        .status()
        .map_err(|e| format!("cannot start bash: {e}"))?;
    if !status.success() {
        return Err(format!("scripts/fuzz.sh build: {status}"));
    }
    let binary = repo().join("fuzz/target/x86_64-unknown-linux-gnu/release/mm_ops");
    match binary.is_file() {
        true => Ok(binary),
        false => Err(format!("{} is missing after the build", binary.display())),
    }
}

/// What a run of the target printed: inputs run and edges reached (the largest `cov:`).
#[derive(Debug)]
struct Printed {
    inputs: u64,
    edges: u64,
}

fn parse(stderr: &str) -> Option<Printed> {
    let inputs = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))?
        .trim()
        .parse()
        .ok()?;
    let edges = stderr
        .split("cov: ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()?;
    Some(Printed { inputs, edges })
}

/// Runs the target with `args`; returns what it printed and its wall time.
fn run_target(binary: &Path, args: &[String], tally: &Path) -> Result<(Printed, f64), String> {
    let started = Instant::now();
    let out = Command::new(binary)
        .args(args)
        .arg("-print_final_stats=1")
        .env(TALLY_VAR, tally)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "mm_ops {}: {}\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        ));
    }
    let printed = parse(&stderr).ok_or_else(|| format!("mm_ops printed no stats:\n{stderr}"))?;
    Ok((printed, seconds))
}

/// The ops the engine `vmm fuzz` runs, generated from seed 1 for [`SECONDS`] on one sim guest
/// of the target's size, with the model and the checker after every batch.
fn engine_ops() -> Vec<Op> {
    eprintln!("bench: the vmm fuzz engine on sim, {MEMORY_MIB} MiB, {SECONDS} s");
    let config = GuestConfig {
        echo_console: false,
        backend: Backend::Sim,
        memory: MEMORY_MIB << 20,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let stop = AtomicBool::new(false);
    let mut generator = Generator::new(1);
    let source = Source::Generated {
        generator: &mut generator,
        budget: usize::MAX,
        feedback: None,
    };
    let session = Session::new(source, BATCH, None).with_stop(&stop);
    let run = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(SECONDS));
            stop.store(true, Ordering::Relaxed);
        });
        run_session(&vmm::Backends::default(), &config, session, true)
    });
    let run = run.unwrap_or_else(|e| panic!("the engine on sim: {e}"));
    assert!(
        run.failure.is_none(),
        "the correct MM failed: {:?}",
        run.failure
    );
    run.sent
}

/// The engine's ops as libFuzzer inputs in `dir`, [`REPLAY_CHUNK`] ops each.
fn write_inputs(ops: &[Op], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, chunk) in ops.chunks(REPLAY_CHUNK).enumerate() {
        std::fs::write(dir.join(format!("engine-{i:05}")), input::encode(chunk))?;
    }
    Ok(())
}

/// libFuzzer's own RSS limit (its default), which the target keeps on top of the bench's.
const TARGET_RSS_MB: u64 = 2048;

/// The bench's peak resident set (`VmHWM`) in MiB, 0 where it cannot be read.
fn own_peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
    let kib = line.and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

/// `-rss_limit_mb` for a target the bench starts. Linux keeps a process's peak RSS across
/// `execve`, and libFuzzer reads its own from `getrusage`: started from a bench that peaked at
/// 2 GiB (the RegionTree and checker sections), the target counted that as its own and stopped
/// at once with a false out-of-memory. So the target gets its 2 GiB on top of the bench's peak.
fn rss_limit() -> String {
    format!("-rss_limit_mb={}", own_peak_rss_mb() + TARGET_RSS_MB)
}

/// The rows, or why they could not be measured.
fn measure(scratch: &Path) -> Result<Vec<Row>, String> {
    let binary = build_target()?;
    let tally = scratch.join("tally");
    let corpus = scratch.join("corpus");
    std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    eprintln!("bench: libFuzzer mm_ops, seed 1, {SECONDS} s from an empty corpus");
    let args = [
        "-seed=1".to_string(),
        format!("-max_total_time={SECONDS}"),
        format!("-artifact_prefix={}/", scratch.display()),
        rss_limit(),
        corpus.display().to_string(),
    ];
    let (fuzzed, seconds) = run_target(&binary, &args, &tally)?;
    let text = std::fs::read_to_string(&tally).map_err(|e| format!("{TALLY_VAR}: {e}"))?;
    let ops = Tally::ops_in(&text).ok_or_else(|| format!("{TALLY_VAR}: no ops in {text:?}"))?;
    let (inputs_per_s, ops_per_s) = (fuzzed.inputs as f64 / seconds, ops as f64 / seconds);

    let started = Instant::now();
    let engine = engine_ops();
    let engine_per_s = engine.len() as f64 / started.elapsed().as_secs_f64();
    let replay = scratch.join("engine");
    write_inputs(&engine, &replay).map_err(|e| format!("{}: {e}", replay.display()))?;
    eprintln!(
        "bench: the engine's {} ops replayed through mm_ops for its edges",
        engine.len()
    );
    let args = [
        "-runs=0".to_string(),
        rss_limit(),
        replay.display().to_string(),
    ];
    let (replayed, _) = run_target(&binary, &args, &scratch.join("replay-tally"))?;

    let name = |what: &str| format!("libFuzzer mm_ops, sim {MEMORY_MIB} MiB, {SECONDS} s: {what}");
    Ok(vec![
        Row::new(name("inputs/s"), inputs_per_s, "inputs/s"),
        Row::new(
            "vmm fuzz engine, same guest, 1 job: ops/s",
            engine_per_s,
            "ops/s",
        ),
        Row::new(name("ops/s (ratio: / vmm fuzz)"), ops_per_s, "ops/s")
            .against(engine_per_s, ops_per_s / engine_per_s),
        Row::new(
            format!("vmm fuzz engine, {SECONDS} s: edges (its ops replayed in mm_ops)"),
            replayed.edges as f64,
            "edges",
        ),
        Row::new(
            name("edges (ratio: / vmm fuzz)"),
            fuzzed.edges as f64,
            "edges",
        )
        .against(
            replayed.edges as f64,
            fuzzed.edges as f64 / replayed.edges as f64,
        ),
    ])
}

/// The section: the rows, or one row saying they could not be measured (and why, on stderr).
pub fn libfuzzer_target(rows: &mut Vec<Row>) {
    let scratch = std::env::temp_dir().join(format!("vmm-bench-libfuzzer-{}", std::process::id()));
    let measured = measure(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    match measured {
        Ok(measured) => rows.extend(measured),
        Err(why) => {
            eprintln!("bench: the libFuzzer rows were not measured: {why}");
            rows.push(Row::new(
                "libFuzzer mm_ops: not measured (see stderr)",
                f64::NAN,
                "—",
            ));
        }
    }
}
