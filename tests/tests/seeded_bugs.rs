//! Seeded bugs: each guest variant plants one classic MM bug; the agreement checker (or, for
//! what page tables cannot show, the expected results) must catch it, and the correct guest must
//! pass the same scenario clean.

use std::io::Write;
use std::time::Duration;
use vmm::checker::Rule;
use vmm::guest_build::build_variant;
use vmm::scenario::{bug_bait, run_checked, Outcome};
use vmm::{Vm, VmConfig};

fn run_variant(features: &[&str]) -> Outcome {
    let elf = build_variant(features).unwrap_or_else(|e| panic!("{e}"));
    let kernel = std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
    let config = VmConfig {
        kernel,
        timeout: Some(Duration::from_secs(30)),
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("boot the guest variant");
    run_checked(&mut vm, &bug_bait())
        .unwrap_or_else(|e| panic!("{features:?}: {e}\n{}", vm.console_output()))
}

fn rules(outcome: &Outcome) -> Vec<Rule> {
    outcome.findings.iter().map(|(_, f)| f.rule).collect()
}

/// The variant is caught by the checker with `rule`.
fn assert_checker_reports(bug: &str, rule: Rule) {
    let outcome = run_variant(&[bug]);
    assert!(
        rules(&outcome).contains(&rule),
        "{bug}: expected a {rule} finding, got {outcome:#?}"
    );
}

#[test]
fn correct_guest_passes_the_bait_clean() {
    let outcome = run_variant(&[]);
    assert!(outcome.is_clean(), "{outcome:#?}");
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
    assert_checker_reports("bug-free-mapped", Rule::FrameMappedTwice);
}

#[test]
fn partial_unmap_off_by_one_page_is_reported() {
    let outcome = run_variant(&["bug-split-off-by-one"]);
    let stale: Vec<u64> = outcome
        .findings
        .iter()
        .filter(|(_, f)| f.rule == Rule::PteInHole)
        .filter_map(|(_, f)| f.va)
        .collect();
    // Exactly the last page of the two-page unmap keeps its PTE.
    assert!(
        stale.contains(&0x40_1000) && !stale.contains(&0x40_0000),
        "{outcome:#?}"
    );
}

/// Whether the host CPU exposes hardware virtualization (VMX or SVM). Without it, this host's
/// KVM backend (PVM, shadow paging) never showed a stale translation: with the guest's invlpg
/// removed, neither this scenario nor 50,000 fuzzed operations saw one.
fn hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[test]
fn missing_tlb_flush_on_unmap_is_caught_where_the_tlb_can_go_stale() {
    let outcome = run_variant(&["bug-no-tlb-flush"]);
    if outcome.is_clean() && !hardware_virtualization() {
        // Straight to stderr, past the test harness's capture, so the skip shows in CI logs.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED missing_tlb_flush_on_unmap_is_caught_where_the_tlb_can_go_stale: no vmx/svm; \
             this software KVM backend shows no stale TLB entry, so the bug is invisible here"
        );
        return;
    }
    // Page tables are right, so the checker cannot see it: the expected fault after unmap is
    // what catches it (the touch reads through the stale translation instead).
    assert!(
        outcome
            .mismatches
            .iter()
            .any(|m| m.contains("unmapped page faults")),
        "{outcome:#?}"
    );
}
