//! The self-check (`vmm run`) covers every seeded bug: with each one planted, `vmm run` fails
//! and names what caught it, on the sim and on kvm. (The correct guest passes every step on
//! both backends: `cli.rs`.)
#![forbid(unsafe_code)]

use guest_mm::Bug;
use std::process::Command;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// What `vmm run` must say with each seeded bug planted: the checker rules (`[rule]`) and
/// step mismatches (`expected ...`) that catch it on both backends. The sim also sees what its
/// maximally stale TLB shows; these are what both see.
const CAUGHT: &[(&str, &[&str])] = &[
    ("bug-stale-pte", &["[no-pte-in-hole]"]),
    ("bug-keep-writable", &["[pte-within-region-access]"]),
    (
        "bug-no-tlb-flush",
        &["[frame-freed-while-cached]", "[stale-tlb-entry]"],
    ),
    (
        "bug-overlap",
        &["[regions-sorted-and-disjoint]", "[region-tree-invariants]"],
    ),
    (
        "bug-free-mapped",
        &["[frame-accounting]", "[frame-mapped-within-refs]"],
    ),
    ("bug-split-off-by-one", &["[no-pte-in-hole]"]),
    (
        "bug-flush-wrong-page",
        &["[frame-freed-while-cached]", "[stale-tlb-entry]"],
    ),
    ("bug-free-before-flush", &["[frame-freed-while-cached]"]),
    (
        "bug-flush-before-clear",
        &["[frame-freed-while-cached]", "[stale-tlb-entry]"],
    ),
    (
        "bug-leak-on-unmap",
        &["[frame-accounting]", "[no-leak-after-destroy]"],
    ),
    ("bug-fork-parent-writable", &["[cow-read-only]"]),
    ("bug-fork-no-flush", &["[stale-tlb-entry]"]),
    (
        "bug-cow-no-copy",
        &["[cow-read-only]", "(C keeps its own copy): expected"],
    ),
    ("bug-refcount-leak", &["[frame-accounting]"]),
    (
        "bug-shared-becomes-private",
        &["[frame-owner]", "(C sees it): expected"],
    ),
    (
        "bug-kernel-end-off-by-one",
        &["[frame-provenance]", "lies in the kernel image"],
    ),
    (
        "bug-destroy-active-space",
        &["[table-freed-while-reachable]"],
    ),
    (
        "bug-stale-gap-summary",
        &["[region-tree-invariants]", "summary is stale"],
    ),
];

/// The one seeded bug the self-check cannot spring: the allocator hands out the last frame of
/// RAM twice only once every other frame is allocated, which takes a populate of all of RAM
/// (minutes under kvm here). `vmm fuzz --pressure` finds it (tests/tests/fuzz.rs).
const NEEDS_ALL_OF_RAM: &str = "bug-double-alloc-end-of-ram";

/// Placement bugs place validly: only the fuzzer's placement rules (the model's best-fit
/// prediction and the probe's chi-square test) see them (tests/tests/fuzz.rs).
const PLACEMENT_ONLY: &[&str] = &["bug-anywhere-first-fit", "bug-aslr-low-half"];

/// `vmm run` on `backend` with `bug` planted: its exit code and stderr.
fn vmm_run(backend: &str, bug: &str) -> (Option<i32>, String) {
    let output = Command::new(VMM)
        .args(["run", "--backend", backend, "--guest-features", bug])
        .args(["--memory", "64", "--timeout", "30"])
        .output()
        .expect("cannot start vmm");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

fn assert_every_bug_fails_the_self_check(backend: &str) {
    for &(bug, needles) in CAUGHT {
        let (code, stderr) = vmm_run(backend, bug);
        assert_ne!(
            code,
            Some(0),
            "{bug} on {backend} passed the self-check:\n{stderr}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{bug} on {backend}: no {needle:?} in\n{stderr}"
            );
        }
    }
    for &bug in PLACEMENT_ONLY.iter().chain([&NEEDS_ALL_OF_RAM]) {
        let (code, stderr) = vmm_run(backend, bug);
        assert_eq!(code, Some(0), "{bug} is caught now: list it\n{stderr}");
    }
}

#[test]
fn the_table_names_every_seeded_bug_once() {
    let mut named: Vec<&str> = CAUGHT.iter().map(|(bug, _)| *bug).collect();
    named.push(NEEDS_ALL_OF_RAM);
    named.extend(PLACEMENT_ONLY);
    named.sort_unstable();
    let mut all: Vec<&str> = Bug::ALL.iter().map(|bug| bug.feature()).collect();
    all.sort_unstable();
    assert_eq!(named, all);
}

#[test]
fn every_seeded_bug_fails_the_self_check_on_the_sim() {
    assert_every_bug_fails_the_self_check("sim");
}

#[test]
fn every_seeded_bug_fails_the_self_check_on_kvm() {
    // Each variant is built first (cargo at run time), so that the runs themselves are short.
    for bug in Bug::ALL {
        guest_image::variant::build_variant(&[bug.feature()]).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_every_bug_fails_the_self_check("kvm");
}
