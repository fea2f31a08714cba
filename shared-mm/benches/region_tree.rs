//! RegionTree `place_anywhere` + `remove` against a SerenityOS-style first-fit linear scan.
//!
//! Steady state: the tree holds `n` live one-page regions with holes of 1 to 3 pages
//! between them, then repeatedly places one 4-page region anywhere and removes it.
//!
//! - `fragmented`: no hole between regions fits the request, so first fit walks all `n`
//!   regions to reach the free tail (the case that hurts a long-lived address space).
//! - `fits_early`: the holes are 1 to 8 pages, so first fit stops after a few regions;
//!   this is the baseline's best case, measured at the largest size only.
//!
//! The baseline and the steady state are in `shared_mm::first_fit` (feature `baseline`), which
//! the `system` bench of the vmm shares.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shared_mm::address::PAGE_SIZE;
use shared_mm::first_fit::{SteadyState, REQUEST};
use shared_mm::region::{Access, Region};

fn region() -> Box<Region<()>> {
    Box::new(Region::new("bench", Access::READ, None))
}

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

fn region_tree(c: &mut Criterion) {
    bench_pair(c, "fragmented", &[1_000, 10_000, 100_000], 3);
    bench_pair(c, "fits_early", &[100_000], 8);
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
