//! Files as a careless user or another user on the same machine leaves them: outputs that are
//! devices, FIFOs or directories, and inputs that are FIFOs or devices. Nothing blocks, nothing
//! special is renamed over, and each refusal is one error line with exit 2 (a warning for a
//! corpus entry).

use super::{assert_fails, path_of, scratch_file, vmm, vmm_run};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory for one test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("files-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

fn is_fifo(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// A reproducer of the stale-PTE bug on the sim (fast, and it fails: exit 1).
const SIM_REPRO: &[u8] = b"# backend: sim\n# guest-features: bug-stale-pte\n# memory-mib: 64\n\
create-space\nmap-fixed space=1 addr=0x1000 size=0x1000 access=0xb\ntouch-read space=1 addr=0x1000\n\
unmap space=1 addr=0x1000 size=0x1000\n";

#[test]
fn a_saved_scenario_into_dev_full_is_written_in_place_and_fails_with_exit_2() {
    let repro = scratch_file("files-full.repro", SIM_REPRO);
    let outcome = vmm(&["replay", path_of(&repro), "--save-scenario", "/dev/full"]);
    assert_fails(
        &outcome,
        2,
        &["cannot write the scenario: /dev/full: No space left on device"],
    );
    let dev = std::fs::metadata("/dev/full").expect("/dev/full");
    assert!(dev.file_type().is_char_device(), "/dev/full was replaced");
    // Into /dev/null it works, in place, and the replay's own code stands.
    let outcome = vmm(&["replay", path_of(&repro), "--save-scenario", "/dev/null"]);
    assert_fails(&outcome, 1, &["saved 4 ops", "as scenario /dev/null"]);
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn a_saved_scenario_onto_a_directory_is_refused() {
    let dir = scratch_dir("save-dir");
    let repro = scratch_file("files-dir.repro", SIM_REPRO);
    let outcome = vmm(&["replay", path_of(&repro), "--save-scenario", path_of(&dir)]);
    let why = format!("{}: a directory, not a regular file", dir.display());
    assert_fails(&outcome, 2, &[&why]);
    assert!(dir.is_dir());
}

#[test]
fn a_fifo_planted_where_a_reproducer_goes_is_refused_not_waited_on() {
    let out = scratch_dir("fuzz-out");
    let planted = out.join("repro-seed1-1.txt");
    mkfifo(&planted);
    let outcome = vmm(&[
        "fuzz",
        "--backend",
        "sim",
        "--guest-features",
        "bug-stale-pte",
        "--seed",
        "1",
        "--ops",
        "2000",
        "--max-findings",
        "1",
        "--quiet",
        "--out",
        path_of(&out),
    ]);
    let why = format!("{}: a FIFO, not a regular file", planted.display());
    assert_fails(&outcome, 2, &[&why]);
    assert!(is_fifo(&planted), "the FIFO was replaced");
}

#[test]
fn a_fifo_in_a_shared_corpus_is_skipped_with_a_warning() {
    let corpus = scratch_dir("corpus-fifo");
    let fifo = corpus.join("a.scn");
    mkfifo(&fifo);
    let outcome = vmm(&[
        "fuzz",
        "--backend",
        "sim",
        "--ops",
        "300",
        "--quiet",
        "--corpus",
        path_of(&corpus),
    ]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    let warning = format!(
        "corpus entry {} skipped: {}: a FIFO, not a regular file",
        fifo.display(),
        fifo.display()
    );
    assert!(outcome.stderr.contains(&warning), "{}", outcome.describe());
}

#[test]
fn a_fifo_or_device_as_scenario_or_kernel_is_refused_with_exit_2() {
    let dir = scratch_dir("inputs");
    let fifo = dir.join("input");
    mkfifo(&fifo);
    let fifo_text = format!("{}: a FIFO, not a regular file", fifo.display());
    let scenario = vmm_run(&["--scenario", path_of(&fifo), "--backend", "sim"]);
    assert_fails(&scenario, 2, &["cannot read scenario", &fifo_text]);
    let kernel = vmm_run(&["--kernel", path_of(&fifo)]);
    assert_fails(&kernel, 2, &["cannot read kernel", &fifo_text]);
    let device = vmm_run(&["--kernel", "/dev/zero"]);
    assert_fails(
        &device,
        2,
        &["cannot read kernel /dev/zero: a character device, not a regular file"],
    );
    let replayed = vmm(&["replay", "/dev/zero"]);
    assert_fails(
        &replayed,
        2,
        &["cannot read reproducer /dev/zero: a character device, not a regular file"],
    );
}
