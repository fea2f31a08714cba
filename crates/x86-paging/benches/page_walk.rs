//! Leaves per second of the page-table walker over 1 GiB mapped with 4 KiB and with 2 MiB pages.
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared_mm::pte::{PageLevel, PageTableFlags, PAGE_SIZE_1G};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use x86_paging::page_walk::{coalesce, leaves, translate, PageTableBuilder};

/// As much RAM as the tables map, so the walk stays within the budget an honest guest has.
const RAM: usize = 1 << 30;
/// Where the tables go.
const POOL: std::ops::Range<u64> = 0x10_0000..16 << 20;
const BASE: u64 = 0x4000_0000;

/// Guest memory holding tables that map 1 GiB at `BASE` with pages of `level`, and their CR3.
fn one_gib(level: PageLevel) -> (GuestMemoryMmap, u64) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    let mut builder = PageTableBuilder::new(&mem, POOL).expect("table pool");
    let flags = PageTableFlags::WRITABLE | PageTableFlags::USER;
    builder
        .map(BASE, 0, PAGE_SIZE_1G, level, flags)
        .expect("mapping 1 GiB");
    let cr3 = builder.cr3();
    (mem, cr3)
}

fn walk(c: &mut Criterion) {
    let mut group = c.benchmark_group("page_walk");
    for (name, level) in [("4k", PageLevel::Pt), ("2m", PageLevel::Pd)] {
        let (mem, cr3) = one_gib(level);
        let count = PAGE_SIZE_1G / level.entry_span();
        group.throughput(Throughput::Elements(count));
        group.bench_function(format!("leaves_1g_{name}"), |b| {
            b.iter(|| leaves(black_box(&mem), black_box(cr3)).count())
        });
        group.bench_function(format!("coalesce_1g_{name}"), |b| {
            b.iter(|| coalesce(leaves(black_box(&mem), black_box(cr3)).filter_map(Result::ok)))
        });
    }
    let (mem, cr3) = one_gib(PageLevel::Pt);
    group.throughput(Throughput::Elements(1));
    group.bench_function("translate_4k", |b| {
        b.iter(|| {
            translate(
                black_box(&mem),
                black_box(cr3),
                black_box(BASE + 0x1234_5678),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, walk);
criterion_main!(benches);
