//! The fuzzer end to end: a clean run on the correct guest, determinism, a seeded bug found,
//! shrunk and replayed from its reproducer file, and coverage feedback.
#![forbid(unsafe_code)]

use guest_image::variant::{build_variant_with, GuestVariant};
use mm_checker::Rule;
use mm_driver::{Boot, Guest, GuestConfig, RunError};
use mm_fuzz::campaign::{
    run_campaign, run_campaign_with, CampaignConfig, CampaignReport, FoundBug, Links,
};
use mm_fuzz::coverage::CoverageMap;
use mm_fuzz::error::FuzzError;
use mm_fuzz::repro::Reproducer;
use mm_fuzz::shrink::Budget;
use mm_fuzz::{replay, replay_rounds, Signature};
use mm_scenario::reproduced::Reproduced;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use vmm::Backends;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-fuzz-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn kernel(variant: &GuestVariant) -> Vec<u8> {
    let path = build_variant_with(variant).unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn campaign(name: &str, kernel: Vec<u8>, ops: u64, shrink: bool) -> CampaignConfig {
    let coverage = CoverageMap::from_elf(&kernel).expect("kernel ELF parses");
    CampaignConfig {
        seed: 7,
        ops,
        jobs: 1,
        batch: 64,
        check: true,
        shrink,
        shrink_budget: Budget { max_replays: 400 },
        shrink_on: None,
        vm: GuestConfig {
            kernel,
            timeout: Some(Duration::from_secs(30)),
            ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
        },
        out_dir: out_dir(name),
        kernel_label: name.to_string(),
        guest_features: Vec::new(),
        progress: false,
        coverage,
        max_findings: 1,
        pressure: false,
        placement_rules: true,
    }
}

fn run(config: &CampaignConfig) -> CampaignReport {
    run_campaign(config, &Backends::default()).unwrap_or_else(|e| panic!("campaign: {e}"))
}

/// The first bug `report` found (the test fails if it found none).
fn first_finding(report: &CampaignReport) -> &FoundBug {
    report
        .bugs
        .first()
        .unwrap_or_else(|| panic!("no finding: {report:?}"))
}

#[test]
fn correct_guest_survives_a_campaign() {
    let config = campaign("clean", guest_image::EMBEDDED_KERNEL.to_vec(), 3_000, false);
    let report = run(&config);
    assert!(report.bugs.is_empty(), "{:#?}", report.bugs);
    assert_eq!(report.ops_executed, 3_000);
    // The placement probe after 1,024 ops: one uniformity test per layout, both passed.
    assert_eq!(report.uniformity_tests, 2);
}

#[test]
fn same_seed_gives_the_same_run() {
    let bug = kernel(&GuestVariant::new(&["bug-stale-pte"]));
    let first = run(&campaign("det-a", bug.clone(), 2_000, false));
    let second = run(&campaign("det-b", bug, 2_000, false));
    let key = |r: &CampaignReport| -> Vec<(Signature, u64, usize)> {
        r.bugs
            .iter()
            .map(|b| (b.signature.clone(), b.ops_to_find, b.original_len))
            .collect()
    };
    assert!(!first.bugs.is_empty());
    assert_eq!(key(&first), key(&second));
    let text =
        |r: &CampaignReport| std::fs::read_to_string(&r.bugs[0].repro_path).expect("repro written");
    let strip = |t: String| {
        t.lines()
            .filter(|l| !l.starts_with("# kernel"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(text(&first)), strip(text(&second)));
}

#[test]
fn seeded_bug_is_found_shrunk_and_replayed() {
    let bug = kernel(&GuestVariant::new(&["bug-stale-pte"]));
    let config = campaign("stale", bug.clone(), 5_000, true);
    let report = run(&config);
    let found = first_finding(&report);
    // Unmap frees the frame while the stale PTE still maps it: the flush trace sees that at
    // the free, before the checker sees the PTE in the hole at the end of the batch.
    assert_eq!(
        found.signature,
        Signature::Finding(Rule::FrameFreedWhileCached),
        "{found:#?}"
    );
    assert!(found.description.contains("[no-pte-in-hole]"), "{found:#?}");
    assert!(
        found.repro_len <= 8 && found.repro_len < found.original_len,
        "{found:#?}"
    );

    let text = std::fs::read_to_string(&found.repro_path).expect("reproducer written");
    let repro = Reproducer::parse(&text).expect("reproducer parses");
    assert_eq!(repro.ops.len(), found.repro_len);
    let vm = GuestConfig {
        kernel: bug,
        ..config.vm.clone()
    };
    let (again, at) = replay(&Backends::default(), &vm, &repro.ops, 1, true)
        .expect("replay runs")
        .expect("still fails");
    assert_eq!(again.signature, found.signature);
    assert!(at <= repro.ops.len());
    // The same operations are clean on the correct guest.
    let clean = GuestConfig {
        kernel: guest_image::EMBEDDED_KERNEL.to_vec(),
        ..config.vm
    };
    assert_eq!(
        replay(&Backends::default(), &clean, &repro.ops, 1, true).expect("replay runs"),
        None
    );
}

#[test]
fn coverage_feedback_reports_reached_edges() {
    let cov = kernel(&GuestVariant::default().with_coverage());
    let report = run(&campaign("coverage", cov, 1_000, false));
    assert!(report.bugs.is_empty(), "{:#?}", report.bugs);
    let (covered, total) = report.coverage.expect("coverage guest has counters");
    assert!(covered > 100 && covered <= total, "{covered} of {total}");
}

#[test]
fn a_guest_that_cannot_boot_stops_the_campaign_with_its_error() {
    // A kernel that halts at its first instruction: it never asks for work.
    let hlt = integration_tests::minimal_elf(shared_mm::boot_info::KERNEL_PHYS_BASE, &[0xf4]);
    let mut config = campaign("no-boot", hlt, 1_000, true);
    config.coverage = None;
    match run_campaign(&config, &Backends::default()) {
        Err(e @ FuzzError::FailedBeforeFirstBatch(_)) => {
            let e = vmm::VmmError::from(e);
            assert_eq!(e.exit_code(), 103, "a halted guest: {e}");
            assert!(e.to_string().contains("halted"), "{e}");
        }
        other => panic!("expected the boot failure, got {other:?}"),
    }
}

/// A sim campaign of `ops` with `bug` planted.
fn sim_campaign(name: &str, bug: guest_mm::Bug, ops: u64) -> CampaignConfig {
    let mut config = campaign(name, guest_image::EMBEDDED_KERNEL.to_vec(), ops, true);
    config.vm.backend = mm_driver::Backend::Sim;
    config.vm.seeded_bugs = guest_mm::SeededBugs::NONE.with(bug);
    config.guest_features = vec![bug.feature().to_string()];
    config.coverage = None;
    config
}

#[test]
fn memory_pressure_reaches_the_end_of_ram_and_finds_its_double_allocation() {
    let mut config = sim_campaign("double-alloc", guest_mm::Bug::DoubleAllocEndOfRam, 50_000);
    config.pressure = true;
    config.vm.memory = 16 << 20;
    let report = run(&config);
    let found = first_finding(&report);
    // The root cause shows at the op that took the last frame: it stays free in the allocator
    // while a page maps it (frame-accounting); at the end of that batch, once it is handed out
    // again, two owners map it (frame-mapped-within-refs, frame-owner).
    assert!(
        matches!(
            found.signature,
            Signature::Finding(Rule::FrameAccounting | Rule::FrameOverMapped | Rule::FrameOwner)
        ),
        "{found:#?}"
    );
    // The exhaustion skeleton: fill RAM to the last frame, then fault once more.
    assert!(found.repro_len <= 8, "{found:#?}");
}

#[test]
fn memory_pressure_on_the_correct_mm_runs_out_of_frames_and_recovers_cleanly() {
    let mut config = campaign(
        "pressure",
        guest_image::EMBEDDED_KERNEL.to_vec(),
        30_000,
        false,
    );
    config.vm.backend = mm_driver::Backend::Sim;
    config.coverage = None;
    config.pressure = true;
    config.max_findings = 0;
    config.vm.memory = 16 << 20;
    let report = run(&config);
    assert!(report.bugs.is_empty(), "{:#?}", report.bugs);
    assert!(
        report.out_of_memory > 0,
        "pressure never exhausted the frames"
    );
}

#[test]
fn a_leak_is_found_and_shrunk_to_a_few_ops() {
    let report = run(&sim_campaign("leak", guest_mm::Bug::LeakOnUnmap, 20_000));
    let found = first_finding(&report);
    assert!(
        matches!(found.signature, Signature::Finding(rule) if rule.defect() == Rule::FrameAccounting),
        "{found:#?}"
    );
    assert!(found.repro_len <= 8, "{found:#?}");
}

/// Whether a finding's signature shows the bug planted.
type Shows<'a> = dyn Fn(&Signature) -> bool + 'a;

#[test]
fn every_sharing_bug_is_found_on_the_sim_and_shrunk_to_a_few_ops() {
    use guest_mm::Bug;
    let finding =
        |rule: Rule| move |s: &Signature| matches!(s, Signature::Finding(r) if r.defect() == rule);
    let expected: [(Bug, &Shows<'_>); 5] = [
        (Bug::ForkParentWritable, &finding(Rule::CowWritable)),
        (Bug::ForkNoFlush, &finding(Rule::StaleTlbEntry)),
        (Bug::CowNoCopy, &finding(Rule::CowWritable)),
        (Bug::RefcountLeak, &finding(Rule::FrameAccounting)),
        // The child's snapshot shows the region private where the model has it shared, or
        // the checker sees a frame of a shared object held apart.
        (Bug::SharedBecomesPrivate, &|s: &Signature| {
            *s == Signature::SnapshotDiffers || finding(Rule::FrameOwner)(s)
        }),
    ];
    for (bug, shows) in expected {
        let report = run(&sim_campaign(bug.feature(), bug, 20_000));
        let found = report
            .bugs
            .first()
            .unwrap_or_else(|| panic!("{bug:?}: no finding: {report:?}"));
        assert!(shows(&found.signature), "{bug:?}: {found:#?}");
        assert!(found.repro_len <= 8, "{bug:?}: {found:#?}");
    }
}

/// The first finding of a 5,000-op sim campaign with `bug` planted (shrunk), and of a 3,000-op
/// kvm campaign with it (not shrunk: kvm replays are slow).
fn found_on_both_backends(bug: guest_mm::Bug) -> [FoundBug; 2] {
    let kvm = campaign(
        "kvm",
        kernel(&GuestVariant::new(&[bug.feature()])),
        3_000,
        false,
    );
    [&sim_campaign(bug.feature(), bug, 5_000), &kvm].map(|config| {
        let report = run(config);
        let found = report.bugs.first().cloned();
        found.unwrap_or_else(|| panic!("{bug:?} on {}: no finding: {report:?}", config.vm.backend))
    })
}

#[test]
fn a_biased_randomized_placement_is_found_by_the_probe_on_both_backends() {
    use mm_fuzz::uniformity::DRAWS;
    let bug = guest_mm::Bug::AslrLowHalf;
    let [sim, kvm] = found_on_both_backends(bug);
    for found in [&sim, &kvm] {
        assert_eq!(found.signature, Signature::NotUniform, "{found:#?}");
        assert!(found.description.contains("chi-square"), "{found:#?}");
    }
    // A statistical finding needs its draws: the probe's space, its two regions around the
    // hole, and the draws, each but the last unmapped again.
    let found = &sim;
    assert!(found.repro_len <= 2 * DRAWS as usize + 4, "{found:#?}");
    let text = std::fs::read_to_string(&found.repro_path).expect("reproducer written");
    let repro = Reproducer::parse(&text).expect("reproducer parses");
    let mut config = sim_campaign("aslr-low-half", bug, 0).vm;
    let (again, _) = replay(&Backends::default(), &config, &repro.ops, 1, true)
        .expect("replay runs")
        .expect("still fails");
    assert_eq!(again.signature, Signature::NotUniform);
    config.seeded_bugs = guest_mm::SeededBugs::NONE;
    assert_eq!(
        replay(&Backends::default(), &config, &repro.ops, 1, true).expect("replay runs"),
        None
    );
}

#[test]
fn map_anywhere_by_first_fit_breaks_the_documented_policy_on_both_backends() {
    let [sim, kvm] = found_on_both_backends(guest_mm::Bug::AnywhereFirstFit);
    for found in [&sim, &kvm] {
        assert!(
            matches!(
                found.signature,
                Signature::Mismatch {
                    op: "map-anywhere",
                    ..
                }
            ),
            "{found:#?}"
        );
        assert!(found.description.contains("the best fit"), "{found:#?}");
    }
    assert!(sim.repro_len <= 8, "{sim:#?}");
}

/// Ops on which `bug-free-mapped` panics the guest one op after the checker could see it, in
/// one batch with ops of another space around them: a partial unmap frees the frame of the
/// page that stays mapped (the flush trace and the frame rules see it), and unmapping that
/// page next frees the frame again, which the allocator refuses with a panic.
fn panic_after_a_finding() -> Vec<shared_mm::abi::Op> {
    use shared_mm::abi::Op;
    let (urw, base) = (0xb, 0x40_0000);
    let mut ops = vec![Op::CreateSpace, Op::CreateSpace];
    let noise = (0..8).map(|i| Op::MapFixed {
        space: 2,
        addr: 0x1000_0000 + i * 0x2000,
        size: 0x1000,
        access: urw,
    });
    ops.extend(noise.clone());
    ops.extend([
        Op::MapFixed {
            space: 1,
            addr: base,
            size: 0x2000,
            access: urw,
        },
        Op::TouchWrite {
            space: 1,
            addr: base,
            value: 7,
        },
        Op::Unmap {
            space: 1,
            addr: base + 0x1000,
            size: 0x1000,
        },
        Op::Unmap {
            space: 1,
            addr: base,
            size: 0x1000,
        },
    ]);
    ops.extend(noise.map(|op| match op {
        Op::MapFixed { addr, .. } => Op::TouchRead { space: 2, addr },
        other => other,
    }));
    ops
}

#[test]
fn a_crash_right_after_a_finding_is_shrunk_to_the_finding_as_its_root_cause() {
    use mm_fuzz::campaign::reduce;
    let bug = guest_mm::Bug::FreeMapped;
    let sim = sim_campaign("root-cause", bug, 0);
    let mut kvm = campaign(
        "root-cause-kvm",
        kernel(&GuestVariant::new(&[bug.feature()])),
        0,
        true,
    );
    kvm.shrink_on = Some(sim.vm.clone());
    for config in [&sim, &kvm] {
        let ops = panic_after_a_finding();
        // The run, in one batch as a campaign sends it: the panic ends it, unchecked.
        let run = mm_fuzz::replay_run(&Backends::default(), &config.vm, &ops, config.batch, true)
            .expect("runs");
        let found = run.failure.clone().expect("the guest panics");
        assert_eq!(found.signature, Signature::Crash("panic"), "{found:#?}");
        let (shrunk, failure) =
            reduce(config, &Backends::default(), &run, &found, &|_| {}).expect("reduces");
        assert!(
            matches!(failure.signature, Signature::Finding(_)),
            "{}: {failure:#?}",
            config.vm.backend
        );
        assert!(
            failure.description.contains("symptom") && failure.description.contains("panic"),
            "{failure:#?}"
        );
        // create-space, map, write, partial unmap: not the batch.
        assert!(shrunk.len() <= 4, "{shrunk:#?}");
    }
}

/// Under kvm, zeroing a kernel-image frame the buggy allocator hands out may corrupt the guest's
/// boot heap (.bss) and panic it in the same batch, depending on what the heap holds there. The
/// flush trace names the allocation before that, so a pressure campaign reports the cause and
/// keeps it while it shrinks, whether a candidate's guest then survives or not (`vmm fuzz` with
/// these settings, before the trace named allocations, kept 464 of 512 ops after 359 s of
/// shrinking on kvm here).
#[test]
fn a_frame_that_is_not_ram_is_found_and_shrunk_on_kvm() {
    let bug = kernel(&GuestVariant::new(&["bug-kernel-end-off-by-one"]));
    let mut config = campaign("kernel-end", bug, 5_000, true);
    config.seed = 1;
    config.pressure = true;
    config.vm.memory = 16 << 20;
    config.coverage = None;
    let report = run(&config);
    let found = first_finding(&report);
    assert_eq!(
        found.signature,
        Signature::Finding(Rule::FrameProvenance),
        "{found:#?}"
    );
    assert!(
        found.description.contains("lies in the kernel image"),
        "{found:#?}"
    );
    assert!(found.repro_len <= 8, "{found:#?}");
}

/// On the sim with two CPUs (seed 1), every SMP seeded bug is found and shrunk to at most 10
/// ops and 3 preemptions, and its reproducer replays the same failure every time: the races
/// (bug-fault-no-recheck) come from the fuzzer's racing rounds and PCT's schedules, and the
/// reproducer's `# schedule:` header makes them replay.
#[test]
fn every_smp_seeded_bug_is_found_and_shrunk_on_two_simulated_cpus() {
    use guest_mm::Bug;
    use mm_scenario::header::Settings;
    for bug in [
        Bug::ShootdownLocalOnly,
        Bug::ShootdownMissesLazy,
        Bug::FreeBeforeAck,
        Bug::FaultNoRecheck,
        Bug::LockOrder,
    ] {
        let mut config = sim_campaign(bug.feature(), bug, 200_000);
        config.seed = 1;
        config.vm.cpus = 2;
        config.shrink_budget = Budget::default();
        let report = run(&config);
        let found = first_finding(&report);
        assert!(found.repro_len <= 10, "{bug:?}: {found:#?}");
        let text = std::fs::read_to_string(&found.repro_path).expect("the reproducer");
        let repro = Reproducer::parse(&text).expect("parses");
        let settings = Settings::of(&repro.header).expect("its header");
        let schedule = settings.schedule.unwrap_or_default();
        assert!(schedule.preemptions() <= 3, "{bug:?}: {text}");
        let vm = GuestConfig {
            cpus: settings.cpus.unwrap_or(1),
            schedule: Some(schedule),
            ..config.vm.clone()
        };
        for _ in 0..3 {
            let failure = match repro.cpu_rounds() {
                Some(rounds) => {
                    replay_rounds(&Backends::default(), &vm, rounds, true)
                        .expect("replays")
                        .failure
                }
                None => replay(&Backends::default(), &vm, &repro.ops, 1, true)
                    .expect("replays")
                    .map(|(f, _)| f),
            };
            let failure = failure.unwrap_or_else(|| panic!("{bug:?} did not replay: {text}"));
            assert!(failure.shows(&found.signature), "{bug:?}: {failure:?}");
        }
    }
}

/// Boots through [`Backends`], setting `stop` (as Ctrl-C does) when boot number `at` (from 1)
/// starts.
struct StopAtBoot<'a> {
    boots: AtomicUsize,
    at: usize,
    stop: &'a AtomicBool,
}

impl Boot for StopAtBoot<'_> {
    fn boot(&self, config: &GuestConfig) -> Result<Box<dyn Guest>, RunError> {
        if self.boots.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
        Backends::default().boot(config)
    }
}

/// `config`'s campaign of two CPUs with `bug` planted, stopped as by Ctrl-C when its boot
/// number `at` starts (boot 1 finds the failure; the shrink's replays boot from 2 on): what it
/// reported and how many guests it booted.
fn stopped_while_shrinking(config: &CampaignConfig, at: usize) -> (CampaignReport, usize) {
    let stop = AtomicBool::new(false);
    let boots = StopAtBoot {
        boots: AtomicUsize::new(0),
        at,
        stop: &stop,
    };
    let links = Links {
        corpus: None,
        stop: Some(&stop),
    };
    let report = run_campaign_with(config, &boots, links).expect("the campaign runs");
    assert!(report.interrupted, "{report:#?}");
    (report, boots.boots.load(Ordering::SeqCst))
}

/// The reproducer `found` was saved as, and whether its rounds replay with that failure on
/// `vm` (with the reproducer's CPUs and schedule).
fn replays_its_failure(found: &FoundBug, vm: &GuestConfig) -> bool {
    use mm_scenario::header::Settings;
    let text = std::fs::read_to_string(&found.repro_path).expect("the reproducer");
    let repro = Reproducer::parse(&text).expect("parses");
    let settings = Settings::of(&repro.header).expect("its header");
    let vm = GuestConfig {
        cpus: settings.cpus.unwrap_or(1),
        schedule: settings.schedule.or(vm.schedule.clone()),
        ..vm.clone()
    };
    let rounds = repro.cpu_rounds().expect("its rounds");
    let run = replay_rounds(&Backends::default(), &vm, rounds, true).expect("replays");
    run.failure.is_some_and(|f| f.shows(&found.signature))
}

/// Ctrl-C while a failure of two simulated CPUs shrinks: nothing more is replayed, and the
/// smallest candidate that failed so far is saved.
#[test]
fn ctrl_c_while_a_sim_failure_of_two_cpus_shrinks_saves_the_smallest_failing_so_far() {
    let mut config = sim_campaign("ctrl-c-sim", guest_mm::Bug::ShootdownLocalOnly, 200_000);
    config.seed = 1;
    config.vm.cpus = 2;
    let (report, boots) = stopped_while_shrinking(&config, 12);
    // The replay under way when Ctrl-C came was the last.
    assert_eq!(boots, 12);
    let found = first_finding(&report);
    assert_eq!(found.reproduced, None, "{found:#?}");
    assert!(found.repro_len < found.original_len, "{found:#?}");
    let vm = GuestConfig {
        schedule: Some(Default::default()),
        ..config.vm.clone()
    };
    assert!(replays_its_failure(found, &vm), "{found:#?}");
}

/// Ctrl-C while a failure found on two kvm CPUs shrinks on its sim twin: nothing more is
/// shrunk; the smallest candidate that failed so far is replayed once on kvm and saved with
/// that count if it failed there, else the run as found is saved, not replayed again (which
/// of the two depends on kvm's timing).
#[test]
fn ctrl_c_while_a_kvm_failure_of_two_cpus_shrinks_saves_the_smallest_failing_so_far() {
    use guest_mm::Bug;
    let bug = Bug::ShootdownLocalOnly;
    let variant = kernel(&GuestVariant::new(&[bug.feature()]));
    // As `vmm fuzz --seed 1` runs.
    let mut config = campaign("ctrl-c-kvm", variant, 3_000, true);
    config.seed = 1;
    config.vm.random_seed = 1;
    config.vm.cpus = 2;
    config.coverage = None;
    config.guest_features = vec![bug.feature().to_string()];
    config.shrink_on = Some(GuestConfig {
        backend: mm_driver::Backend::Sim,
        seeded_bugs: guest_mm::SeededBugs::NONE.with(bug),
        ..config.vm.clone()
    });
    let (report, boots) = stopped_while_shrinking(&config, 12);
    let found = first_finding(&report);
    let once = Reproduced {
        failed: 1,
        replays: 1,
    };
    if found.reproduced == Some(once) {
        // The replay under way when Ctrl-C came, then the one on kvm.
        assert_eq!(boots, 13);
        assert!(found.repro_len < found.original_len, "{found:#?}");
        assert!(replays_its_failure(found, &config.vm), "{found:#?}");
    } else {
        assert_eq!(found.reproduced, None, "{found:#?}");
        // At most the one kvm replay of the smallest candidate, which did not fail.
        assert!((12..=13).contains(&boots), "{boots} boots");
        assert_eq!(found.repro_len, found.original_len, "{found:#?}");
    }
}
