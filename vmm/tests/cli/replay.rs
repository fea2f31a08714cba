//! `vmm replay` runs in batches (`--batch`, 256 by default) with the checker after each, and
//! narrows down to single ops only after a batch fails: the failure is still pinned to its op,
//! and a saved scenario keeps the batches the replay ran.

use super::{assert_fails, path_of, scratch_file, vmm};

/// 150 harmless ops, then the four that plant the stale PTE (the unmap, op 153, fails), then 46
/// more: 200 ops on the sim with `bug-stale-pte`.
fn long_stale_pte_repro() -> String {
    let mut text = String::from(
        "# backend: sim\n# guest-features: bug-stale-pte\n# memory-mib: 64\ncreate-space\n",
    );
    for i in 0..149 {
        text += &format!("touch-read space=1 addr={:#x}\n", 0x1000 * (i + 1));
    }
    text += "map-fixed space=1 addr=0x400000 size=0x1000 access=0xb\n";
    text += "touch-read space=1 addr=0x400000\n";
    text += "touch-write space=1 addr=0x400000 value=0x5\n";
    text += "unmap space=1 addr=0x400000 size=0x1000\n";
    for _ in 0..46 {
        text += "touch-read space=1 addr=0x1000\n";
    }
    text
}

#[test]
fn a_failing_batch_is_replayed_again_one_op_at_a_time_to_pin_its_op() {
    let repro = scratch_file("long-stale.repro", long_stale_pte_repro().as_bytes());
    let out = scratch_file("long-stale.scn", b"");
    let outcome = vmm(&[
        "replay",
        path_of(&repro),
        "--batch",
        "64",
        "--save-scenario",
        path_of(&out),
    ]);
    assert_fails(
        &outcome,
        1,
        &[
            "the batch of ops 128 to 191 failed; replayed it again one op per batch",
            "reproduced after 154 ops: agreement checker: frame-freed-while-cached",
            "saved 200 ops",
        ],
    );
    // The saved scenario runs as the narrowed replay did: two batches of 64, the failing batch
    // (ops 128 to 191) one op per batch, then the 8 ops after it in one more batch.
    let text = std::fs::read_to_string(&out).expect("the scenario");
    let separators = text.lines().filter(|l| *l == "---").count();
    assert_eq!(separators, 2 + 63 + 1, "{text}");
    assert!(text.contains("unmap space=1 addr=0x400000 size=0x1000 => ok  # replay failed here"));
}

#[test]
fn batch_1_replays_one_op_per_batch_and_a_clean_replay_needs_no_narrowing() {
    let repro = scratch_file("long-stale-1.repro", long_stale_pte_repro().as_bytes());
    let outcome = vmm(&["replay", path_of(&repro), "--batch", "1"]);
    assert_fails(&outcome, 1, &["reproduced after 154 ops"]);
    assert!(
        !outcome.stderr.contains("replayed it again"),
        "{}",
        outcome.describe()
    );
    // Without the bug the same ops run clean, in batches, with nothing to narrow.
    let clean = long_stale_pte_repro().replace("# guest-features: bug-stale-pte\n", "");
    let repro = scratch_file("long-clean.repro", clean.as_bytes());
    for (batch, batches) in [("64", 4), ("256", 1)] {
        let outcome = vmm(&["replay", path_of(&repro), "--batch", batch]);
        assert_eq!(outcome.code, Some(0), "{}", outcome.describe());
        let clean = format!("all 200 ops ran clean in {batches} batch(es), the checker after each");
        assert!(outcome.stderr.contains(&clean), "{}", outcome.describe());
        assert!(
            !outcome.stderr.contains("replayed it again"),
            "{}",
            outcome.describe()
        );
    }
}
