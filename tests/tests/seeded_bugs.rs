//! Seeded bugs: each plants one classic MM bug, as a guest variant under KVM and switched on at
//! run time on the sim; the agreement checker (or, for what page tables cannot show, the
//! expected results) must catch it on both backends, and the correct MM must pass the same
//! scenario clean.
#![forbid(unsafe_code)]

use guest_image::variant::build_variant;
use guest_mm::{Bug, SeededBugs};
use mm_checker::Rule;
use mm_driver::{Backend, Boot, GuestConfig};
use mm_scenario::{bug_bait, run_checked, Outcome};
use std::time::Duration;
use vmm::Backends;

/// The bait scenario's outcome with `bug` planted (none: the correct MM) on `backend`.
fn run_on(backend: Backend, bug: Option<Bug>) -> Outcome {
    let mut config = GuestConfig {
        timeout: Some(Duration::from_secs(30)),
        backend,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    match (backend, bug) {
        (Backend::Kvm, Some(bug)) => {
            let elf = build_variant(&[bug.feature()]).unwrap_or_else(|e| panic!("{e}"));
            config.kernel =
                std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
        }
        (Backend::Sim, Some(bug)) => config.seeded_bugs = SeededBugs::NONE.with(bug),
        (_, None) => {}
    }
    let mut vm = Backends::default().boot(&config).expect("boot the guest");
    run_checked(vm.as_mut(), &bug_bait())
        .unwrap_or_else(|e| panic!("{bug:?} on {backend}: {e}\n{}", vm.console_output()))
}

fn rules(outcome: &Outcome) -> Vec<Rule> {
    outcome.findings.iter().map(|(_, f)| f.rule).collect()
}

/// The bug is caught by the checker with `rule`, on both backends.
fn assert_checker_reports(bug: &str, rule: Rule) {
    let bug = Bug::from_feature(bug).expect("a seeded bug");
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(bug));
        assert!(
            rules(&outcome).contains(&rule),
            "{bug:?} on {backend}: expected a {rule} finding, got {outcome:#?}"
        );
    }
}

#[test]
fn correct_mm_passes_the_bait_clean_on_both_backends() {
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, None);
        assert!(outcome.is_clean(), "{backend}: {outcome:#?}");
    }
}

#[test]
fn stale_pte_after_unmap_is_reported() {
    assert_checker_reports("bug-stale-pte", Rule::PteInHole);
}

#[test]
fn writable_bit_kept_after_protect_is_reported() {
    assert_checker_reports("bug-keep-writable", Rule::PteExceedsRegion);
}

#[test]
fn overlapping_placement_is_reported() {
    assert_checker_reports("bug-overlap", Rule::RegionsOverlap);
}

#[test]
fn frame_freed_while_mapped_is_reported() {
    assert_checker_reports("bug-free-mapped", Rule::FrameOverMapped);
}

#[test]
fn partial_unmap_off_by_one_page_is_reported() {
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(Bug::SplitOffByOne));
        let stale: Vec<u64> = outcome
            .findings
            .iter()
            .filter(|(_, f)| f.rule == Rule::PteInHole)
            .filter_map(|(_, f)| f.va)
            .collect();
        // Exactly the last page of the two-page unmap keeps its PTE.
        assert!(
            stale.contains(&0x40_1000) && !stale.contains(&0x40_0000),
            "{backend}: {outcome:#?}"
        );
    }
}

/// The missing flush shows in behaviour: the touch after unmap reads through the stale
/// translation instead of faulting, which the expected results catch.
fn assert_stale_read_caught(outcome: &Outcome) {
    assert!(
        outcome
            .mismatches
            .iter()
            .any(|m| m.to_string().contains("unmapped page faults")),
        "{outcome:#?}"
    );
}

#[test]
fn missing_tlb_flush_on_unmap_is_caught_on_the_sim_every_time() {
    // The sim's TLB keeps every entry until it is flushed, so no luck is involved.
    assert_stale_read_caught(&run_on(Backend::Sim, Some(Bug::NoTlbFlush)));
}

/// `bug` is caught on both backends by the flush trace's replay with exactly `expected`.
fn assert_trace_reports(bug: Bug, expected: &[Rule]) {
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(bug));
        let mut found: Vec<Rule> = rules(&outcome)
            .into_iter()
            .filter(|r| matches!(r, Rule::StaleTlbEntry | Rule::FrameFreedWhileCached))
            .collect();
        found.sort();
        found.dedup();
        assert_eq!(found, expected, "{bug:?} on {backend}: {outcome:#?}");
    }
}

#[test]
fn missing_tlb_flush_on_unmap_is_caught_by_the_trace_on_both_backends() {
    // The frames go back while their translations may be cached, and ring 3 runs on them.
    let both = [Rule::StaleTlbEntry, Rule::FrameFreedWhileCached];
    assert_trace_reports(Bug::NoTlbFlush, &both);
}

#[test]
fn a_flush_of_the_neighbouring_page_is_caught_by_the_trace() {
    let both = [Rule::StaleTlbEntry, Rule::FrameFreedWhileCached];
    assert_trace_reports(Bug::FlushWrongPage, &both);
}

#[test]
fn freeing_before_the_flush_is_caught_by_the_trace() {
    // The flush does come before ring 3 runs again: only the early free is wrong.
    assert_trace_reports(Bug::FreeBeforeFlush, &[Rule::FrameFreedWhileCached]);
}

#[test]
fn a_flush_before_the_clear_is_caught_by_the_trace() {
    let both = [Rule::StaleTlbEntry, Rule::FrameFreedWhileCached];
    assert_trace_reports(Bug::FlushBeforeClear, &both);
}

#[test]
fn a_leak_on_unmap_is_caught_by_frame_accounting_on_both_backends() {
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(Bug::LeakOnUnmap));
        let leak = outcome
            .findings
            .iter()
            .find(|(_, f)| f.rule == Rule::FrameAccounting)
            .unwrap_or_else(|| panic!("{backend}: no frame-accounting finding: {outcome:#?}"));
        assert!(leak.1.detail.contains("no owner holds it"), "{}", leak.1);
    }
}

#[test]
fn a_parent_left_writable_after_fork_is_reported() {
    assert_checker_reports("bug-fork-parent-writable", Rule::CowWritable);
}

#[test]
fn a_fork_that_does_not_flush_the_parent_is_caught_by_the_trace() {
    // The parent's write after the fork goes through its cached writable translation.
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(Bug::ForkNoFlush));
        assert!(
            rules(&outcome).contains(&Rule::StaleTlbEntry),
            "{backend}: {outcome:#?}"
        );
    }
}

#[test]
fn a_copy_on_write_break_that_does_not_copy_is_reported() {
    assert_checker_reports("bug-cow-no-copy", Rule::CowWritable);
}

#[test]
fn a_leaked_reference_count_is_reported_by_frame_accounting() {
    assert_checker_reports("bug-refcount-leak", Rule::FrameAccounting);
}

#[test]
fn shared_memory_that_turns_private_on_fork_is_reported() {
    for backend in [Backend::Kvm, Backend::Sim] {
        let outcome = run_on(backend, Some(Bug::SharedBecomesPrivate));
        // The checker sees frames of a shared object that its sharers do not hold, and the
        // parent no longer sees what the child wrote to shared memory.
        assert!(
            rules(&outcome).contains(&Rule::FrameOwner),
            "{backend}: {outcome:#?}"
        );
        assert!(
            outcome
                .mismatches
                .iter()
                .any(|m| m.to_string().contains("the parent sees it")),
            "{backend}: {outcome:#?}"
        );
    }
}
