//! The libFuzzer target's files on the command line: `vmm replay` runs a crash artifact as it
//! is (named as libFuzzer names it, or with `--libfuzzer-input`), and `vmm convert-corpus`
//! turns a `vmm fuzz --corpus` directory into libFuzzer inputs and back.

use super::{assert_fails, path_of, scratch_file, vmm};
use std::path::PathBuf;

/// The input libFuzzer found `bug-overlap` with (`-seed=1`): create-space (implicit), then a
/// map-fixed over the same page twice.
const OVERLAP: [u8; 4] = [0x04, 0x00, 0x00, 0x04];
/// The artifact's name: libFuzzer's, by the input's SHA-1.
const ARTIFACT: &str = "crash-bd3450c274d77562d74370a664ab8dde06d57690";

#[test]
fn a_crash_artifact_replays_as_it_is_on_the_targets_guest() {
    let artifact = scratch_file(ARTIFACT, &OVERLAP);
    let outcome = vmm(&[
        "replay",
        "--guest-features",
        "bug-overlap",
        path_of(&artifact),
    ]);
    assert_fails(
        &outcome,
        1,
        &[
            "is an input of the libFuzzer target mm_ops: 3 ops",
            "reproduced after 3 ops: agreement checker: regions-sorted-and-disjoint",
        ],
    );
    // The correct MM runs it clean.
    let outcome = vmm(&["replay", path_of(&artifact)]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    // Any name, with --libfuzzer-input; without it, the bytes are no scenario.
    let renamed = scratch_file("overlap-input", &OVERLAP);
    let outcome = vmm(&[
        "replay",
        "--libfuzzer-input",
        "--guest-features",
        "bug-overlap",
        path_of(&renamed),
    ]);
    assert_fails(&outcome, 1, &["reproduced after 3 ops"]);
    let outcome = vmm(&["replay", path_of(&renamed)]);
    assert_ne!(outcome.code, Some(0), "{}", outcome.describe());
    assert_ne!(outcome.code, Some(1), "{}", outcome.describe());
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn files_in(dir: &PathBuf) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[test]
fn a_corpus_converts_to_libfuzzer_inputs_and_back() {
    let (inputs, entries) = (scratch_dir("lf-inputs"), scratch_dir("lf-entries"));
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("one"), OVERLAP).unwrap();
    std::fs::write(inputs.join("two"), [0x1b, 0x11, 0x01]).unwrap();
    let outcome = vmm(&[
        "convert-corpus",
        "--to",
        "scenarios",
        path_of(&inputs),
        path_of(&entries),
    ]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    assert!(
        outcome.stderr.contains("read 2 file(s)"),
        "{}",
        outcome.describe()
    );
    assert_eq!(files_in(&entries), 2);
    let back = scratch_dir("lf-back");
    let outcome = vmm(&[
        "convert-corpus",
        "--to",
        "libfuzzer",
        path_of(&entries),
        path_of(&back),
    ]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    assert_eq!(files_in(&back), 2);
    // A converted input replays the operations of the input it came from.
    let converted = std::fs::read_dir(&back).unwrap().next().unwrap().unwrap();
    let outcome = vmm(&["replay", "--libfuzzer-input", path_of(&converted.path())]);
    assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
    // A directory that is not there is an error, not an empty corpus.
    let outcome = vmm(&[
        "convert-corpus",
        "--to",
        "libfuzzer",
        "/nonexistent/corpus",
        path_of(&back),
    ]);
    assert_fails(&outcome, 2, &["/nonexistent/corpus"]);
}
