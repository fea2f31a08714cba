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
//! The region boxes are allocated first and handed out in shuffled order, as in an address
//! space built over time. Allocating them in address order instead puts the tree's right
//! spine (nodes a power of two apart in memory) into the same few cache sets, which
//! measures the allocator's layout more than the tree.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RandomSource, RegionTree, SplitMix64};

const TOTAL_BASE: u64 = 0x1000_0000_0000;
const TOTAL_SIZE: u64 = 1 << 40;
const REQUEST: u64 = 4 * PAGE_SIZE;

/// SerenityOS's `RegionTree::allocate_range_anywhere`: walk the regions in address order
/// and take the first hole of at least `size + alignment` bytes (the tail counts too),
/// then insert into a sorted map. A `BTreeMap` scans faster than Serenity's intrusive
/// red-black tree, so this baseline is if anything flattered.
struct FirstFit {
    total: VirtualRange,
    /// base -> last (inclusive)
    regions: BTreeMap<u64, u64>,
}

impl FirstFit {
    fn place_anywhere(&mut self, size: u64, alignment: u64) -> Option<u64> {
        let mut window = self.total.base().get();
        let mut found = None;
        for (&base, &last) in &self.regions {
            if base - window >= size + alignment {
                found = Some(window);
                break;
            }
            window = last + 1;
        }
        let hole_base = match found {
            Some(hole_base) => hole_base,
            None if self.total.last().get() + 1 - window >= size + alignment => window,
            None => return None,
        };
        let base = hole_base.next_multiple_of(alignment);
        self.regions.insert(base, base + size - 1);
        Some(base)
    }

    fn remove(&mut self, base: u64) -> Option<u64> {
        self.regions.remove(&base)
    }
}

/// `(base, pages)` of `n` one-page regions separated by holes of `1..=max_hole` pages.
fn layout(n: usize, max_hole: u64) -> Vec<(u64, u64)> {
    let mut rng = SplitMix64::new(n as u64);
    let mut base = TOTAL_BASE;
    (0..n)
        .map(|_| {
            base += (1 + rng.next_u64() % max_hole) * PAGE_SIZE;
            let region = (base, 1);
            base += PAGE_SIZE;
            region
        })
        .collect()
}

fn total() -> VirtualRange {
    VirtualRange::new(VirtualAddress::new(TOTAL_BASE), TOTAL_SIZE).unwrap()
}

fn region() -> Box<Region<()>> {
    Box::new(Region::new("bench", Access::READ, None))
}

fn bench_pair(c: &mut Criterion, scenario: &str, sizes: &[usize], max_hole: u64) {
    let mut group = c.benchmark_group("region_tree");
    for &n in sizes {
        let regions = layout(n, max_hole);

        let mut tree = RegionTree::new(total());
        let mut boxes: Vec<_> = regions.iter().map(|_| region()).collect();
        // Fisher-Yates; the modulo bias is irrelevant here.
        let mut rng = SplitMix64::new(7);
        for i in (1..boxes.len()).rev() {
            boxes.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for (&(base, pages), r) in regions.iter().zip(boxes) {
            tree.place_specifically(r, VirtualAddress::new(base), pages * PAGE_SIZE)
                .unwrap();
        }
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

        let mut baseline = FirstFit {
            total: total(),
            regions: regions
                .iter()
                .map(|&(base, pages)| (base, base + pages * PAGE_SIZE - 1))
                .collect(),
        };
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
