//! The whole system in one run: RegionTree, exits, batched MM ops, page walks and boot, as one table.
//!
//! `cargo bench -p vmm --bench system` (or `bash scripts/bench.sh`). Every figure is host wall
//! time from `std::time::Instant`; each is the median of several samples. The targets are goals:
//! the table says which were met, and the bench exits 0 either way. `SYSTEM_BENCH_ONLY=SECTION`
//! runs one section: `region_tree` (the RegionTree rows, which need no KVM), `hypercalls`,
//! `ipi`, `smp`, `mm_ops`, `op_kinds`, `page_walk`, `boot`, `fuzz`, `sim_smp`, `placement`,
//! `deep_rules` (no KVM either), `coverage` or `libfuzzer` (no KVM; it builds the cargo-fuzz
//! target with `scripts/fuzz.sh`, which installs cargo-fuzz where it is missing). The IPI rows
//! are the exception to host wall time: the guest times the
//! round trip between its CPUs with its TSC.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_mm::{Bug, SeededBugs};
use mm_checker::Checked;
use mm_driver::driver::{
    CpuBatch, Driver, DriverError, IdleDriver, RoundScript, Script, SnapshotChunk,
};
use mm_driver::{Backend, Boot, GuestConfig};
use mm_fuzz::campaign::{run_campaign, CampaignConfig, CampaignReport};
use mm_fuzz::generate::Generator;
use mm_fuzz::shrink::Budget;
use mm_fuzz::{Session, Source};
use shared_mm::abi::{
    access_bits::{READ, USER, WRITE},
    Hypercall, MailboxHeader, Op, OpResult, SpaceRecord, Status, HEADER_SIZE, MAX_BATCH,
};
use shared_mm::address::PAGE_SIZE;
use shared_mm::bench_layouts::{self, Layout, ADVERSARIAL_ALIGNMENT, ADVERSARIAL_SIZE};
use shared_mm::boot_info::{GuestCommand, MAILBOX_ADDR};
use shared_mm::first_fit::{shuffled_tree, SteadyState, REQUEST};
use shared_mm::pte::{PageLevel, PageTableFlags, PAGE_SIZE_1G};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, SplitMix64};
use shared_mm::try_loop::place_by_tries;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::cpus::round_trip::IpiRoundTrip;
use vmm::hypercall;
use vmm::{Backends, Vm};
use x86_paging::page_walk::{leaves, PageTableBuilder};

#[path = "support/libfuzzer.rs"]
mod libfuzzer;
#[path = "support/results.rs"]
mod results;
use results::{num, Goal, Machine, Row, Run};

/// Samples per figure; the median is reported.
const SAMPLES: usize = 7;
/// Wall time of one guest run of the batched-MM mix.
const MM_BUDGET: Duration = Duration::from_secs(4);
/// Wall time of one guest run of a single op kind.
const OP_KIND_BUDGET: Duration = Duration::from_secs(2);
/// Guest runs with and without the checker each, alternating so that drift hits both alike.
const MM_ROUNDS: usize = 2;
/// Batches a script holds (more than [`MM_BUDGET`] lets the guest run).
const MM_BATCHES: usize = 400;

const RATIO_LEGEND: &str = "ratio: RegionTree rows, the baseline's time / RegionTree's (speed-up; \
     the baseline is first fit, the try loop, place_anywhere in the same tree, or the same call \
     in a sparse tree of the same size, as the row says); \
     Ping row, Ping / raw exit; IPI row with 3 APs, its round trip / the one with 1 AP; \
     shootdown row, its time per op / the local flush's; 2-CPU fuzz row, its ops/s / 1 CPU's; \
     checker row, ops/s without / with the checker (slow-down); \
     trace row, ops/s with the flush trace off / on; sim fuzz rows, sim ops/s / kvm ops/s; \
     placement rules row, ops/s with the rules off / on (slow-down); \
     seeded-bug rows, shrinking time / time to find; deep-rules row, sim fuzz ops/s without / \
     with frame provenance, table lifetime and tree invariants (slow-down); libFuzzer rows, \
     the target mm_ops / the vmm fuzz engine on the same sim guest (edges: libFuzzer's cov: in \
     the target's build, the engine's ops replayed through it).";

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Nanoseconds per call of `op`: batches of iterations sized to about 30 ms, median of them.
fn ns_per_op(mut op: impl FnMut()) -> f64 {
    let iters = calibrate(&mut op);
    median((0..SAMPLES).map(|_| ns_per_iter(&mut op, iters)).collect())
}

/// Nanoseconds per call of `op(Side::Ours)` and of `op(Side::Baseline)`, their samples taken
/// by turns so that a change in the machine's speed during the row weighs on both alike.
/// One closure for both, since both sides work on the same tree.
fn ns_per_op_paired(mut op: impl FnMut(Side)) -> (f64, f64) {
    let ours = calibrate(|| op(Side::Ours));
    let baseline = calibrate(|| op(Side::Baseline));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..PAIRED_SAMPLES {
        a.push(ns_per_iter(|| op(Side::Ours), ours));
        b.push(ns_per_iter(|| op(Side::Baseline), baseline));
    }
    (median(a), median(b))
}

/// Which side of a paired row a call measures.
#[derive(Clone, Copy)]
enum Side {
    Ours,
    Baseline,
}

/// Samples of each side of a paired row: more than [`SAMPLES`], since the two sides of the
/// sparse rows differ by less than the machine's noise between samples.
const PAIRED_SAMPLES: usize = 15;

/// Iterations of `op` that take at least 30 ms.
fn calibrate(mut op: impl FnMut()) -> u64 {
    let mut iters = 1u64;
    loop {
        let start = Instant::now();
        (0..iters).for_each(|_| op());
        if start.elapsed() >= Duration::from_millis(30) {
            return iters;
        }
        iters *= 2;
    }
}

/// Nanoseconds per call over `iters` calls of `op`.
fn ns_per_iter(mut op: impl FnMut(), iters: u64) -> f64 {
    let start = Instant::now();
    (0..iters).for_each(|_| op());
    start.elapsed().as_nanos() as f64 / iters as f64
}

// ---- 1. RegionTree against first fit -------------------------------------------------------

fn bench_region() -> Box<Region<()>> {
    Box::new(Region::new("bench", Access::READ, None))
}

fn region_tree(rows: &mut Vec<Row>) {
    let mut tree_ns = Vec::new();
    for n in [1_000, 10_000, 100_000] {
        eprintln!("bench: RegionTree vs first fit, {n} regions");
        let SteadyState {
            mut tree,
            mut first_fit,
        } = SteadyState::new(n, 3, bench_region).expect("steady state");
        let mut spare = Some(bench_region());
        let tree_op = ns_per_op(|| {
            let region = spare.take().expect("the spare region is back");
            let placed = tree
                .place_anywhere(region, black_box(REQUEST), PAGE_SIZE)
                .expect("the tail hole fits");
            spare = tree.remove(placed.base());
        });
        let first_fit_op = ns_per_op(|| {
            let base = first_fit
                .place_anywhere(black_box(REQUEST), PAGE_SIZE)
                .expect("the tail hole fits");
            first_fit.remove(base);
        });
        let goal = match n {
            100_000 => Goal::RatioAtLeast(100.0),
            _ => Goal::None,
        };
        rows.push(
            Row::new(
                format!("RegionTree place_anywhere+remove, {}k regions", n / 1000),
                tree_op,
                "ns/op",
            )
            .against(first_fit_op, first_fit_op / tree_op)
            .goal(goal),
        );
        tree_ns.push(tree_op);
    }
    let growth = tree_ns[2] / tree_ns[0];
    rows.push(
        Row::new("RegionTree growth 1k → 100k regions", growth, "×").goal(Goal::ValueAtMost(3.0)),
    );
}

type BenchTree = RegionTree<()>;

fn bench_tree(layout: &Layout) -> BenchTree {
    shuffled_tree(layout.total, &layout.ranges, bench_region).expect("the layout fits")
}

/// Nanoseconds of `place_randomized` + `remove` and of the try loop + `remove`, 4 pages, sampled
/// by turns.
fn randomized_ns(tree: &mut BenchTree, alignment: u64) -> (f64, f64) {
    let mut rng = SplitMix64::new(0x5eed);
    let mut spare = Some(bench_region());
    ns_per_op_paired(|side| {
        let region = spare.take().expect("the spare region is back");
        let placed = match side {
            Side::Ours => tree.place_randomized(region, black_box(REQUEST), alignment, &mut rng),
            Side::Baseline => {
                place_by_tries(tree, region, black_box(REQUEST), alignment, &mut rng).result
            }
        };
        spare = tree.remove(placed.expect("a position exists").base());
    })
}

/// `place_randomized` against the SerenityOS-style try loop, in the sparse space and
/// a nearly full one, and against `place_anywhere` in the same sparse tree.
fn region_tree_randomized(rows: &mut Vec<Row>) {
    let mut sparse_ns = Vec::new();
    for n in [1_000, 10_000, 100_000] {
        eprintln!("bench: RegionTree place_randomized vs try loop, {n} regions");
        let mut sparse = bench_tree(&bench_layouts::sparse(n).expect("sparse layout"));
        let mut nearly_full =
            bench_tree(&bench_layouts::nearly_full(n).expect("nearly full layout"));
        for (align_name, alignment) in [("4 KiB", PAGE_SIZE), ("2 MiB", 2 << 20)] {
            let (ours, tries) = randomized_ns(&mut sparse, alignment);
            let goal = if n == 100_000 {
                Goal::RatioAtLeast(1.0)
            } else {
                Goal::None
            };
            let name = format!(
                "RegionTree place_randomized+remove, sparse, {align_name}, {}k vs try loop",
                n / 1000
            );
            rows.push(
                Row::new(name, ours, "ns/op")
                    .against(tries, tries / ours)
                    .goal(goal),
            );
            if alignment == PAGE_SIZE {
                sparse_ns.push(ours);
                anywhere_row(rows, &mut sparse, n, ours);
            }
            let (ours, tries) = randomized_ns(&mut nearly_full, alignment);
            let name = format!(
                "RegionTree place_randomized+remove, nearly full, {align_name}, {}k vs try loop",
                n / 1000
            );
            rows.push(
                Row::new(name, ours, "ns/op")
                    .against(tries, tries / ours)
                    .goal(Goal::RatioAtLeast(10.0)),
            );
        }
    }
    let growth = sparse_ns[2] / sparse_ns[0];
    rows.push(
        Row::new(
            "RegionTree place_randomized growth 1k → 100k regions, sparse",
            growth,
            "×",
        )
        .goal(Goal::ValueAtMost(3.0)),
    );
}

/// `place_randomized` (`randomized_ns`, already measured) against `place_anywhere` in the same
/// sparse tree; the target is at most 2× at 100k.
fn anywhere_row(rows: &mut Vec<Row>, tree: &mut BenchTree, n: usize, randomized_ns: f64) {
    let mut spare = Some(bench_region());
    let anywhere = ns_per_op(|| {
        let region = spare.take().expect("the spare region is back");
        let placed = tree
            .place_anywhere(region, black_box(REQUEST), PAGE_SIZE)
            .expect("a hole fits");
        spare = tree.remove(placed.base());
    });
    let goal = if n == 100_000 {
        Goal::RatioAtLeast(0.5)
    } else {
        Goal::None
    };
    let name = format!(
        "RegionTree place_randomized+remove, sparse, 4 KiB, {}k vs place_anywhere",
        n / 1000
    );
    rows.push(
        Row::new(name, randomized_ns, "ns/op")
            .against(anywhere, anywhere / randomized_ns)
            .goal(goal),
    );
}

/// One call of 16 KiB at 2 MiB, `place_randomized` or `place_anywhere`, and a `remove` if it
/// succeeds: nanoseconds.
fn adversarial_ns(tree: &mut BenchTree, randomized: bool) -> f64 {
    let mut rng = SplitMix64::new(0x5eed);
    let mut spare = Some(bench_region());
    ns_per_op(|| {
        let region = spare.take().expect("the spare region is back");
        let (size, alignment) = (black_box(ADVERSARIAL_SIZE), ADVERSARIAL_ALIGNMENT);
        let placed = if randomized {
            tree.place_randomized(region, size, alignment, &mut rng)
        } else {
            tree.place_anywhere(region, size, alignment)
        };
        spare = Some(match placed {
            Ok(range) => tree.remove(range.base()).expect("just placed"),
            Err(error) => error.region,
        });
    })
}

/// Both aligned calls on the adversarial layout (no hole, or exactly one, holds an aligned
/// start) against the same call on a sparse tree of the same size: at most 5× at 1M regions.
fn region_tree_adversarial(rows: &mut Vec<Row>) {
    let n = 1_000_000;
    eprintln!("bench: RegionTree adversarial layout, {n} regions");
    let mut sparse = SteadyState::new(n, 3, bench_region)
        .expect("steady state")
        .tree;
    let mut layouts = [
        (
            "no aligned hole",
            bench_tree(&bench_layouts::adversarial(n, false).expect("layout")),
        ),
        (
            "one aligned hole",
            bench_tree(&bench_layouts::adversarial(n, true).expect("layout")),
        ),
    ];
    for (call, randomized) in [("place_anywhere", false), ("place_randomized", true)] {
        let baseline = adversarial_ns(&mut sparse, randomized);
        for (layout, tree) in &mut layouts {
            let ours = adversarial_ns(tree, randomized);
            let name = format!("RegionTree {call} 16 KiB at 2 MiB, 1M regions, {layout} vs sparse");
            rows.push(
                Row::new(name, ours, "ns/op")
                    .against(baseline, baseline / ours)
                    .goal(Goal::RatioAtLeast(0.2)),
            );
        }
    }
}

// ---- 2. Hypercall round trip against a raw exit --------------------------------------------

/// Timestamps the guest's phase markers (empty `Batch` hypercalls) and answers empty batches.
#[derive(Default)]
struct Markers(Vec<Instant>);

impl Driver for Markers {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        _: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.0.push(Instant::now());
        Ok(Some(Vec::new()))
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        Err(DriverError::UnrequestedSnapshot { space: chunk.space })
    }
}

/// µs per iteration of each phase of one `GuestCommand::Bench` guest.
struct ExitPhases {
    raw_exit: f64,
    ping: f64,
    guest_encode: f64,
}

fn exit_phases() -> ExitPhases {
    let config = GuestConfig {
        command: GuestCommand::Bench,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config).expect("bench VM");
    let mut markers = Markers::default();
    let status = vm.run(&mut markers).expect("bench guest run");
    assert_eq!(status, 0, "bench guest exit status");
    let console = vm.console_output();
    let iterations: f64 = console
        .lines()
        .find_map(|l| {
            l.strip_prefix("guest-kernel: bench: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("the bench guest reports its iteration count");
    let [raw, ping, encode, end] = markers.0[..] else {
        panic!("expected 4 phase markers, got {}", markers.0.len());
    };
    let per_iteration = |d: Duration| d.as_secs_f64() * 1e6 / iterations;
    ExitPhases {
        raw_exit: per_iteration(ping - raw),
        ping: per_iteration(encode - ping),
        guest_encode: per_iteration(end - encode),
    }
}

/// µs the host spends in `hypercall::handle` for one Ping, without the exit around it.
fn ping_dispatch() -> f64 {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    let mut head = [0u8; HEADER_SIZE];
    MailboxHeader {
        call: Hypercall::Ping as u32,
        ..Default::default()
    }
    .encode(&mut head)
    .expect("header fits");
    mem.write_slice(&head, GuestAddress(MAILBOX_ADDR))
        .expect("mailbox");
    // The reply is a Ping header again, so the mailbox stays a valid request.
    ns_per_op(|| {
        hypercall::handle(&mem, 0, &mut std::io::sink(), Some(&mut IdleDriver), None)
            .expect("ping");
    }) / 1e3
}

fn hypercalls(rows: &mut Vec<Row>) {
    eprintln!("bench: raw exits and Ping hypercalls ({SAMPLES} guests)");
    let phases: Vec<ExitPhases> = (0..SAMPLES).map(|_| exit_phases()).collect();
    let of = |f: fn(&ExitPhases) -> f64| median(phases.iter().map(f).collect());
    let (raw, ping) = (of(|p| p.raw_exit), of(|p| p.ping));
    rows.push(Row::new("raw port-I/O exit (outb 0x511)", raw, "µs"));
    rows.push(
        Row::new("Ping hypercall round trip", ping, "µs")
            .against(raw, ping / raw)
            .goal(Goal::RatioAtMost(1.3)),
    );
    rows.push(Row::new(
        "  of which guest header encode+decode (no exit)",
        of(|p| p.guest_encode),
        "µs",
    ));
    rows.push(Row::new(
        "  of which host hypercall::handle (no exit)",
        ping_dispatch(),
        "µs",
    ));
}

// ---- 2b. IPI round trip between vCPUs -------------------------------------------------------

/// The IPI round trip CPU 0 of a `cpus`-CPU guest measures at boot (it pings every AP at once,
/// many times, and reports the median with the TSC's own cost).
fn ipi_round_trip(cpus: u32) -> IpiRoundTrip {
    let config = GuestConfig {
        cpus,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config).expect("SMP bench VM");
    let status = vm.run(&mut IdleDriver).expect("SMP bench guest run");
    assert_eq!(status, 0, "SMP bench guest exit status");
    let report = vm.smp_report().round_trip.clone();
    report.expect("CPU 0 reports the IPI round trip")
}

fn ipis(rows: &mut Vec<Row>) {
    eprintln!("bench: IPI round trips with 2 and 4 CPUs ({SAMPLES} guests each)");
    let of = |trips: &[IpiRoundTrip], cycles: fn(&IpiRoundTrip) -> u64| {
        let us = trips
            .iter()
            .map(|t| t.micros(cycles(t)).unwrap_or(f64::NAN));
        (
            median(us.collect()),
            median(trips.iter().map(|t| cycles(t) as f64).collect()),
        )
    };
    let one: Vec<IpiRoundTrip> = (0..SAMPLES).map(|_| ipi_round_trip(2)).collect();
    let three: Vec<IpiRoundTrip> = (0..SAMPLES).map(|_| ipi_round_trip(4)).collect();
    let pings = one[0].pings;
    let (one_us, one_cycles) = of(&one, |t| t.median_cycles);
    let (tsc_us, tsc_cycles) = of(&one, |t| t.tsc_read_cycles);
    let (three_us, _) = of(&three, |t| t.median_cycles);
    rows.push(Row::new(
        format!("IPI round trip, cpu 0 to 1 halted AP (guest TSC, median of {pings} pings)"),
        one_us,
        "µs",
    ));
    rows.push(Row::new("  the same in TSC cycles", one_cycles, "cycles"));
    rows.push(Row::new(
        format!(
            "  of which reading the TSC ({} cycles, included once)",
            num(tsc_cycles)
        ),
        tsc_us,
        "µs",
    ));
    rows.push(
        Row::new(
            "IPI round trip, cpu 0 to 3 halted APs at once",
            three_us,
            "µs",
        )
        .against(one_us, three_us / one_us),
    );
}

// ---- 2c. TLB shootdowns and fuzzing with two CPUs -------------------------------------------

/// Pages each timed round protects, one op each.
const SHOOTDOWN_PAGES: u64 = 64;
const SHOOTDOWN_BASE: u64 = 0x40_0000;

/// The host wall time of each round of `rounds`, run on a two-CPU kvm guest, from handing it out
/// until its results are back.
fn timed_rounds(rounds: Vec<Vec<CpuBatch>>) -> Vec<Duration> {
    let config = GuestConfig {
        cpus: 2,
        echo_console: false,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Backends::default().boot(&config).expect("SMP bench VM");
    let mut timed = TimedRounds {
        inner: RoundScript::new(rounds),
        started: None,
        times: Vec::new(),
    };
    let status = vm.run(&mut timed).expect("SMP bench guest run");
    assert_eq!(status, 0, "SMP bench guest exit status");
    let failed = timed.inner.results.iter().flatten().flat_map(|(_, r)| r);
    assert!(
        failed.clone().all(|r| r.status == Status::Ok),
        "a shootdown bench op failed"
    );
    timed.times
}

/// A round script that times each round.
struct TimedRounds {
    inner: RoundScript,
    started: Option<Instant>,
    times: Vec<Duration>,
}

impl Driver for TimedRounds {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.inner.next_batch(mem, results, spaces)
    }

    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        if let Some(started) = self.started.take() {
            self.times.push(started.elapsed());
        }
        let next = self.inner.next_round(mem, results, spaces)?;
        self.started = Some(Instant::now());
        Ok(next)
    }
}

/// Space 1 is loaded (lazily) on CPU 1, space 2 never was: protecting a page of space 1 read-only
/// shoots CPU 1 down, one of space 2 flushes locally only. After three rounds of setup, round
/// 3 + 3k protects the pages of space 2 (local), round 4 + 3k those of space 1 (shootdown), and
/// round 5 + 3k puts both back to read-write.
fn shootdown_rounds(samples: usize) -> Vec<Vec<CpuBatch>> {
    let on = |cpu, ops: Vec<Op>| vec![CpuBatch { cpu, ops }];
    let page = |i: u64| SHOOTDOWN_BASE + i * PAGE_SIZE;
    let protect_all = |space, access| -> Vec<Op> {
        (0..SHOOTDOWN_PAGES)
            .map(|i| Op::Protect {
                space,
                addr: page(i),
                size: PAGE_SIZE,
                access,
            })
            .collect()
    };
    let mut setup = Vec::new();
    for space in [1, 2] {
        setup.push(Op::MapFixed {
            space,
            addr: SHOOTDOWN_BASE,
            size: SHOOTDOWN_PAGES * PAGE_SIZE,
            access: USER | READ | WRITE,
        });
        setup.extend((0..SHOOTDOWN_PAGES).map(|i| Op::TouchWrite {
            space,
            addr: page(i),
            value: i,
        }));
    }
    let mut rounds = vec![
        on(0, vec![Op::CreateSpace, Op::CreateSpace]),
        on(0, setup),
        on(
            1,
            vec![Op::TouchRead {
                space: 1,
                addr: page(0),
            }],
        ),
    ];
    for _ in 0..samples {
        rounds.push(on(0, protect_all(2, USER | READ)));
        rounds.push(on(0, protect_all(1, USER | READ)));
        let back = [
            protect_all(2, USER | READ | WRITE),
            protect_all(1, USER | READ | WRITE),
        ];
        rounds.push(on(0, back.concat()));
    }
    rounds
}

fn smp(rows: &mut Vec<Row>) {
    eprintln!(
        "bench: protect with a TLB shootdown against a local flush, two CPUs ({SAMPLES} samples)"
    );
    let times = timed_rounds(shootdown_rounds(SAMPLES));
    let per_op = |first: usize| {
        let samples = times.iter().skip(first).step_by(3).take(SAMPLES);
        median(
            samples
                .map(|t| t.as_secs_f64() * 1e6 / SHOOTDOWN_PAGES as f64)
                .collect(),
        )
    };
    let (local, shootdown) = (per_op(3), per_op(4));
    rows.push(Row::new(
        "protect r-- of a page, local flush only (2 CPUs)",
        local,
        "µs/op",
    ));
    rows.push(
        Row::new(
            "  the same with a shootdown of the lazy other CPU",
            shootdown,
            "µs/op",
        )
        .against(local, shootdown / local),
    );
    eprintln!(
        "bench: kvm fuzz throughput, 2 CPUs against 1 ({} campaigns each)",
        3
    );
    let throughput = |cpus| {
        let ops = (0..3).map(|_| fuzz_throughput_on(Backend::Kvm, 1_500, true, cpus));
        median(ops.collect())
    };
    let (one, two) = (throughput(1), throughput(2));
    rows.push(Row::new(
        "fuzz on kvm, 1 job, model + checker: 1 CPU",
        one,
        "ops/s",
    ));
    rows.push(
        Row::new("  the same with 2 CPUs (rounds over both)", two, "ops/s").against(one, two / one),
    );
}

// ---- 3. MM operations through batched hypercalls -------------------------------------------

/// Times the batches of its inner driver after the first (which sets up): from handing out the
/// second until `budget` has passed or the script ends.
struct Timed<D> {
    inner: D,
    budget: Duration,
    calls: usize,
    started: Option<Instant>,
    elapsed: Duration,
    ops: usize,
}

impl<D> Timed<D> {
    fn new(inner: D, budget: Duration) -> Self {
        Timed {
            inner,
            budget,
            calls: 0,
            started: None,
            elapsed: Duration::ZERO,
            ops: 0,
        }
    }
}

impl<D: Driver> Driver for Timed<D> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.calls += 1;
        if self.calls == 1 {
            return self.inner.next_batch(mem, results, spaces);
        }
        // The clock starts with the second call: the first batch has run by then.
        let started = *self.started.get_or_insert_with(Instant::now);
        if self.calls > 2 {
            self.ops += results.len();
            self.elapsed = started.elapsed();
            if self.elapsed >= self.budget {
                return Ok(None);
            }
        }
        let next = self.inner.next_batch(mem, results, spaces)?;
        if next.is_none() {
            self.elapsed = started.elapsed();
        }
        Ok(next)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.inner.snapshot(mem, chunk)
    }
}

const URW: u32 = USER | READ | WRITE;
/// A long-lived 64-page region in each space, touched by every mixed batch.
const HEAP: u64 = 0x4000_0000;
/// Slots of short-lived 2-page regions: mapped, touched, split by a protect, unmapped.
const SLOTS: u64 = 0x1000_0000;

/// Creates spaces 1 and 2 and maps the long-lived region in each.
fn mm_setup() -> Vec<Op> {
    let mut ops = vec![Op::CreateSpace, Op::CreateSpace];
    ops.extend((1..=2).map(|space| Op::MapFixed {
        space,
        addr: HEAP,
        size: 64 * PAGE_SIZE,
        access: URW,
    }));
    ops
}

/// 1024 ops, 8 per slot, alternating between the two spaces; every op succeeds.
fn mm_mix() -> Vec<Op> {
    (0..128u64)
        .flat_map(|j| {
            let space = 1 + (j % 2) as u32;
            let addr = SLOTS + (j / 2) * 0x1_0000;
            let heap = HEAP + (j / 2) * PAGE_SIZE + 8;
            [
                Op::MapFixed {
                    space,
                    addr,
                    size: 2 * PAGE_SIZE,
                    access: URW,
                },
                Op::TouchWrite {
                    space,
                    addr,
                    value: j,
                },
                Op::TouchRead { space, addr },
                Op::Protect {
                    space,
                    addr: addr + PAGE_SIZE,
                    size: PAGE_SIZE,
                    access: USER | READ,
                },
                Op::TouchRead {
                    space,
                    addr: addr + PAGE_SIZE,
                },
                Op::TouchWrite {
                    space,
                    addr: heap,
                    value: j,
                },
                Op::TouchRead { space, addr: heap },
                Op::Unmap {
                    space,
                    addr,
                    size: 2 * PAGE_SIZE,
                },
            ]
        })
        .collect()
}

/// [`mm_setup`], then `batch` [`MM_BATCHES`] times.
fn mm_script(batch: Vec<Op>) -> Script {
    let mut batches = vec![mm_setup()];
    batches.extend(std::iter::repeat_n(batch, MM_BATCHES));
    Script::new(batches)
}

/// Results that are not `Ok`, over every batch the script got back.
fn failures(script: &Script) -> usize {
    script
        .results
        .iter()
        .flatten()
        .filter(|r| r.status != Status::Ok)
        .count()
}

/// One Serve guest driven through `budget` of `batch` after [`mm_setup`]: (ops, time they took).
fn mm_run(batch: Vec<Op>, budget: Duration, checker: bool, trace: bool) -> (usize, Duration) {
    let config = GuestConfig {
        trace,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config).expect("MM guest VM");
    let timed = if checker {
        let mut driver = Checked::new(Timed::new(mm_script(batch), budget));
        vm.run(&mut driver).expect("checked MM guest run");
        assert!(driver.findings.is_empty(), "{:?}", driver.findings);
        driver.into_inner()
    } else {
        let mut driver = Timed::new(mm_script(batch), budget);
        vm.run(&mut driver).expect("MM guest run");
        driver
    };
    assert_eq!(failures(&timed.inner), 0, "every op succeeds");
    (timed.ops, timed.elapsed)
}

/// `pattern` repeated to fill one batch of at most 1024 ops.
fn batch_of(pattern: &[Op]) -> Vec<Op> {
    let n = MAX_BATCH / pattern.len() * pattern.len();
    pattern.iter().copied().cycle().take(n).collect()
}

/// µs per op of batches that hold one kind of op, without the checker: where guest time goes.
fn op_kinds(rows: &mut Vec<Row>) {
    eprintln!("bench: single op kinds, {OP_KIND_BUDGET:?} each");
    let (space, addr) = (1, HEAP + 8);
    let slot = |size| Op::MapFixed {
        space,
        addr: SLOTS,
        size,
        access: URW,
    };
    let protect = |access| Op::Protect {
        space,
        addr: HEAP,
        size: PAGE_SIZE,
        access,
    };
    let kinds = [
        (
            "touch read, present page",
            vec![Op::TouchRead { space, addr }],
        ),
        (
            "touch write, present page",
            vec![Op::TouchWrite {
                space,
                addr,
                value: 1,
            }],
        ),
        (
            "map fixed + unmap, 2 pages",
            vec![
                slot(2 * PAGE_SIZE),
                Op::Unmap {
                    space,
                    addr: SLOTS,
                    size: 2 * PAGE_SIZE,
                },
            ],
        ),
        (
            "protect 1 page of 64, r-- then rw-",
            vec![protect(USER | READ), protect(URW)],
        ),
    ];
    for (name, pattern) in kinds {
        let (ops, time) = mm_run(batch_of(&pattern), OP_KIND_BUDGET, false, true);
        rows.push(Row::new(
            format!("  MM op: {name}"),
            time.as_secs_f64() * 1e6 / ops as f64,
            "µs/op",
        ));
    }
}

fn mm_ops(rows: &mut Vec<Row>) {
    eprintln!(
        "bench: batched MM ops, {MM_ROUNDS} × {MM_BUDGET:?} with the trace off, on, and the checker"
    );
    let mut untraced = (0, Duration::ZERO);
    let (mut plain, mut checked) = ((0, Duration::ZERO), (0, Duration::ZERO));
    for _ in 0..MM_ROUNDS {
        let runs = [
            (false, false, &mut untraced),
            (false, true, &mut plain),
            (true, true, &mut checked),
        ];
        for (checker, trace, total) in runs {
            let (ops, time) = mm_run(mm_mix(), MM_BUDGET, checker, trace);
            total.0 += ops;
            total.1 += time;
        }
    }
    let per_sec = |(ops, time): (usize, Duration)| ops as f64 / time.as_secs_f64();
    let (untraced, plain, checked) = (per_sec(untraced), per_sec(plain), per_sec(checked));
    rows.push(Row::new(
        "MM ops, batches of 1024, flush trace off",
        untraced,
        "ops/s",
    ));
    rows.push(
        Row::new("flush trace cost", untraced / plain, "×")
            .against(untraced, untraced / plain)
            .goal(Goal::RatioAtMost(1.2)),
    );
    rows.push(
        Row::new("MM ops, batches of 1024, no checker", plain, "ops/s")
            .goal(Goal::ValueAtLeast(100_000.0)),
    );
    rows.push(
        Row::new(
            "MM ops, batches of 1024, agreement checker",
            checked,
            "ops/s",
        )
        .against(plain, plain / checked)
        .goal(Goal::RatioAtMost(1.05)),
    );
}

// ---- 4. Page-table walk --------------------------------------------------------------------

fn page_walk(rows: &mut Vec<Row>) {
    eprintln!("bench: page-table walks of 1 GiB");
    for (name, level, goal) in [
        ("4K", PageLevel::Pt, Goal::ValueAtMost(10.0)),
        ("2M", PageLevel::Pd, Goal::None),
    ] {
        // As much RAM as the tables map: the walk's budget is that of an honest guest.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 30)])
            .expect("guest memory");
        let mut builder = PageTableBuilder::new(&mem, 0x10_0000..16 << 20).expect("table pool");
        let flags = PageTableFlags::WRITABLE | PageTableFlags::USER;
        builder
            .map(0x4000_0000, 0, PAGE_SIZE_1G, level, flags)
            .expect("mapping 1 GiB");
        let cr3 = builder.cr3();
        let expected = (PAGE_SIZE_1G / level.entry_span()) as usize;
        let walks = (0..SAMPLES + 1).map(|_| {
            let start = Instant::now();
            let count = leaves(&mem, cr3).filter(Result::is_ok).count();
            assert_eq!(count, expected, "leaves of the {name} walk");
            start.elapsed().as_secs_f64()
        });
        // The first walk warms the caches.
        let secs = median(walks.skip(1).collect());
        rows.push(
            Row::new(
                format!("page walk, 1 GiB in {name} pages"),
                secs * 1e3,
                "ms",
            )
            .goal(goal),
        );
        rows.push(Row::new(
            format!("page walk, 1 GiB in {name} pages, leaves"),
            expected as f64 / secs,
            "leaves/s",
        ));
    }
}

// ---- 5. Boot ---------------------------------------------------------------------------------

/// Milliseconds from spawning one `vmm run` to lines on its stdout.
struct BootTimes {
    /// The guest's first serial line.
    first_line: f64,
    /// The last `cpu:` line: what follows is GDT, IDT and memory-manager init.
    cpu_report: f64,
    /// The guest's first hypercall: the Log after MM init, which the VMM prints.
    first_hypercall: f64,
}

fn boot_once(vmm: &str) -> BootTimes {
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {vmm}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut first_line, mut cpu_report, mut first_hypercall) = (None, None, None);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if line.starts_with("guest-kernel: booted") {
            first_line.get_or_insert(ms);
        } else if line.starts_with("cpu: ") {
            cpu_report = Some(ms);
        } else if line == "guest-kernel: serving MM operations" {
            first_hypercall = Some(ms);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen =
        |t: Option<f64>, what: &str| t.unwrap_or_else(|| panic!("`vmm run` printed no {what}"));
    BootTimes {
        first_line: seen(first_line, "boot line"),
        cpu_report: seen(cpu_report, "CPU report"),
        first_hypercall: seen(first_hypercall, "first hypercall"),
    }
}

fn boot(rows: &mut Vec<Row>) {
    let vmm = env!("CARGO_BIN_EXE_vmm");
    eprintln!("bench: boot of `{vmm} run` ({SAMPLES} processes)");
    let boots: Vec<BootTimes> = (0..SAMPLES).map(|_| boot_once(vmm)).collect();
    let of = |f: fn(&BootTimes) -> f64| median(boots.iter().map(f).collect());
    rows.push(
        Row::new(
            "boot: spawn → first hypercall",
            of(|b| b.first_hypercall),
            "ms",
        )
        .goal(Goal::ValueAtMost(50.0)),
    );
    rows.push(Row::new(
        "boot: spawn → first serial line",
        of(|b| b.first_line),
        "ms",
    ));
    rows.push(Row::new(
        "boot: spawn → end of CPU report",
        of(|b| b.cpu_report),
        "ms",
    ));
}

// ---- 6. Fuzzing on both backends -------------------------------------------------------------

/// A one-job campaign with the model and the checker after every 64-op batch.
fn campaign(backend: Backend, ops: u64, bugs: SeededBugs, name: &str) -> CampaignConfig {
    CampaignConfig {
        seed: 1,
        ops,
        jobs: 1,
        batch: 64,
        check: true,
        shrink: true,
        shrink_budget: Budget::default(),
        shrink_on: None,
        vm: GuestConfig {
            echo_console: false,
            backend,
            seeded_bugs: bugs,
            ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
        },
        out_dir: std::env::temp_dir().join(format!("vmm-bench-{name}-{}", std::process::id())),
        kernel_label: "embedded".into(),
        guest_features: bugs.iter().map(|b| b.feature().to_string()).collect(),
        progress: false,
        coverage: None,
        max_findings: 1,
        pressure: false,
        placement_rules: true,
    }
}

fn run_campaign_or_die(config: &CampaignConfig) -> CampaignReport {
    let report = run_campaign(config, &Backends::default())
        .unwrap_or_else(|e| panic!("bench campaign: {e}"));
    let _ = std::fs::remove_dir_all(&config.out_dir);
    report
}

/// Fuzzing ops/s of one job on `backend` (`ops` operations, the correct MM, no findings).
fn fuzz_throughput(backend: Backend, ops: u64) -> f64 {
    fuzz_throughput_with(backend, ops, true)
}

/// [`fuzz_throughput`], with the placement rules (best-fit policy, probe and uniformity
/// tests) on or off.
fn fuzz_throughput_with(backend: Backend, ops: u64, placement_rules: bool) -> f64 {
    fuzz_throughput_on(backend, ops, placement_rules, 1)
}

/// [`fuzz_throughput_with`] on a guest of `cpus` CPUs.
fn fuzz_throughput_on(backend: Backend, ops: u64, placement_rules: bool, cpus: u32) -> f64 {
    let mut config = campaign(backend, ops, SeededBugs::NONE, "throughput");
    config.placement_rules = placement_rules;
    config.vm.cpus = cpus;
    let report = run_campaign_or_die(&config);
    assert!(
        report.bugs.is_empty(),
        "the correct MM had findings: {:?}",
        report.bugs
    );
    report.ops_per_second()
}

fn fuzz_backends(rows: &mut Vec<Row>) {
    eprintln!("bench: fuzzing throughput, kvm and sim, one job each");
    let kvm = median(
        (0..3)
            .map(|_| fuzz_throughput(Backend::Kvm, 3_000))
            .collect(),
    );
    let sim = median(
        (0..3)
            .map(|_| fuzz_throughput(Backend::Sim, 200_000))
            .collect(),
    );
    rows.push(Row::new("fuzz, 1 job, model + checker: kvm", kvm, "ops/s"));
    rows.push(
        Row::new("fuzz, 1 job, model + checker: sim", sim, "ops/s")
            .against(kvm, sim / kvm)
            .goal(Goal::ValueAtLeast(200_000.0)),
    );
    rows.push(
        Row::new("fuzz on sim against kvm", sim / kvm, "×")
            .against(kvm, sim / kvm)
            .goal(Goal::RatioAtLeast(100.0)),
    );
    // The bugs only a second CPU shows have their rows in the `sim_smp` section.
    for bug in Bug::ALL.into_iter().filter(|b| !b.needs_several_cpus()) {
        eprintln!("bench: {} on sim, found and shrunk", bug.feature());
        let mut config = campaign(
            Backend::Sim,
            100_000,
            SeededBugs::NONE.with(bug),
            bug.feature(),
        );
        if bug == Bug::DoubleAllocEndOfRam {
            // Only running out of frames reaches the end of RAM (as in tests/tests/fuzz.rs).
            config.pressure = true;
            config.vm.memory = 16 << 20;
        }
        let report = run_campaign_or_die(&config);
        let Some(found) = report.bugs.first() else {
            rows.push(
                Row::new(
                    format!("sim: {} not found in 100,000 ops", bug.feature()),
                    f64::NAN,
                    "s",
                )
                .goal(Goal::ValueAtMost(2.0)),
            );
            continue;
        };
        let find = found.time_to_find.as_secs_f64();
        let shrink = report.shrinking.as_secs_f64();
        rows.push(
            Row::new(
                format!("sim: {} found + shrunk", bug.feature()),
                find + shrink,
                "s",
            )
            .against(find, shrink / find)
            .goal(Goal::ValueAtMost(2.0)),
        );
        rows.push(
            Row::new(
                format!("sim: {} shrink / find", bug.feature()),
                shrink / find,
                "×",
            )
            .goal(Goal::ValueAtMost(10.0)),
        );
        // A statistical finding needs its draws: the probe's space, its layout and the draws
        // with their unmaps.
        let repro_goal = if bug == Bug::AslrLowHalf {
            2.0 * mm_fuzz::uniformity::DRAWS as f64 + 4.0
        } else {
            8.0
        };
        rows.push(
            Row::new(
                format!("sim: {} reproducer", bug.feature()),
                found.repro_len as f64,
                "ops",
            )
            .goal(Goal::ValueAtMost(repro_goal)),
        );
    }
}

/// Several CPUs on the sim (issue 29), seed 1: each SMP seeded bug found and shrunk with two
/// CPUs (time, reproducer length, preemptions in its schedule), fuzzing with two CPUs against
/// one, and the correct MM over 10^6 ops on four.
fn sim_smp(rows: &mut Vec<Row>) {
    let smp_bugs = [
        Bug::ShootdownLocalOnly,
        Bug::ShootdownMissesLazy,
        Bug::FreeBeforeAck,
        Bug::FaultNoRecheck,
        Bug::LockOrder,
    ];
    for bug in smp_bugs {
        eprintln!(
            "bench: {} on the sim with 2 CPUs, found and shrunk",
            bug.feature()
        );
        let mut config = campaign(
            Backend::Sim,
            1_000_000,
            SeededBugs::NONE.with(bug),
            bug.feature(),
        );
        config.vm.cpus = 2;
        // `vmm fuzz --seed 1`: the guest's seed too (PCT's schedules come from it).
        config.vm.random_seed = 1;
        let name = format!("sim 2 CPUs: {}", bug.feature());
        let report = run_campaign(&config, &Backends::default())
            .unwrap_or_else(|e| panic!("bench campaign: {e}"));
        let Some(found) = report.bugs.first() else {
            rows.push(
                Row::new(format!("{name} not found in 10^6 ops"), f64::NAN, "s")
                    .goal(Goal::ValueAtMost(5.0)),
            );
            continue;
        };
        let text = std::fs::read_to_string(&found.repro_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&config.out_dir);
        let preemptions = mm_scenario::format::Scenario::parse(&text)
            .ok()
            .and_then(|s| mm_scenario::header::Settings::of(&s.header).ok())
            .and_then(|s| s.schedule)
            .map_or(0, |s| s.preemptions());
        let find = found.time_to_find.as_secs_f64();
        let shrink = report.shrinking.as_secs_f64();
        rows.push(
            Row::new(format!("{name} found + shrunk"), find + shrink, "s")
                .against(find, shrink / find)
                .goal(Goal::ValueAtMost(5.0)),
        );
        rows.push(
            Row::new(format!("{name} reproducer"), found.repro_len as f64, "ops")
                .goal(Goal::ValueAtMost(10.0)),
        );
        rows.push(
            Row::new(format!("{name} preemptions"), preemptions as f64, "")
                .goal(Goal::ValueAtMost(3.0)),
        );
    }
    eprintln!("bench: sim fuzzing with 2 CPUs against 1, by turns");
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        one.push(fuzz_throughput_on(Backend::Sim, 200_000, true, 1));
        two.push(fuzz_throughput_on(Backend::Sim, 200_000, true, 2));
    }
    let (one, two) = (median(one), median(two));
    rows.push(
        Row::new("fuzz, 1 job, sim, 2 CPUs (races, PCT)", two, "ops/s")
            .against(one, two / one)
            .goal(Goal::RatioAtLeast(0.5)),
    );
    eprintln!("bench: the correct MM, 10^6 ops on 4 simulated CPUs");
    let four = fuzz_throughput_on(Backend::Sim, 1_000_000, true, 4);
    rows.push(Row::new("fuzz, sim, 4 CPUs, 10^6 ops clean", four, "ops/s"));
}

/// What the placement rules cost sim fuzzing: campaigns with them on and off, by turns (this
/// host's speed drifts), 200,000 ops each. With them on, about 5% of the ops are the probe's
/// (maps, draws and unmaps, cheaper than the average op) and are counted like the rest.
fn placement_rules_cost(rows: &mut Vec<Row>) {
    eprintln!("bench: sim fuzzing with the placement rules on and off, by turns");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        on.push(fuzz_throughput_with(Backend::Sim, 200_000, true));
        off.push(fuzz_throughput_with(Backend::Sim, 200_000, false));
    }
    let (on, off) = (median(on), median(off));
    rows.push(Row::new(
        "fuzz, 1 job, sim, placement rules off",
        off,
        "ops/s",
    ));
    rows.push(
        Row::new(
            "fuzz, 1 job, sim, placement rules on (ratio: off / on)",
            on,
            "ops/s",
        )
        .against(off, off / on)
        .goal(Goal::RatioAtMost(1.10)),
    );
}

// ---- 7. What the deep rules cost the sim -----------------------------------------------------

/// Operations of each sim campaign of [`deep_rules`].
const DEEP_RULES_OPS: usize = 200_000;

/// Ops/s of a one-job sim fuzz campaign (seed 1, 64-op batches, model and checker), with the
/// checker's deep rules (frame provenance, page-table lifetime, every tree's own invariants)
/// on or off. The same seed gives the same operations either way.
fn sim_fuzz_ops_per_second(deep_rules: bool) -> f64 {
    let config = GuestConfig {
        echo_console: false,
        backend: Backend::Sim,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut generator = Generator::new(1);
    let source = Source::Generated {
        generator: &mut generator,
        budget: DEEP_RULES_OPS,
        feedback: None,
    };
    let session = Session::new(source, 64, None).with_frame_budget(
        guest_boot::boot_memory::available_frames(&config.boot_spec()),
    );
    let mut checked = Checked::new(session);
    checked.deep_rules = deep_rules;
    let mut vm = Backends::default().boot(&config).expect("boot the sim");
    let started = Instant::now();
    vm.run(&mut checked).expect("the sim runs the campaign");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(checked.findings.is_empty(), "{:?}", checked.findings);
    let session = checked.into_inner();
    assert!(session.failure.is_none(), "{:?}", session.failure);
    session.sent.len() as f64 / elapsed
}

/// The sim throughput cost of the rules issue 26 added, by turns (without, with), five times.
fn deep_rules(rows: &mut Vec<Row>) {
    eprintln!("bench: sim fuzzing with and without the deep rules, {DEEP_RULES_OPS} ops each");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(sim_fuzz_ops_per_second(false));
        with.push(sim_fuzz_ops_per_second(true));
    }
    let (without, with) = (median(without), median(with));
    rows.push(Row::new(
        "sim fuzz, 1 job: checker without the deep rules",
        without,
        "ops/s",
    ));
    rows.push(
        Row::new(
            "sim fuzz, 1 job: with frame provenance, table lifetime, tree invariants",
            with,
            "ops/s",
        )
        .against(without, without / with)
        .goal(Goal::RatioAtMost(1.10)),
    );
}

// ---- 7b. What the checker costs, and what one check costs --------------------------------------

/// Operations of each sim campaign of [`checker_cost`] (the measurement: seed 3).
const CHECKER_COST_OPS: u64 = 600_000;

/// Ops/s of a one-job sim campaign of [`CHECKER_COST_OPS`] (seed 3, 64-op batches, model), with
/// the checker or without, plain or under memory pressure in 64 MiB.
fn sim_campaign_ops_per_second(check: bool, pressure: bool) -> f64 {
    let mut config = campaign(Backend::Sim, CHECKER_COST_OPS, SeededBugs::NONE, "checker");
    config.seed = 3;
    config.check = check;
    config.shrink = false;
    if pressure {
        config.pressure = true;
        config.vm.memory = 64 << 20;
    }
    let report = run_campaign_or_die(&config);
    assert!(report.bugs.is_empty(), "findings: {:?}", report.bugs);
    report.ops_per_second()
}

/// The checker's cost on sim fuzzing: campaigns without and with it, by turns, three times
/// each, plain and under pressure; the ratio is ops/s without over with.
fn sim_checker_cost(rows: &mut Vec<Row>) {
    for (name, pressure) in [("plain", false), ("--pressure --memory 64", true)] {
        eprintln!("bench: sim fuzzing with and without the checker, {name}");
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            without.push(sim_campaign_ops_per_second(false, pressure));
            with.push(sim_campaign_ops_per_second(true, pressure));
        }
        let (without, with) = (median(without), median(with));
        rows.push(Row::new(
            format!("sim fuzz, seed 3, {name}: no checker"),
            without,
            "ops/s",
        ));
        rows.push(
            Row::new(
                format!("sim fuzz, seed 3, {name}: checker (ratio: without / with)"),
                with,
                "ops/s",
            )
            .against(without, without / with)
            .goal(Goal::RatioAtMost(1.25)),
        );
        if !pressure {
            // Issue 31: a job fuzzing with the model and the checker.
            rows.push(
                Row::new("sim fuzz, one job, model and checker", with, "ops/s")
                    .goal(Goal::ValueAtLeast(1e6)),
            );
        }
    }
}

/// When a checked guest's checks start and end: [`Stamped`] around the checker notes when a
/// batch's results arrive, [`Stamped`] inside it when the checker is done and hands the inner
/// driver its turn.
#[derive(Default)]
struct CheckClock {
    /// `(inner, when)` of every call, in order.
    calls: std::cell::RefCell<Vec<(bool, Instant)>>,
}

impl CheckClock {
    /// Each check's duration: from the first outer call after the inner driver's last turn to
    /// the inner driver's next turn.
    fn checks(&self) -> Vec<Duration> {
        let mut started = None;
        let mut checks = Vec::new();
        for &(inner, at) in self.calls.borrow().iter() {
            match (inner, started) {
                (false, None) => started = Some(at),
                (true, Some(from)) => {
                    checks.push(at - from);
                    started = None;
                }
                _ => {}
            }
        }
        checks
    }
}

/// A driver that notes the time of each of its batches on a [`CheckClock`].
struct Stamped<'c, D> {
    inner: D,
    clock: &'c CheckClock,
    inside: bool,
}

impl<D: Driver> Driver for Stamped<'_, D> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        let now = Instant::now();
        self.clock.calls.borrow_mut().push((self.inside, now));
        self.inner.next_batch(mem, results, spaces)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.inner.snapshot(mem, chunk)
    }

    fn frames(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: mm_driver::driver::FramesChunk<'_>,
    ) -> Result<(), DriverError> {
        self.inner.frames(mem, chunk)
    }

    fn trace(
        &mut self,
        mem: &GuestMemoryMmap,
        records: &[shared_mm::trace::TraceRecord],
    ) -> Result<(), DriverError> {
        self.inner.trace(mem, records)
    }

    fn booted(&mut self, info: &shared_mm::boot_info::BootInfo) {
        self.inner.booted(info)
    }

    fn wants_written(&self) -> bool {
        self.inner.wants_written()
    }

    fn written(&mut self, frames: &[u64]) {
        self.inner.written(frames)
    }
}

/// Where the big region of [`one_op_checks`] lies, and its size.
const BIG: u64 = 0x10_0000_0000;
const GIB: u64 = 1 << 30;
/// One-op batches each guest of [`one_op_checks`] runs.
const ONE_OP_BATCHES: usize = 400;

/// Median µs of a check after a one-op batch (a protect of one page, r-- and rw- by turns) in
/// a sim guest with a 1 GiB region, populated in 4 KiB pages or left empty.
fn one_op_check_us(populated: bool) -> f64 {
    let config = GuestConfig {
        echo_console: false,
        backend: Backend::Sim,
        memory: 1536 << 20,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut setup = vec![
        Op::CreateSpace,
        Op::MapFixed {
            space: 1,
            addr: BIG,
            size: GIB,
            access: URW,
        },
    ];
    if populated {
        setup.push(Op::Populate {
            space: 1,
            addr: BIG,
            size: GIB,
        });
    }
    let mut batches = vec![setup];
    batches.extend((0..ONE_OP_BATCHES).map(|i| {
        let access = if i % 2 == 0 { USER | READ } else { URW };
        vec![Op::Protect {
            space: 1,
            addr: BIG + GIB / 2,
            size: PAGE_SIZE,
            access,
        }]
    }));
    let clock = CheckClock::default();
    let script = Stamped {
        inner: Script::new(batches),
        clock: &clock,
        inside: true,
    };
    let mut driver = Stamped {
        inner: Checked::new(script),
        clock: &clock,
        inside: false,
    };
    let mut vm = Backends::default().boot(&config).expect("boot the sim");
    vm.run(&mut driver).expect("the sim runs the script");
    assert!(
        driver.inner.findings.is_empty(),
        "{:?}",
        driver.inner.findings
    );
    let script = driver.inner.into_inner().inner;
    assert_eq!(failures(&script), 0, "every op succeeds");
    // The first checks follow the setup; the rest follow one protect each.
    let checks = clock.checks();
    let one_op = checks[checks.len() - ONE_OP_BATCHES..].iter();
    median(one_op.map(|d| d.as_secs_f64() * 1e6).collect())
}

/// A check after a one-op batch in a space with 1 GiB mapped in 4 KiB pages, against the same
/// in a space with nothing mapped: the target is at most 2×.
fn one_op_checks(rows: &mut Vec<Row>) {
    eprintln!("bench: checks after one-op batches, 1 GiB mapped in 4 KiB pages and nothing mapped");
    let empty = one_op_check_us(false);
    let full = one_op_check_us(true);
    rows.push(Row::new(
        "check after a 1-op batch (protect 1 page), nothing mapped",
        empty,
        "µs",
    ));
    rows.push(
        Row::new(
            "check after a 1-op batch (protect 1 page), 1 GiB mapped in 4 KiB pages",
            full,
            "µs",
        )
        .against(empty, full / empty)
        .goal(Goal::RatioAtMost(2.0)),
    );
}

fn checker_cost(rows: &mut Vec<Row>) {
    sim_checker_cost(rows);
    one_op_checks(rows);
}

// ---- 8. Coverage-guided fuzzing against plain fuzzing on kvm ----------------------------------

/// Operations per campaign of [`coverage_guided`]: the 100,000 the target speaks of, so that
/// the corpus replays its entries many times and the guided run shows whether it keeps its
/// speed.
const GUIDED_OPS: u64 = 100_000;

/// A coverage-guided campaign on kvm against a plain one, side by side (one thread each, on
/// this machine's two cores): this host's kvm speed drifts by tens of percent within minutes,
/// and runs one after the other put that drift into the ratio.
fn coverage_guided(rows: &mut Vec<Row>) {
    eprintln!("bench: kvm fuzzing, plain and coverage-guided side by side, {GUIDED_OPS} ops each");
    let elf = guest_image::variant::build_variant_with(
        &guest_image::variant::GuestVariant::default().with_coverage(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kernel = std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
    let counters = mm_fuzz::coverage::CoverageMap::from_elf(&kernel).expect("coverage ELF");
    let run = |kernel: &[u8], coverage, name| {
        let mut config = campaign(Backend::Kvm, GUIDED_OPS, SeededBugs::NONE, name);
        config.vm.kernel = kernel.to_vec();
        config.coverage = coverage;
        let report = run_campaign_or_die(&config);
        assert!(report.bugs.is_empty(), "findings: {:?}", report.bugs);
        report.ops_per_second()
    };
    let (plain, guided) = std::thread::scope(|scope| {
        let plain = scope.spawn(|| run(guest_image::EMBEDDED_KERNEL, None, "plain"));
        let guided = run(&kernel, counters, "guided");
        (plain.join().expect("the plain campaign"), guided)
    });
    let ops = num(GUIDED_OPS as f64);
    rows.push(Row::new(
        format!("fuzz kvm, {ops} ops, 1 job, side by side: plain"),
        plain,
        "ops/s",
    ));
    rows.push(
        Row::new(
            format!("fuzz kvm, {ops} ops, 1 job, side by side: coverage-guided (ratio: / plain)"),
            guided,
            "ops/s",
        )
        .against(plain, guided / plain)
        .goal(Goal::RatioAtLeast(0.8)),
    );
}

/// One part of the bench: it measures and pushes its rows.
type Section = fn(&mut Vec<Row>);

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no options.
    let started = Instant::now();
    let machine = Machine::this();
    println!("{}", machine.describe());
    let mut rows = Vec::new();
    let only = std::env::var("SYSTEM_BENCH_ONLY").ok();
    let sections: [(&str, Section); 17] = [
        ("region_tree", region_tree),
        ("region_tree", region_tree_randomized),
        ("region_tree", region_tree_adversarial),
        ("hypercalls", hypercalls),
        ("ipi", ipis),
        ("smp", smp),
        ("mm_ops", mm_ops),
        ("op_kinds", op_kinds),
        ("page_walk", page_walk),
        ("boot", boot),
        ("fuzz", fuzz_backends),
        ("sim_smp", sim_smp),
        ("placement", placement_rules_cost),
        ("deep_rules", deep_rules),
        ("checker", checker_cost),
        ("coverage", coverage_guided),
        ("libfuzzer", libfuzzer::libfuzzer_target),
    ];
    if let Some(only) = only.as_deref() {
        if !sections.iter().any(|(name, _)| *name == only) {
            eprintln!("SYSTEM_BENCH_ONLY={only}: no such section");
            std::process::exit(2);
        }
    }
    // A section that fails (a panic: a campaign with a finding, a guest that would not boot)
    // keeps the rows it pushed, is named in the results, and the others still run.
    let mut unfinished = Vec::new();
    for (name, section) in sections {
        if only.as_deref().is_none_or(|only| only == name) {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| section(&mut rows)));
            if let Err(panic) = ran {
                unfinished.push(results::Unfinished::new(name, panic.as_ref()));
            }
        }
    }
    let run = Run {
        machine: &machine,
        only: only.as_deref(),
        seconds: started.elapsed().as_secs_f64(),
        legend: RATIO_LEGEND,
        unfinished: &unfinished,
    };
    println!();
    print!("{}", results::table(&rows));
    println!();
    println!("{RATIO_LEGEND}");
    let (met, all) = Run::score(&rows);
    println!(
        "{met} of {all} targets met; the run took {:.0} s.",
        run.seconds
    );
    for section in &unfinished {
        println!("{section}");
    }
    let out = std::env::var_os("SYSTEM_BENCH_OUT").map_or_else(results::default_dir, Into::into);
    match run.write(&rows, &out) {
        Ok(paths) => paths.iter().for_each(|p| println!("wrote {}", p.display())),
        Err(e) => {
            eprintln!(
                "bench: cannot write the results into {}: {e}",
                out.display()
            );
            std::process::exit(2);
        }
    }
    if !unfinished.is_empty() {
        std::process::exit(1);
    }
}
