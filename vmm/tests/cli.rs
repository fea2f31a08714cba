//! The `vmm` command line (run, fuzz, replay, convert-corpus): exit codes and the error lines
//! it prints.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[path = "cli/exit_codes.rs"]
mod exit_codes;
#[path = "cli/files.rs"]
mod files;
#[path = "cli/libfuzzer.rs"]
mod libfuzzer;
#[path = "cli/quoting.rs"]
mod quoting;
#[path = "cli/replay.rs"]
mod replay;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Longest a `vmm` process may live in these tests before it is killed (its own `--timeout`
/// should always stop it much sooner).
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// What a finished process left behind.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion, killing it (and failing the test) after [`PROCESS_LIMIT`].
fn run(mut command: Command) -> Outcome {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the command");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let started = Instant::now();
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if started.elapsed() > PROCESS_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran longer than {PROCESS_LIMIT:?}; killed it");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `vmm run` with `extra` arguments, plus a small guest (`--memory 64`) and `--timeout 10`
/// unless `extra` sets them (clap refuses an option given twice).
fn vmm_run(extra: &[&str]) -> Outcome {
    let mut command = Command::new(VMM);
    command.arg("run").args(extra);
    for (option, default) in [("--memory", "64"), ("--timeout", "10")] {
        if !extra.contains(&option) {
            command.args([option, default]);
        }
    }
    run(command)
}

/// Asserts the exit code and that stderr contains every one of `needles`.
fn assert_fails(outcome: &Outcome, code: i32, needles: &[&str]) {
    assert_eq!(outcome.code, Some(code), "{}", outcome.describe());
    for needle in needles {
        assert!(
            outcome.stderr.contains(needle),
            "stderr lacks {needle:?}; {}",
            outcome.describe()
        );
    }
}

/// A file under the per-package scratch directory Cargo provides to integration tests.
fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("writing a scratch file");
    path
}

#[test]
fn default_guest_exits_0() {
    let outcome = vmm_run(&[]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    assert!(
        outcome.stdout.contains("guest-kernel: booted"),
        "{}",
        outcome.describe()
    );
    assert!(
        outcome.stderr.contains("guest exited with status 0"),
        "{}",
        outcome.describe()
    );
}

#[test]
fn missing_kernel_file_exits_2_and_names_the_path() {
    let path = "/nonexistent/dir/guest-kernel.elf";
    let outcome = vmm_run(&["--kernel", path]);
    assert_fails(&outcome, 2, &["cannot read kernel", path]);
}

#[test]
fn text_file_as_kernel_exits_2() {
    let path = scratch_file("not-a-kernel.txt", b"this is not a kernel\n");
    let outcome = vmm_run(&["--kernel", path.to_str().expect("UTF-8 path")]);
    assert_fails(&outcome, 2, &["not an x86_64 ELF"]);
}

#[test]
fn memory_too_small_exits_2() {
    let outcome = vmm_run(&["--memory", "1"]);
    assert_fails(&outcome, 2, &["bad guest memory size", "at least 16 MiB"]);
}

#[test]
fn memory_overflowing_u64_exits_2() {
    let outcome = vmm_run(&["--memory", &u64::MAX.to_string()]);
    assert_fails(
        &outcome,
        2,
        &[
            "bad guest memory size (2^64 bytes or more)",
            "at most 16 GiB",
        ],
    );
}

#[test]
fn guest_panic_exits_101() {
    let outcome = vmm_run(&["--misbehave", "panic"]);
    assert_fails(
        &outcome,
        101,
        &["guest panicked", "panic requested by the host"],
    );
}

#[test]
fn guest_triple_fault_exits_102() {
    let outcome = vmm_run(&["--misbehave", "triple-fault"]);
    assert_fails(&outcome, 102, &["triple-faulted", "rip="]);
}

#[test]
fn hung_guest_exits_124_after_its_timeout() {
    let started = Instant::now();
    let outcome = vmm_run(&["--misbehave", "hang", "--timeout", "1"]);
    assert_fails(&outcome, 124, &["did not exit within 1 s", "rip="]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Reports a skipped test on the real stderr (libtest's capture only sees `eprintln!`), so the
/// skip shows in the test output even though the test passes.
fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Runs `vmm run` in a private mount namespace whose /dev is an empty tmpfs, so /dev/kvm does
/// not exist for it alone. Needs root (or CAP_SYS_ADMIN) and util-linux `unshare`; without them
/// the test is skipped with the reason printed.
#[test]
fn missing_dev_kvm_exits_2_and_says_so() {
    const TEST: &str = "missing_dev_kvm_exits_2_and_says_so";
    let hide_dev = "mount -t tmpfs tmpfs /dev && test ! -e /dev/kvm";
    let mut probe = Command::new("unshare");
    probe.args(["--mount", "sh", "-c", hide_dev]);
    let probe = match probe.output() {
        Ok(output) => output,
        Err(e) => return skip(TEST, &format!("cannot run unshare: {e}")),
    };
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        return skip(
            TEST,
            &format!(
                "cannot hide /dev in a mount namespace ({}): {}",
                probe.status,
                why.trim()
            ),
        );
    }
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "sh", "-c"])
        .arg(format!("{hide_dev} && exec \"$0\" run --timeout 10"))
        .arg(VMM);
    let outcome = run(command);
    assert_fails(
        &outcome,
        2,
        &["KVM is not available", "/dev/kvm does not exist"],
    );
}

fn vmm(args: &[&str]) -> Outcome {
    let mut command = Command::new(VMM);
    command.args(args);
    run(command)
}

#[test]
fn fuzz_of_the_correct_guest_exits_0_with_a_summary() {
    let out = std::env::temp_dir().join(format!("vmm-cli-fuzz-{}", std::process::id()));
    let out = out.to_str().expect("utf-8 temp dir");
    let outcome = vmm(&[
        "fuzz", "--seed", "3", "--ops", "500", "--quiet", "--out", out,
    ]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    assert!(
        outcome.stderr.contains("500 ops") && outcome.stderr.contains("no findings"),
        "{}",
        outcome.describe()
    );
}

#[test]
fn fuzz_rejects_zero_jobs() {
    let outcome = vmm(&["fuzz", "--jobs", "0", "--ops", "10"]);
    assert_fails(&outcome, 2, &["invalid value '0' for '--jobs"]);
}

#[test]
fn out_of_range_values_exit_2_naming_the_option() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["run", "--timeout", "1e20"],
            "is not between 0 and 31536000 seconds",
        ),
        (&["run", "--timeout=-1"], "is not between 0 and"),
        (
            &["fuzz", "--batch", "2000"],
            "invalid value '2000' for '--batch",
        ),
        (&["run", "--seed", "0xzz"], "is not a 64-bit number"),
    ];
    for (args, needle) in cases {
        assert_fails(&vmm(args), 2, &[needle]);
    }
}

#[test]
fn the_readmes_hex_seed_notation_is_accepted() {
    let outcome = vmm(&["run", "--backend", "sim", "--seed", "0x5eed"]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
}

#[test]
fn a_kernel_file_past_the_size_limit_is_refused() {
    // Sparse: 65 MiB long, nothing written.
    let path = scratch_file("huge-kernel.elf", b"");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(65 << 20))
        .expect("grow the scratch file");
    assert_fails(
        &vmm_run(&["--kernel", path_of(&path)]),
        2,
        &["larger than the 64 MiB"],
    );
}

#[test]
fn replay_of_a_clean_reproducer_exits_0() {
    let repro = scratch_file(
        "clean.repro",
        b"# failure: none\ncreate-space\nmap-fixed space=1 addr=0x400000 size=0x1000 access=0xb\ntouch-write space=1 addr=0x400000 value=0x5\n",
    );
    let outcome = vmm(&["replay", repro.to_str().expect("utf-8 path")]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    assert!(
        outcome.stderr.contains("all 3 ops ran clean"),
        "{}",
        outcome.describe()
    );
}

#[test]
fn replay_of_a_malformed_reproducer_names_the_line() {
    let repro = scratch_file("bad.repro", b"create-space\nunmap space=1 addr=0x1000\n");
    let outcome = vmm(&["replay", repro.to_str().expect("utf-8 path")]);
    assert_fails(&outcome, 2, &["line 2", "unmap needs size="]);
}

#[test]
fn replay_of_a_missing_file_exits_2() {
    let outcome = vmm(&["replay", "/nonexistent/x.repro"]);
    assert_fails(
        &outcome,
        2,
        &["cannot read reproducer /nonexistent/x.repro"],
    );
}

#[test]
fn the_built_in_self_check_passes_every_step_on_both_backends() {
    for backend in ["kvm", "sim"] {
        let outcome = vmm_run(&["--backend", backend]);
        assert_eq!(outcome.code, Some(0), "{backend}: {}", outcome.describe());
        for line in [
            "vmm: agreement checker ran 13 times",
            "vmm: MM self-check passed: 93 of 93 steps",
        ] {
            assert!(
                outcome.stderr.contains(line),
                "{backend}: no {line:?}; {}",
                outcome.describe()
            );
        }
    }
}

/// The documented smallest and largest `--memory` boot and pass the self-check on both
/// backends: the guest heap scales with RAM (a fixed 16 MiB heap, and a boot heap holding two
/// bitmaps of RAM, ran out at 16 GiB).
#[test]
fn the_smallest_and_largest_documented_memory_pass_the_self_check_on_both_backends() {
    for memory in ["16", "16384"] {
        for backend in ["kvm", "sim"] {
            let outcome = vmm_run(&["--memory", memory, "--backend", backend]);
            let context = format!("--memory {memory} --backend {backend}");
            assert_eq!(outcome.code, Some(0), "{context}: {}", outcome.describe());
            assert!(
                outcome
                    .stderr
                    .contains("MM self-check passed: 93 of 93 steps"),
                "{context}: {}",
                outcome.describe()
            );
        }
    }
}

/// A user's regression scenario: two batches, a header that picks the sim.
const USER_SCENARIO: &str = "\
# backend: sim
create-space => value 1
map-fixed space=1 addr=0x400000 size=0x4000 access=0xb => at 0x400000  # 4 pages u-rw-
touch-write space=1 addr=0x401000 value=0x2a => value 0x2a
---
unmap space=1 addr=0x401000 size=0x1000 => ok  # punch a hole
touch-read space=1 addr=0x401000 => fault segv-no-region at 0x401000
touch-read space=1 addr=0x402000 => value 0
map-anywhere space=1 size=0x1000 align=0x200000 access=0xb => aligned 0x200000
";

fn path_of(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn a_user_scenario_that_holds_passes_with_its_step_count() {
    let file = scratch_file("user-good.scn", USER_SCENARIO.as_bytes());
    let outcome = vmm_run(&["--scenario", path_of(&file)]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    let passed = format!("scenario {} passed: 7 of 7 steps", file.display());
    for line in ["agreement checker ran 3 times", passed.as_str()] {
        assert!(outcome.stderr.contains(line), "{}", outcome.describe());
    }
}

#[test]
fn a_user_scenario_reports_each_mismatch_by_line_and_exits_1() {
    let broken = USER_SCENARIO
        .replace("fault segv-no-region at 0x401000", "value 0x2a")
        .replace("aligned 0x200000", "at 0x1000");
    let file = scratch_file("user-bad.scn", broken.as_bytes());
    let outcome = vmm_run(&["--scenario", path_of(&file)]);
    let header = format!("scenario {} failed in 2 place(s):", file.display());
    assert_fails(
        &outcome,
        1,
        &[
            &header,
            "  line 7: touch-read space=1 addr=0x401000: expected value 0x2a, got fault segv-no-region at 0x401000\n",
            "  line 9: map-anywhere space=1 size=0x1000 align=0x200000 access=0xb: expected at 0x1000, got at 0x",
        ],
    );
    assert!(!outcome.stderr.contains("line 8"), "{}", outcome.describe());
}

#[test]
fn a_malformed_scenario_exits_2_with_one_line_naming_file_and_line() {
    let file = scratch_file(
        "user-malformed.scn",
        b"create-space\n\n# a comment\nmap-fixed space=1 addr=0x400000 size=0x1000 access=0xb => at 0x40000z\n",
    );
    let outcome = vmm_run(&["--scenario", path_of(&file)]);
    let line = format!(
        "vmm: error: {}: line 4: => at 0x40000z: \"0x40000z\" is not a number\n",
        file.display()
    );
    assert_eq!(outcome.code, Some(2), "{}", outcome.describe());
    assert_eq!(outcome.stderr, line, "{}", outcome.describe());
}

#[test]
fn reproducer_headers_and_fields_are_validated_with_their_line() {
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "bad-seed.repro",
            b"# failure: x\n# seed: abc\ncreate-space\n",
            "line 2: header seed: \"abc\" is not a number",
        ),
        (
            "bad-backend.repro",
            b"# backend: qemu\ncreate-space\n",
            "line 1: header backend: \"qemu\" is not kvm or sim",
        ),
        (
            "wide-space.repro",
            b"create-space\ntouch-read space=0x100000001 addr=0x1000\n",
            "line 2: space=0x100000001 does not fit in 32 bits",
        ),
    ];
    for (name, text, why) in cases {
        let file = scratch_file(name, text);
        let outcome = vmm(&["replay", path_of(&file)]);
        assert_fails(&outcome, 2, &[&format!("{}: {why}", file.display())]);
    }
}

/// The stale-PTE reproducer the fuzzer shrinks on the sim (`vmm fuzz --backend sim
/// --guest-features bug-stale-pte --seed 1`).
const STALE_PTE_REPRO: &str = "\
# vmm fuzz reproducer: replay with `vmm replay FILE`
# failure: agreement checker: frame-freed-while-cached
# seed: 1
# backend: sim
# guest-features: bug-stale-pte
# kernel: embedded
# memory-mib: 64
create-space
map-fixed space=1 addr=0x1000 size=0x1000 access=0xb
touch-read space=1 addr=0x1000
unmap space=1 addr=0x1000 size=0x1000
";

#[test]
fn a_saved_scenario_records_the_observed_results_and_reproduces_them() {
    let repro = scratch_file("stale.repro", STALE_PTE_REPRO.as_bytes());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stale.scn");
    let _ = std::fs::remove_file(&out);
    let replayed = vmm(&["replay", path_of(&repro), "--save-scenario", path_of(&out)]);
    let saved = format!(
        "saved 4 ops with their observed results as scenario {}",
        out.display()
    );
    assert_fails(&replayed, 1, &["reproduced after 4 ops", &saved]);
    let text = std::fs::read_to_string(&out).expect("the scenario is written");
    let steps: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        steps,
        [
            "create-space => value 0x1",
            "---",
            "map-fixed space=1 addr=0x1000 size=0x1000 access=0xb => at 0x1000",
            "---",
            "touch-read space=1 addr=0x1000 => value 0x0",
            "---",
            "unmap space=1 addr=0x1000 size=0x1000 => ok  # replay failed here: agreement checker: frame-freed-while-cached",
        ]
    );
    for header in [
        "# seed: 1\n",
        "# memory-mib: 64\n",
        "# recorded-with: backend=sim guest-features=bug-stale-pte\n",
    ] {
        assert!(text.contains(header), "{header:?} in\n{text}");
    }
    // On the guest it was recorded on, every result is the same and the checker finds the bug
    // after the unmap's batch, on the unmap's line.
    let buggy = vmm_run(&[
        "--scenario",
        path_of(&out),
        "--backend",
        "sim",
        "--guest-features",
        "bug-stale-pte",
    ]);
    assert_fails(
        &buggy,
        1,
        &[
            "failed in 2 place(s)",
            "line 12: checker, after this batch: space 1 [no-pte-in-hole] at 0x1000",
        ],
    );
    assert!(!buggy.stderr.contains("expected"), "{}", buggy.describe());
    // The correct MM gives the same results and nothing for the checker.
    let fixed = vmm_run(&["--scenario", path_of(&out), "--backend", "sim"]);
    assert_eq!(fixed.code, Some(0), "{}", fixed.describe());
    assert!(
        fixed.stderr.contains("passed: 4 of 4 steps"),
        "{}",
        fixed.describe()
    );
}
