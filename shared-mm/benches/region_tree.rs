//! RegionTree placement against SerenityOS-style baselines: first fit for `place_anywhere`, a
//! try loop of random addresses for `place_randomized`.
//!
//! Every point is a steady state: the tree holds `n` live regions, and one iteration places a
//! region and removes it again (or fails to place it).
//!
//! - `fragmented` (`tree_place_remove`, `first_fit_place_remove`): `n` one-page regions with
//!   holes of 1 to 3 pages between them; no interior hole fits the 4-page request, so first
//!   fit walks all `n` regions to reach the free tail (the case that hurts a long-lived
//!   address space). `fits_early`: holes of 1 to 8 pages, so first fit stops after a few
//!   regions; the baseline's best case, measured at the largest size only.
//! - `randomized_place_remove` against `try_loop_place_remove` (`shared_mm::try_loop`: up to
//!   1000 random aligned addresses, then `place_anywhere`), 4 pages at 4 KiB and at 2 MiB:
//!   `sparse` is the layout, `n` one-page regions with 16-page holes at the bottom of
//!   the 128 TiB user range (`bench_layouts::sparse`; `tree_place_remove/sparse_4k` is
//!   `place_anywhere` in the same tree); `nearly_full` has holes of 4 to 8 pages between regions of about 2 MiB and no tail
//!   (`shared_mm::bench_layouts::nearly_full`), so a random address fits about once in 170.
//! - `adversarial`: 16 KiB at 2 MiB in `bench_layouts::adversarial`, where every hole is large
//!   enough but none holds an aligned start (`fail`), or exactly one does (`one_fit`),
//!   against the same call on the `fragmented` tree of the same size (`sparse`).
//!
//! The baselines, layouts and steady state are in `shared_mm::{first_fit, try_loop,
//! bench_layouts}` (feature `baseline`), which the `system` bench of the vmm shares.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use shared_mm::address::PAGE_SIZE;
use shared_mm::bench_layouts::{self, Layout, ADVERSARIAL_ALIGNMENT, ADVERSARIAL_SIZE};
use shared_mm::first_fit::{shuffled_tree, SteadyState, REQUEST};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, SplitMix64};
use shared_mm::try_loop::place_by_tries;

type Tree = RegionTree<()>;

fn region() -> Box<Region<()>> {
    Box::new(Region::new("bench", Access::READ, None))
}

fn tree_of(layout: &Layout) -> Tree {
    let tree = shuffled_tree(layout.total, &layout.ranges, region).unwrap();
    tree.check_invariants().unwrap();
    tree
}

/// Alignments of the randomized rows, with their names.
const ALIGNMENTS: [(&str, u64); 2] = [("4k", PAGE_SIZE), ("2m", 2 << 20)];

fn bench_pair(c: &mut Criterion, scenario: &str, sizes: &[usize], max_hole: u64) {
    let mut group = c.benchmark_group("region_tree");
    for &n in sizes {
        let SteadyState {
            mut tree,
            first_fit: mut baseline,
        } = SteadyState::new(n, max_hole, region).unwrap();
        tree.check_invariants().unwrap();
        let mut spare = Some(region());
        let id = BenchmarkId::new(format!("tree_place_remove/{scenario}"), n);
        group.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let placed = tree
                    .place_anywhere(spare.take().unwrap(), black_box(REQUEST), PAGE_SIZE)
                    .unwrap();
                spare = tree.remove(placed.base());
            })
        });

        let id = BenchmarkId::new(format!("first_fit_place_remove/{scenario}"), n);
        group.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let base = baseline
                    .place_anywhere(black_box(REQUEST), PAGE_SIZE)
                    .unwrap();
                baseline.remove(base).unwrap();
            })
        });
    }
    group.finish();
}

/// `place_randomized` + `remove` against the try loop + `remove`, in the same tree.
fn bench_randomized(
    group: &mut BenchmarkGroup<'_, WallTime>,
    space: &str,
    n: usize,
    tree: &mut Tree,
) {
    for (name, alignment) in ALIGNMENTS {
        let mut rng = SplitMix64::new(0x5eed);
        let mut spare = Some(region());
        let id = BenchmarkId::new(format!("randomized_place_remove/{space}_{name}"), n);
        group.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let placed = tree
                    .place_randomized(
                        spare.take().unwrap(),
                        black_box(REQUEST),
                        alignment,
                        &mut rng,
                    )
                    .unwrap();
                spare = tree.remove(placed.base());
            })
        });
        report_tries(space, name, n, tree, alignment);
        let id = BenchmarkId::new(format!("try_loop_place_remove/{space}_{name}"), n);
        group.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let placement = place_by_tries(
                    tree,
                    spare.take().unwrap(),
                    black_box(REQUEST),
                    alignment,
                    &mut rng,
                );
                spare = tree.remove(placement.result.unwrap().base());
            })
        });
    }
}

/// Prints how many random addresses the try loop needs in `tree`, over 1000 placements.
fn report_tries(space: &str, name: &str, n: usize, tree: &mut Tree, alignment: u64) {
    let mut rng = SplitMix64::new(1);
    let (mut tries, mut fallbacks) = (0u64, 0u32);
    for _ in 0..1000 {
        let placement = place_by_tries(tree, region(), REQUEST, alignment, &mut rng);
        tries += u64::from(placement.tries);
        fallbacks += u32::from(placement.fell_back);
        tree.remove(placement.result.unwrap().base());
    }
    eprintln!(
        "try loop, {space} {name}, {n} regions: {:.1} tries on average, {:.1}% fell back",
        tries as f64 / 1000.0,
        f64::from(fallbacks) / 10.0
    );
}

/// The randomized rows in the sparse and the nearly full space, with `place_anywhere` +
/// `remove` in the same sparse tree for reference.
fn bench_spaces(c: &mut Criterion) {
    let mut group = c.benchmark_group("region_tree");
    for n in [1_000, 10_000, 100_000] {
        let mut tree = tree_of(&bench_layouts::sparse(n).unwrap());
        let mut spare = Some(region());
        let id = BenchmarkId::new("tree_place_remove/sparse_4k", n);
        group.bench_with_input(id, &n, |b, _| {
            b.iter(|| {
                let placed = tree
                    .place_anywhere(spare.take().unwrap(), black_box(REQUEST), PAGE_SIZE)
                    .unwrap();
                spare = tree.remove(placed.base());
            })
        });
        bench_randomized(&mut group, "sparse", n, &mut tree);
        let mut tree = tree_of(&bench_layouts::nearly_full(n).unwrap());
        bench_randomized(&mut group, "nearly_full", n, &mut tree);
    }
    group.finish();
}

/// One call of `place_anywhere` or `place_randomized` for 16 KiB at 2 MiB (and a `remove` if
/// it succeeds).
fn adversarial_call(
    tree: &mut Tree,
    randomized: bool,
    rng: &mut SplitMix64,
    spare: &mut Option<Box<Region<()>>>,
) {
    let region = spare.take().unwrap();
    let (size, alignment) = (black_box(ADVERSARIAL_SIZE), ADVERSARIAL_ALIGNMENT);
    let placed = if randomized {
        tree.place_randomized(region, size, alignment, rng)
    } else {
        tree.place_anywhere(region, size, alignment)
    };
    *spare = Some(match placed {
        Ok(range) => tree.remove(range.base()).unwrap(),
        Err(error) => error.region,
    });
}

fn bench_adversarial(c: &mut Criterion) {
    let mut group = c.benchmark_group("region_tree");
    for n in [1_000, 1_000_000] {
        let mut trees = [
            (
                "fail",
                tree_of(&bench_layouts::adversarial(n, false).unwrap()),
            ),
            (
                "one_fit",
                tree_of(&bench_layouts::adversarial(n, true).unwrap()),
            ),
            ("sparse", SteadyState::new(n, 3, region).unwrap().tree),
        ];
        for (call, randomized) in [("anywhere", false), ("randomized", true)] {
            for (layout, tree) in &mut trees {
                let mut rng = SplitMix64::new(0x5eed);
                let mut spare = Some(region());
                let id = BenchmarkId::new(format!("adversarial_{call}/{layout}"), n);
                group.bench_with_input(id, &n, |b, _| {
                    b.iter(|| adversarial_call(tree, randomized, &mut rng, &mut spare))
                });
            }
        }
    }
    group.finish();
}

fn region_tree(c: &mut Criterion) {
    bench_pair(c, "fragmented", &[1_000, 10_000, 100_000], 3);
    bench_pair(c, "fits_early", &[100_000], 8);
    bench_spaces(c);
    bench_adversarial(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = region_tree
}
criterion_main!(benches);
