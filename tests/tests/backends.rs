//! The two backends side by side: the self-check passes on the sim, and one seeded fuzz stream
//! gives exactly the same results on KVM and on the sim (status, fault, address and value of
//! every op, and every region tree exported along the way); a sim guest booted on the RAM the
//! one before it left starts from exactly the RAM a fresh one would.
#![forbid(unsafe_code)]

use mm_checker::Checked;
use mm_driver::driver::{Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_driver::{Backend, Boot, GuestConfig};
use mm_fuzz::generate::Generator;
use mm_fuzz::repro::Reproducer;
use mm_fuzz::self_check::SelfCheck;
use mm_fuzz::{run_session, Session, Source};
use mm_scenario::ops::op_to_line;
use mm_scenario::Scenario;
use mm_sim::ram::{self, WrittenPages};
use mm_sim::{Sim, SimVm};
use shared_mm::abi::{FaultKind, Op, OpResult, SpaceRecord, Status, MAX_SPACES};
use std::collections::VecDeque;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::Backends;

fn config(backend: Backend) -> GuestConfig {
    GuestConfig {
        timeout: Some(Duration::from_secs(60)),
        backend,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    }
}

#[test]
fn the_self_check_passes_on_the_sim_with_the_checker() {
    let mut guest = Backends::default()
        .boot(&config(Backend::Sim))
        .expect("boot the sim");
    let mut checked = Checked::new(SelfCheck::new());
    let status = guest.run(&mut checked).expect("the sim runs to its end");
    assert_eq!(status, 0);
    assert!(checked.findings.is_empty(), "{:#?}", checked.findings);
    assert!(checked.checks_run > 0);
    let check = checked.into_inner();
    assert!(check.passed(), "{}", check.failures.join("\n"));
}

/// As many spaces as can live (a guest claiming more is refused before a check is built): every
/// check walks and checks all of them in one batch, on both backends, and the next create is
/// refused.
#[test]
fn the_checker_checks_as_many_spaces_as_can_live_on_both_backends() {
    let creates: String = (1..=MAX_SPACES)
        .map(|id| format!("create-space => value {id}\n"))
        .collect();
    let text =
        format!("{creates}create-space => error no-space\n---\ndestroy-space space=7 => ok\n");
    let scenario = Scenario::parse(&text).expect("the scenario parses");
    for backend in [Backend::Kvm, Backend::Sim] {
        let mut guest = Backends::default().boot(&config(backend)).expect("boot");
        let outcome = mm_scenario::run(guest.as_mut(), &scenario, true).expect("no host error");
        assert!(
            outcome.is_clean(),
            "{backend:?}: {:?} {:?}",
            outcome.problems(),
            outcome.crash
        );
        assert_eq!(outcome.checks_run, 3, "{backend:?}");
    }
}

/// Sends a fixed list of ops, snapshotting every live space after each batch, and keeps every
/// result and every exported tree.
struct Recorder {
    ops: VecDeque<Op>,
    in_flight: usize,
    results: Vec<OpResult>,
    trees: Vec<SpaceSnapshot>,
    /// Whether the batch in flight is the snapshot batch that follows each op batch.
    snapshotting: bool,
}

impl Driver for Recorder {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        if !self.snapshotting {
            self.results
                .extend_from_slice(&results[..self.in_flight.min(results.len())]);
            self.snapshotting = true;
            let snapshots = spaces.iter().map(|s| Op::Snapshot { space: s.space });
            return Ok(Some(snapshots.collect()));
        }
        self.snapshotting = false;
        let batch: Vec<Op> = (0..64).map_while(|_| self.ops.pop_front()).collect();
        self.in_flight = batch.len();
        Ok((!batch.is_empty()).then_some(batch))
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        SpaceSnapshot::collect(&mut self.trees, chunk)
    }
}

fn record(backend: Backend, ops: &[Op]) -> Recorder {
    let mut recorder = Recorder {
        ops: ops.iter().copied().collect(),
        in_flight: 0,
        results: Vec::new(),
        trees: Vec::new(),
        snapshotting: true,
    };
    let mut guest = Backends::default().boot(&config(backend)).expect("boot");
    guest
        .run(&mut recorder)
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
    recorder
}

#[test]
fn a_seeded_20000_op_fuzz_stream_gives_identical_results_on_kvm_and_sim() {
    // Generated against the model as results come in (on the sim, where it is quick), with the
    // model and the checker judging every batch; then the same ops on both backends.
    let mut generator = Generator::new(0xd1ff);
    let source = Source::Generated {
        generator: &mut generator,
        budget: 20_000,
        feedback: None,
    };
    let run = run_session(
        &Backends::default(),
        &config(Backend::Sim),
        Session::new(source, 64, None),
        true,
    )
    .expect("the sim session runs");
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(run.sent.len(), 20_000);

    let kvm = record(Backend::Kvm, &run.sent);
    let sim = record(Backend::Sim, &run.sent);
    assert_eq!(kvm.results.len(), run.sent.len());
    assert_eq!(
        sim.results, run.results,
        "the sim is deterministic for the same ops"
    );
    if let Some(i) = (0..run.sent.len()).find(|&i| kvm.results[i] != sim.results[i]) {
        panic!(
            "op {i} ({}): kvm {:?}, sim {:?}",
            op_to_line(&run.sent[i]),
            kvm.results[i],
            sim.results[i]
        );
    }
    assert_eq!(kvm.trees.len(), sim.trees.len());
    for (k, s) in kvm.trees.iter().zip(&sim.trees) {
        assert_eq!(
            (k.space, k.cr3),
            (s.space, s.cr3),
            "same spaces, same page-table roots"
        );
        assert_eq!(
            k.regions, s.regions,
            "space {}: region trees differ",
            k.space
        );
    }
}

#[test]
fn a_one_op_per_batch_replay_snapshots_only_what_changed() {
    // 1,100 create-space ops (256 live at most), the checker after every op: walking every live
    // space each time would take about 230,000 snapshots.
    let ops = vec![Op::CreateSpace; 1_100];
    let session = Session::new(Source::Fixed(ops.iter().copied().collect()), 1, None);
    let mut guest = Backends::default()
        .boot(&config(Backend::Sim))
        .expect("boot the sim");
    let mut checked = Checked::new(session);
    guest.run(&mut checked).expect("the replay runs");
    assert!(checked.findings.is_empty(), "{:#?}", checked.findings);
    // One check after each op, and one before the first (the empty batch at boot).
    assert_eq!(checked.checks_run, 1_101);
    assert!(
        checked.snapshots_asked < 10_000,
        "{} snapshots",
        checked.snapshots_asked
    );
    let session = checked.into_inner();
    assert!(session.failure.is_none(), "{:?}", session.failure);
}

/// 8 bytes at 0xffff_ffff_ffff_ffff wrap past 2^64 to 0x6, as x86 linear addresses do: kvm
/// faulted segv-access on the kernel page of the first byte while the sim and the model said
/// #GP. All three now agree on segv-access at the address (README, "Faults").
#[test]
fn an_access_that_wraps_past_2_64_gives_the_same_result_on_kvm_sim_and_the_model() {
    let text = "create-space\n\
        touch-read space=1 addr=0xffffffffffffffff\n\
        touch-write space=1 addr=0xffffffffffffffff value=1\n\
        touch-exec space=1 addr=0xffffffffffffffff\n\
        touch-read space=1 addr=0xfffffffffffffff9\n";
    let ops = Reproducer::parse(text).expect("the ops parse").ops;
    let mut results = Vec::new();
    for backend in [Backend::Kvm, Backend::Sim] {
        // The model judges every result: a failure is a disagreement with it.
        let run = mm_fuzz::replay_run(&Backends::default(), &config(backend), &ops, 1, true)
            .expect("the replay runs");
        assert!(run.failure.is_none(), "{backend}: {:?}", run.failure);
        for (op, result) in ops[1..].iter().zip(&run.results[1..]) {
            assert_eq!(
                (result.status, result.fault),
                (Status::Faulted, FaultKind::SegvAccess),
                "{backend}: {}",
                op_to_line(op)
            );
        }
        results.push(run.results);
    }
    assert_eq!(results[0], results[1], "kvm and sim");
}

/// Guest RAM of the recycling test.
const RECYCLED_RAM: u64 = 32 << 20;

/// Every page of two guests' RAM, compared; the first differing page if any.
fn first_difference(a: &GuestMemoryMmap, b: &GuestMemoryMmap) -> Option<u64> {
    const PAGE: u64 = 4096;
    let (mut x, mut y) = ([0u8; PAGE as usize], [0u8; PAGE as usize]);
    (0..RECYCLED_RAM / PAGE).map(|p| p * PAGE).find(|&at| {
        a.read_slice(&mut x, GuestAddress(at)).expect("in RAM");
        b.read_slice(&mut y, GuestAddress(at)).expect("in RAM");
        x != y
    })
}

/// The sim hands a guest's RAM, zeroed where it wrote, to the next guest of its thread
/// (`mm_sim::ram`): that guest starts from exactly the RAM a fresh one would.
#[test]
fn recycled_sim_ram_is_exactly_fresh_ram() {
    let config = GuestConfig {
        memory: RECYCLED_RAM,
        ..config(Backend::Sim)
    };
    // A pressure campaign writes everywhere the MM can: tables, data, copies, the heap.
    let mut generator = Generator::new(7).with_pressure();
    let source = Source::Generated {
        generator: &mut generator,
        budget: 3_000,
        feedback: None,
    };
    let session = Session::new(source, 64, None);
    let run = run_session(&Sim, &config, session, true).expect("sim");
    assert!(
        run.failure.is_none() && run.results.len() == 3_000,
        "{:?}",
        run.failure
    );
    let spare = ram::take(RECYCLED_RAM).expect("the guest left its RAM");
    ram::recycle(spare, &WrittenPages::default());
    let recycled = SimVm::new(&config).expect("boots on the spare");
    assert!(
        ram::take(RECYCLED_RAM).is_none(),
        "the spare went to the new guest"
    );
    // A guest of another thread boots on fresh RAM (compared while both are alive: a
    // guest's RAM is reset when it goes).
    let difference = std::thread::scope(|scope| {
        let recycled = recycled.memory();
        let fresh = scope.spawn(|| {
            let fresh = SimVm::new(&config).expect("boots on fresh RAM");
            first_difference(recycled, fresh.memory())
        });
        fresh.join().expect("no panic")
    });
    assert_eq!(difference, None);
}
