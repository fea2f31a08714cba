//! Several CPUs on the sim: the self-check's SMP part, a race forced by a written schedule, the
//! correct MM under every single-preemption schedule of that race, and exact replays.
#![forbid(unsafe_code)]

use guest_mm::{Bug, SeededBugs};
use mm_checker::Checked;
use mm_driver::schedule::Schedule;
use mm_driver::{Backend, Guest, GuestConfig, RunError};
use mm_fuzz::self_check::SelfCheck;
use mm_scenario::format::Scenario;
use mm_scenario::header::Settings;
use mm_sim::SimVm;

const RACE: &str = include_str!("../../crates/mm-scenario/scenarios/race-fault-unmap.scn");

/// A sim guest of `cpus` CPUs with `bugs`.
fn sim(cpus: u32, bugs: SeededBugs) -> GuestConfig {
    GuestConfig {
        cpus,
        backend: Backend::Sim,
        seeded_bugs: bugs,
        memory: 64 << 20,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    }
}

/// The race scenario, and its config with `bugs` and `schedule` (the file's when `None`).
fn race(bugs: SeededBugs, schedule: Option<Schedule>) -> (Scenario, GuestConfig) {
    let scenario = Scenario::parse(RACE).expect("the race scenario parses");
    let settings = Settings::of(&scenario.header).expect("its header");
    let config = GuestConfig {
        schedule: schedule.or(settings.schedule),
        ..sim(settings.cpus.expect("two CPUs"), bugs)
    };
    (scenario, config)
}

/// Runs `scenario` on a fresh sim guest with the checker: its problems, one line each.
fn problems(scenario: &Scenario, config: &GuestConfig) -> Vec<String> {
    let mut vm = SimVm::new(config).expect("the sim boots");
    let outcome = mm_scenario::run(&mut vm, scenario, true).expect("runs");
    let mut problems = outcome.problems();
    problems.extend(outcome.crash.map(|c| c.to_string()));
    problems
}

#[test]
fn the_written_race_catches_fault_no_recheck_every_time_and_the_correct_mm_never() {
    let buggy = SeededBugs::NONE.with(Bug::FaultNoRecheck);
    for _ in 0..3 {
        let (scenario, config) = race(buggy, None);
        let found = problems(&scenario, &config);
        assert!(
            found
                .iter()
                .any(|p| p.contains("[no-pte-in-hole] at 0x400000")),
            "{found:?}"
        );
        let (scenario, config) = race(SeededBugs::NONE, None);
        assert_eq!(problems(&scenario, &config), Vec::<String>::new());
    }
}

/// The correct MM is clean wherever the one preemption of CPU 1 falls; the seeded bug is
/// caught at some of them, and no run takes a deadlock or a panic.
#[test]
fn the_correct_mm_is_clean_under_every_single_preemption_of_the_race() {
    let buggy = SeededBugs::NONE.with(Bug::FaultNoRecheck);
    let mut caught = 0;
    for points in 1..=40 {
        let schedule: Schedule = format!("1: cpu1:{points} cpu0 cpu1")
            .parse()
            .expect("a schedule");
        let (scenario, config) = race(SeededBugs::NONE, Some(schedule.clone()));
        assert_eq!(
            problems(&scenario, &config),
            Vec::<String>::new(),
            "cpu1:{points}"
        );
        let (scenario, config) = race(buggy, Some(schedule));
        let found = problems(&scenario, &config);
        assert!(
            found
                .iter()
                .all(|p| !p.contains("panic") && !p.contains("deadlock")),
            "{found:?}"
        );
        caught += usize::from(!found.is_empty());
    }
    assert!(caught > 0, "the race was never hit");
}

/// The self-check with its SMP part on two simulated CPUs: the correct MM passes, each
/// shootdown bug fails it (the per-CPU trace replay), and bug-lock-order is a lock-order
/// finding.
#[test]
fn the_self_check_on_two_simulated_cpus_passes_and_each_shootdown_bug_fails_it() {
    let run = |bugs| {
        let mut vm = SimVm::new(&sim(2, bugs)).expect("the sim boots");
        let mut checked = Checked::new(SelfCheck::with_cpus(2));
        let outcome = vm.run(&mut checked);
        let findings: Vec<String> = checked
            .findings
            .iter()
            .map(|(_, f)| f.to_string())
            .collect();
        (outcome, checked.into_inner(), findings)
    };
    let (outcome, check, findings) = run(SeededBugs::NONE);
    assert_eq!(outcome.ok(), Some(0));
    assert!(
        check.passed() && findings.is_empty(),
        "{:?} {findings:?}",
        check.failures
    );
    for bug in [
        Bug::ShootdownLocalOnly,
        Bug::ShootdownMissesLazy,
        Bug::FreeBeforeAck,
    ] {
        let (outcome, _, findings) = run(SeededBugs::NONE.with(bug));
        assert_eq!(outcome.ok(), Some(0), "{bug:?}");
        assert!(
            findings.iter().any(|f| f.contains("freed-while-cached")),
            "{bug:?}: {findings:?}"
        );
    }
    let (outcome, _, _) = run(SeededBugs::NONE.with(Bug::LockOrder));
    assert!(
        matches!(outcome, Err(RunError::LockOrder { .. })),
        "{outcome:?}"
    );
    // A panic of the MM on a CPU's coroutine is the guest's panic, with its place.
    let (outcome, _, _) = run(SeededBugs::NONE.with(Bug::Overlap));
    match outcome {
        Err(RunError::GuestPanic { file, .. }) => assert!(file.ends_with(".rs"), "{file}"),
        other => panic!("expected a guest panic, got {other:?}"),
    }
}

/// A run chosen by PCT records the schedule it took, and that schedule replays the same trace.
#[test]
fn a_pct_run_replays_exactly_from_the_schedule_it_took() {
    let run = |config: &GuestConfig| {
        let mut vm = SimVm::new(config).expect("the sim boots");
        let mut script = mm_driver::driver::RoundScript::new(rounds());
        vm.run(&mut script).expect("runs");
        (
            script.results,
            script.trace,
            vm.schedule().expect("several CPUs"),
        )
    };
    let mut preempted = 0;
    for seed in 0..20 {
        let pct = GuestConfig {
            random_seed: seed,
            ..sim(3, SeededBugs::NONE)
        };
        let (results, trace, taken) = run(&pct);
        preempted += taken.preemptions();
        let replay = GuestConfig {
            schedule: Some(taken.to_string().parse().expect("its text parses")),
            ..pct
        };
        let (again, again_trace, again_taken) = run(&replay);
        assert_eq!(
            (&again, &again_trace),
            (&results, &trace),
            "seed {seed}: {taken}"
        );
        assert_eq!(again_taken, taken, "seed {seed}");
    }
    assert!(preempted > 0, "PCT never preempted");
}

/// Three CPUs on one space: faults, unmaps, protects and a fork, in two rounds.
fn rounds() -> Vec<Vec<mm_driver::driver::CpuBatch>> {
    use mm_driver::driver::CpuBatch;
    use shared_mm::abi::Op;
    let urw = 0xb;
    let page = |i: u64| 0x40_0000 + i * 0x1000;
    let setup = vec![CpuBatch {
        cpu: 0,
        ops: vec![
            Op::CreateSpace,
            Op::MapFixed {
                space: 1,
                addr: page(0),
                size: 0x8000,
                access: urw,
            },
        ],
    }];
    let write = |i| Op::TouchWrite {
        space: 1,
        addr: page(i),
        value: i,
    };
    let race = vec![
        CpuBatch {
            cpu: 0,
            ops: vec![
                write(0),
                Op::Unmap {
                    space: 1,
                    addr: page(1),
                    size: 0x2000,
                },
                Op::Fork { space: 1 },
            ],
        },
        CpuBatch {
            cpu: 1,
            ops: vec![write(1), write(2), write(3)],
        },
        CpuBatch {
            cpu: 2,
            ops: vec![
                Op::Protect {
                    space: 1,
                    addr: page(3),
                    size: 0x1000,
                    access: 0x9,
                },
                write(4),
                Op::TouchRead {
                    space: 1,
                    addr: page(2),
                },
            ],
        },
    ];
    vec![setup, race.clone(), race]
}
