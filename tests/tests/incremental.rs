//! The incremental checker against full walks, on the sim (whose machine records every frame
//! the guest writes): with every seeded bug planted, in the self-check (`vmm run`'s scenario;
//! the end-of-RAM bug in its own), and in random fuzz campaigns with and without bugs, checks
//! that walk only what changed find the same defects, first at the same checks, as checks that
//! walk every space whole every time; and the cross-check between them never disagrees. Under
//! kvm (KVM's dirty log) the same holds for the self-check, correct and with a stale PTE.
#![forbid(unsafe_code)]

use guest_mm::{Bug, SeededBugs};
use mm_checker::{Checked, Finding, Rule};
use mm_driver::driver::Driver;
use mm_driver::{Backend, Boot, GuestConfig};
use mm_fuzz::generate::Generator;
use mm_fuzz::{Session, Source};
use mm_scenario::runner::Runner;
use mm_scenario::Scenario;
use std::collections::BTreeMap;
use std::time::Duration;
use vmm::Backends;

/// A full walk at every check: the reference.
const ALWAYS: usize = 1;
/// The default: incremental checks, a full walk every so often.
const DEFAULT: usize = mm_checker::FULL_CHECK_EVERY;

fn config(bugs: SeededBugs, memory_mib: u64) -> GuestConfig {
    GuestConfig {
        timeout: Some(Duration::from_secs(60)),
        backend: Backend::Sim,
        echo_console: false,
        seeded_bugs: bugs,
        memory: memory_mib << 20,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    }
}

/// Each (space, rule) found, with the check that first found it.
type FirstSeen = BTreeMap<(u32, Rule), usize>;

fn first_seen(findings: &[(usize, Finding)]) -> FirstSeen {
    let mut seen = FirstSeen::new();
    for (check, finding) in findings {
        seen.entry((finding.space, finding.rule)).or_insert(*check);
    }
    seen
}

/// Runs `driver` under the checker (a full walk every `every` checks) on a sim booted with
/// `config`; what it found. A guest that a bug crashes ends the run with what was found.
fn checked_run<D: Driver>(config: &GuestConfig, driver: D, every: usize, stop: bool) -> FirstSeen {
    let mut guest = Backends::default().boot(config).expect("boot the guest");
    let mut checked = Checked::new(driver);
    checked.full_walk_every = every;
    checked.stop_on_finding = stop;
    let _ = guest.run(&mut checked);
    let disagreements: Vec<&Finding> = checked
        .findings
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f.rule == Rule::IncrementalCheck)
        .collect();
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    assert!(checked.checks_run > 1);
    first_seen(&checked.findings)
}

/// The same defects, first found at the same checks, incrementally and by full walks.
fn assert_same(what: &str, run: impl Fn(usize) -> FirstSeen) -> FirstSeen {
    let full = run(ALWAYS);
    let incremental = run(DEFAULT);
    assert_eq!(
        incremental, full,
        "{what}: incremental (left) against full walks"
    );
    full
}

#[test]
fn with_every_seeded_bug_incremental_checks_find_what_full_walks_find() {
    let self_check = mm_scenario::builtin::self_check();
    let end_of_ram = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/mm-scenario/scenarios/end-of-ram.scn"
    ))
    .expect("end-of-ram.scn");
    let end_of_ram = Scenario::parse(&end_of_ram).expect("end-of-ram.scn parses");
    let mut caught = 0;
    for bug in Bug::ALL {
        let (scenario, memory) = match bug {
            Bug::DoubleAllocEndOfRam => (&end_of_ram, 16),
            _ => (&self_check, 256),
        };
        let config = config(SeededBugs::NONE.with(bug), memory);
        let found = assert_same(bug.feature(), |every| {
            checked_run(&config, Runner::new(scenario), every, false)
        });
        caught += usize::from(!found.is_empty());
    }
    // Not every bug shows in the tables or the trace (some only in results): most do.
    assert!(
        caught > Bug::ALL.len() / 2,
        "{caught} bugs found by the checker"
    );
    let clean = config(SeededBugs::NONE, 256);
    let found = assert_same("no bug", |every| {
        checked_run(&clean, Runner::new(&self_check), every, false)
    });
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn in_random_campaigns_incremental_checks_find_what_full_walks_find() {
    let bugs = [
        None,
        Some(Bug::StalePte),
        Some(Bug::FreeMapped),
        Some(Bug::ForkParentWritable),
        Some(Bug::SharedBecomesPrivate),
        Some(Bug::SplitOffByOne),
        Some(Bug::KeepWritable),
    ];
    for (i, bug) in bugs.into_iter().enumerate() {
        let planted = bug.map_or(SeededBugs::NONE, |b| SeededBugs::NONE.with(b));
        let config = config(planted, 64);
        for seed in [3 + i as u64, 0x5eed + i as u64] {
            let what = format!("{bug:?}, seed {seed}");
            assert_same(&what, |every| {
                let mut generator = Generator::new(seed);
                let source = Source::Generated {
                    generator: &mut generator,
                    budget: 20_000,
                    feedback: None,
                };
                checked_run(&config, Session::new(source, 64, None), every, true)
            });
        }
    }
}

#[test]
fn under_kvm_incremental_checks_find_what_full_walks_find() {
    let self_check = mm_scenario::builtin::self_check();
    let stale_pte = Bug::StalePte;
    let variant = guest_image::variant::build_variant(&[stale_pte.feature()])
        .unwrap_or_else(|e| panic!("{e}"));
    let buggy = std::fs::read(&variant).expect("the variant's ELF");
    for kernel in [guest_image::EMBEDDED_KERNEL.to_vec(), buggy] {
        let correct = kernel == guest_image::EMBEDDED_KERNEL;
        let config = GuestConfig {
            backend: Backend::Kvm,
            kernel,
            ..config(SeededBugs::NONE, 256)
        };
        let found = assert_same("kvm", |every| {
            checked_run(&config, Runner::new(&self_check), every, false)
        });
        assert_eq!(found.is_empty(), correct, "{found:?}");
    }
}
