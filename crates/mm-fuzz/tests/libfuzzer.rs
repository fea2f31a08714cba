//! The libFuzzer target's engine on the sim, as `fuzz/fuzz_targets/mm_ops.rs` runs it: the
//! correct MM runs arbitrary inputs clean, seeded bugs planted by name are found from the short
//! inputs libFuzzer found them with, and a finding is a reproducer in the scenario format.
#![forbid(unsafe_code)]

use mm_fuzz::libfuzzer::{Tally, Target, UnknownBug};
use mm_fuzz::repro::Reproducer;
use shared_mm::region_tree::{RandomSource, SplitMix64};

fn target(bugs: &str) -> Target {
    Target::new(guest_image::EMBEDDED_KERNEL.to_vec(), bugs).expect("known seeded bugs")
}

/// The reproducer `input` yields with `bugs` planted; fails the test if it yields none.
fn finding(bugs: &str, input: &[u8]) -> Reproducer {
    let found = target(bugs).run(&mm_sim::Sim, input).expect("the sim runs");
    found.unwrap_or_else(|| panic!("{bugs}: {input:?} ran clean"))
}

#[test]
fn the_correct_mm_runs_arbitrary_inputs_clean() {
    let target = target("");
    let mut rng = SplitMix64::new(27);
    for i in 0..300 {
        let len = 1 + (rng.next_u64() % 96) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let found = target.run(&mm_sim::Sim, &input).expect("the sim runs");
        assert!(
            found.is_none(),
            "input {i} {input:?}:\n{}",
            found.unwrap().to_text()
        );
    }
    let tally = Tally::ops_in(&target.tally().to_text()).expect("a tally");
    assert!(tally >= 300, "{tally} ops in 300 inputs");
    assert!(target.tally().to_text().starts_with("inputs 300\n"));
}

#[test]
fn a_seeded_bug_is_found_and_printed_as_a_scenario_that_parses_back() {
    // What libFuzzer found with `-seed=1`: map-fixed, then map-fixed over it again.
    let repro = finding("bug-overlap", &[0x04, 0x00, 0x00, 0x04]);
    assert_eq!(
        repro.header_value("failure"),
        Some("agreement checker: regions-sorted-and-disjoint")
    );
    assert_eq!(repro.header_value("guest-features"), Some("bug-overlap"));
    assert_eq!(repro.header_value("backend"), Some("sim"));
    assert_eq!(repro.ops.len(), 3);
    let parsed = Reproducer::parse(&repro.to_text()).expect("the scenario parses");
    assert_eq!(parsed.ops, repro.ops);
}

#[test]
fn three_bytes_find_the_copy_on_write_bugs() {
    // map-touch (a written page), fork, touch-write: the parent writes its page after the fork.
    let input = [0x06, 0x02, 0x11];
    for (bug, rule) in [
        ("bug-fork-no-flush", "stale-tlb-entry"),
        ("bug-cow-no-copy", "cow-read-only"),
        ("bug-refcount-leak", "frame-accounting"),
    ] {
        let repro = finding(bug, &input);
        let failure = repro.header_value("failure").expect("a failure line");
        assert_eq!(failure, format!("agreement checker: {rule}"), "{bug}");
    }
    assert!(target("").run(&mm_sim::Sim, &input).unwrap().is_none());
    // The same with a shared region, the child writing after the fork.
    let shared = [0xc6, 0x22, 0x11];
    let repro = finding("bug-fork-shared-new-object", &shared);
    assert_eq!(
        repro.header_value("failure"),
        Some("agreement checker: shared-page-one-frame")
    );
    assert!(target("").run(&mm_sim::Sim, &shared).unwrap().is_none());
}

#[test]
fn two_bytes_unmap_a_written_two_page_region() {
    // map-touch writes both pages of the first range; the unmap's cut is two pages.
    let input = [0x06, 0x09];
    for bug in ["bug-split-off-by-one", "bug-stale-pte", "bug-no-tlb-flush"] {
        let repro = finding(bug, &input);
        let failure = repro.header_value("failure").expect("a failure line");
        assert!(
            failure.starts_with("agreement checker: "),
            "{bug}: {failure}"
        );
    }
    assert!(target("").run(&mm_sim::Sim, &input).unwrap().is_none());
}

#[test]
fn two_bytes_find_the_lock_order_bug_as_a_finding() {
    // map-touch of shared memory (a fault takes object, then frames), then unmap it all (the
    // last handle's release takes frames, then object).
    let input = [0xc6, 0x09];
    let repro = finding("bug-lock-order", &input);
    assert_eq!(repro.header_value("failure"), Some("guest lock order"));
    let detail = repro.header_value("detail").expect("a detail line");
    assert!(
        detail.contains("takes object while holding frames"),
        "{detail}"
    );
    assert!(target("").run(&mm_sim::Sim, &input).unwrap().is_none());
}

#[test]
fn three_bytes_find_the_protect_bugs() {
    // map-touch (r-x or rw-, then a read or a write), then protect all of it to rw- or r--.
    for (bug, input, rule) in [
        (
            "bug-protect-keeps-exec",
            [0x46, 0x0c, 0x00],
            "pte-within-region-access",
        ),
        (
            "bug-keep-writable",
            [0x06, 0x0c, 0x01],
            "pte-within-region-access",
        ),
    ] {
        let repro = finding(bug, &input);
        let failure = repro.header_value("failure").expect("a failure line");
        assert_eq!(failure, format!("agreement checker: {rule}"), "{bug}");
        assert!(target("").run(&mm_sim::Sim, &input).unwrap().is_none());
    }
}

#[test]
fn the_probe_record_finds_a_biased_placement_and_only_that() {
    // The probe's record (kind 24): its draws fail the uniformity test by orders of magnitude
    // even at the target's campaign-wide false-alarm budget, and pass on the correct MM.
    let probe = [24u8];
    let repro = finding("bug-aslr-low-half", &probe);
    let failure = repro.header_value("failure").expect("a failure line");
    assert!(failure.contains("not uniform"), "{failure}");
    assert!(target("").run(&mm_sim::Sim, &probe).unwrap().is_none());
}

#[test]
fn an_unknown_bug_name_is_refused_naming_the_known_ones() {
    let kernel = guest_image::EMBEDDED_KERNEL.to_vec();
    let err = Target::new(kernel, "bug-stale-pte, bug-nonsense").unwrap_err();
    assert_eq!(err, UnknownBug("bug-nonsense".into()));
    let text = err.to_string();
    assert!(
        text.contains("MM_FUZZ_BUGS") && text.contains("bug-stale-pte"),
        "{text}"
    );
}
