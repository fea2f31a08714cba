//! `--cpus` on the command line: its range on every command, the sim's several CPUs, a one-CPU run
//! that is what it always was, what a two-CPU run prints, the `cpus` header of reproducers and
//! scenarios, and Ctrl-C on a fuzz campaign with several CPUs.
// Only the Ctrl-C test needs unsafe code (`kill`).
#![deny(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// `vmm ARGS`; every guest it boots has its own time limit (`--timeout`), so it always ends.
fn vmm(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("cannot start vmm")
}

/// `vmm run` with a small guest and a time limit, plus `extra`.
fn run(extra: &[&str]) -> Output {
    let mut args = vec!["run", "--memory", "64", "--timeout", "20"];
    args.extend(extra);
    vmm(&args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// A file under the per-package scratch directory Cargo provides to integration tests.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("writing a scratch file");
    path
}

#[test]
fn cpu_counts_outside_1_to_8_exit_2_on_every_command() {
    let repro = scratch_file("cpus-range.repro", "create-space\n");
    let repro = repro.to_str().expect("utf-8 path");
    for cpus in ["0", "9"] {
        for command in [
            vec!["run"],
            vec!["inspect"],
            vec!["fuzz", "--ops", "10"],
            vec!["replay", repro],
        ] {
            let mut args = command.clone();
            args.extend(["--cpus", cpus]);
            let out = vmm(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
            let needle = format!("invalid value '{cpus}' for '--cpus");
            assert!(
                stderr(&out).contains(&needle),
                "{args:?}: {}",
                describe(&out)
            );
        }
    }
}

#[test]
fn several_cpus_on_the_sim_run_to_their_end() {
    for command in [vec!["run"], vec!["inspect"], vec!["fuzz", "--ops", "10"]] {
        let mut args = command.clone();
        args.extend(["--backend", "sim", "--cpus", "2"]);
        let out = vmm(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
    }
}

#[test]
fn one_cpu_prints_what_the_default_prints() {
    let default = run(&[]);
    let one = run(&["--cpus", "1"]);
    assert_eq!(default.status.code(), Some(0), "{}", describe(&default));
    assert_eq!(one.status.code(), Some(0), "{}", describe(&one));
    assert_eq!(stdout(&one), stdout(&default));
    assert_eq!(stderr(&one), stderr(&default));
    assert!(!stdout(&one).contains("vmm: "), "{}", describe(&one));
}

#[test]
fn two_cpus_print_a_line_per_cpu_online_and_the_ipi_round_trip() {
    let out = run(&["--cpus", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    for cpu in 0..2 {
        let line = format!("vmm: cpu {cpu} online (APIC id {cpu})\n");
        assert_eq!(text.matches(&line).count(), 1, "{}", describe(&out));
    }
    let trips: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vmm: IPI round trip"))
        .collect();
    assert_eq!(trips.len(), 1, "{}", describe(&out));
    assert!(
        trips[0].contains("acknowledged by every target"),
        "{}",
        trips[0]
    );
    assert!(
        stderr(&out).contains("MM self-check passed"),
        "{}",
        describe(&out)
    );
}

#[test]
fn inspect_runs_with_several_cpus() {
    let out = vmm(&[
        "inspect",
        "--cpus",
        "2",
        "--memory",
        "64",
        "--timeout",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).starts_with("space 1: cr3 0x"),
        "{}",
        describe(&out)
    );
}

/// Asserts `out` exited `code` with `needle` in its stderr.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    assert!(stderr(out).contains(needle), "{}", describe(out));
}

#[test]
fn a_panic_on_an_ap_exits_101_naming_the_cpu() {
    let out = run(&["--cpus", "2", "--misbehave", "ap-panic"]);
    assert_fails(&out, 101, "vmm: error: on cpu 1: guest panicked at");
}

#[test]
fn an_ap_misbehaviour_needs_an_ap() {
    let out = run(&["--misbehave", "ap-panic"]);
    assert_fails(&out, 2, "needs --cpus 2 or more");
}

const REPRO: &str = "# failure: agreement checker: x\n# memory-mib: 64\n# seed: 7\n";

#[test]
fn a_reproducer_header_gives_the_cpus_the_command_line_leaves_open() {
    let on_sim = scratch_file(
        "cpus-sim.repro",
        &format!("{REPRO}# backend: sim\n# cpus: 2\ncreate-space\n"),
    );
    let out = vmm(&["replay", on_sim.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("on sim with 2 cpus"),
        "{}",
        describe(&out)
    );
    let out = vmm(&["replay", on_sim.to_str().expect("utf-8"), "--cpus", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the command line wins: {}",
        describe(&out)
    );

    let on_kvm = scratch_file(
        "cpus-kvm.repro",
        &format!("{REPRO}# backend: kvm\n# cpus: 2\ncreate-space\n"),
    );
    let saved = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpus-kvm.scn");
    let (on_kvm, saved) = (
        on_kvm.to_str().expect("utf-8"),
        saved.to_str().expect("utf-8"),
    );
    let out = vmm(&[
        "replay",
        on_kvm,
        "--timeout",
        "20",
        "--save-scenario",
        saved,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("1 ops on kvm with 2 cpus"),
        "{}",
        describe(&out)
    );
    let scenario = std::fs::read_to_string(saved).expect("the scenario was saved");
    assert!(scenario.contains("\n# cpus: 2\n"), "{scenario}");

    let out = run(&["--scenario", saved]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("vmm: cpu 1 online"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_cpus_header_out_of_range_names_its_line() {
    let bad = scratch_file(
        "cpus-bad.repro",
        &format!("{REPRO}# cpus: 9\ncreate-space\n"),
    );
    let out = vmm(&["replay", bad.to_str().expect("utf-8")]);
    assert_fails(&out, 2, "line 4: header cpus: 9 is not 1 to 8");
}

/// What a Ctrl-C in the terminal does to `child`: SIGINT.
#[allow(unsafe_code)]
fn ctrl_c(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill takes no pointers; `pid` is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "kill");
}

#[test]
fn ctrl_c_stops_a_fuzz_campaign_on_several_cpus_with_its_summary() {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpus-fuzz-out");
    let mut child = Command::new(VMM)
        .args(["fuzz", "--cpus", "2", "--memory", "64", "--timeout", "30"])
        .args(["--ops", "1000000000000", "--quiet", "--out"])
        .arg(&out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vmm fuzz");
    // Booted and fuzzing by then (a boot takes well under a second); the handler is installed
    // before the first boot.
    std::thread::sleep(Duration::from_secs(3));
    ctrl_c(&child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for vmm fuzz") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("vmm fuzz --cpus 2 did not stop within a minute of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut text);
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("vmm fuzz: interrupted by Ctrl-C"), "{text}");
    assert!(text.contains("no findings"), "{text}");
}
