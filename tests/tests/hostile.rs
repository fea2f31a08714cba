//! A hostile guest against the host: tables that alias each other and absurd counts under KVM,
//! reports no one asked for or larger than the guest's RAM could hold, and arbitrary mailbox
//! contents, snapshot records and page tables thrown at the hypercall decoder, the walker and
//! the checker, with the memory they allocate bounded.
// Only the counting allocator needs unsafe code (`GlobalAlloc` is an unsafe trait).
#![deny(unsafe_code)]

use mm_checker::{check, Checked, Rule};
use mm_driver::driver::{Driver, DriverError, SnapshotChunk, SpaceSnapshot};
use mm_driver::protocol_error::ProtocolError;
use mm_driver::RunError;
use proptest::prelude::*;
use shared_mm::abi::{
    Hypercall, MailboxHeader, Op, OpResult, RegionRecord, SpaceRecord, FRAMES_ALLOCATED,
    FRAMES_OWNED, HEADER_SIZE, KERNEL_SPACE, REGION_RECORD_SIZE, SPACE_RECORD_SIZE,
};
use shared_mm::boot_info::{GuestCommand, MAILBOX_ADDR};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::hypercall::Next;
use vmm::report_guard::{ReportBounds, ReportGuard};
use vmm::{hypercall, Vm, VmmError};

/// Counts the bytes the test process has allocated and its peak, to bound what hostile input
/// makes the host allocate.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract (a layout of non-zero
        // size), which is all `System.alloc` requires; the layout is passed on as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: our caller guarantees `ptr` came from `alloc` above with this layout, and
        // `alloc` got every block from `System`, so `System` may free it.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Most bytes one hostile case may make the host allocate beyond what was live before it
/// (the tests run on several threads, so this bounds them all together).
const ALLOCATION_BOUND: usize = 256 << 20;
/// A hang guard, not a speed goal: a case taking this long is stuck.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Runs `case`, asserting it stays within the allocation bound and the hang guard.
fn bounded<T>(case: impl FnOnce() -> T) -> T {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let result = case();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    assert!(grew < ALLOCATION_BOUND, "the host allocated {grew} bytes");
    assert!(
        started.elapsed() < HANG_GUARD,
        "took {:?}",
        started.elapsed()
    );
    result
}

fn guest(command: GuestCommand) -> Vm {
    let config = integration_tests::config(command);
    Vm::new(&config).expect("boot the guest")
}

/// Hands out no work; records nothing.
struct NoWork;

impl Driver for NoWork {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        _: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        Ok(None)
    }
}

#[test]
fn page_tables_that_alias_each_other_end_the_walk_with_a_finding() {
    let mut vm = guest(GuestCommand::AliasTables);
    let mut checked = Checked::new(NoWork);
    let status = bounded(|| vm.run(&mut checked));
    assert_eq!(status.expect("the guest exits normally"), 0);
    let alias = checked
        .findings
        .iter()
        .find(|(_, f)| f.space == 1 && f.rule == Rule::Walk)
        .unwrap_or_else(|| panic!("no walk finding: {:#?}", checked.findings));
    assert!(
        alias
            .1
            .detail
            .starts_with("tables alias: walk budget exceeded"),
        "{}",
        alias.1
    );
}

#[test]
fn an_absurd_record_count_is_a_protocol_error() {
    let mut vm = guest(GuestCommand::HugeCount);
    match bounded(|| vm.run(&mut NoWork)) {
        Err(
            e @ VmmError::Run(RunError::GuestProtocol(ProtocolError::RecordsDoNotFit {
                count, ..
            })),
        ) => {
            assert_eq!(count, 1 << 60);
            assert_eq!(e.exit_code(), 103);
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// RAM of the guest the attacks below were measured from (before the guard, each grew the host
/// by 127 to 375 MiB).
const ATTACKER_RAM: usize = 32 << 20;

/// Serves one hypercall `call` with `count` records in `payload` through the guard, as the KVM
/// run loop does.
fn call(
    mem: &GuestMemoryMmap,
    guard: &mut ReportGuard<'_>,
    call: Hypercall,
    count: usize,
    args: [u64; 4],
    payload: &[u8],
) -> Result<Next, VmmError> {
    let header = MailboxHeader {
        call: call as u32,
        status: 0,
        len: payload.len() as u32,
        count: count as u32,
        args,
    };
    let mut head = [0u8; HEADER_SIZE];
    header.encode(&mut head).expect("fits");
    mem.write_slice(&head, GuestAddress(MAILBOX_ADDR)).unwrap();
    mem.write_slice(payload, GuestAddress(MAILBOX_ADDR + HEADER_SIZE as u64))
        .unwrap();
    hypercall::handle(mem, 0, &mut std::io::sink(), Some(guard), None)
}

/// Runs `attack` against a checker behind the guard on a 32 MiB guest whose first batch (the
/// checker asking for the kernel's tree and frame report) was just handed out; asserts the
/// attack ends the run with a protocol error (exit 103) naming `why`, within the allocation
/// bound.
fn attack_ends_the_run(
    why: &str,
    attack: impl FnOnce(&GuestMemoryMmap, &mut ReportGuard<'_>) -> Result<(), VmmError>,
) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ATTACKER_RAM)]).unwrap();
    let mut checked = Checked::new(NoWork);
    let mut guard = ReportGuard::new(&mut checked, ReportBounds::for_memory(&mem));
    call(&mem, &mut guard, Hypercall::Batch, 0, [0; 4], &[]).expect("the first batch");
    let err = bounded(|| attack(&mem, &mut guard)).expect_err("the attack is refused");
    assert_eq!(err.exit_code(), 103, "{err}");
    assert!(err.to_string().contains(why), "{err}");
}

fn words(n: usize) -> Vec<u8> {
    vec![0u8; 8 * n]
}

fn regions(n: usize) -> Vec<u8> {
    let record = RegionRecord {
        base: 0x1000,
        size: 0x1000,
        access: 0xb,
        backed: 1,
        object: 0,
        name: RegionRecord::name_field("anon"),
    };
    let mut bytes = vec![0u8; n * REGION_RECORD_SIZE];
    for chunk in bytes.chunks_exact_mut(REGION_RECORD_SIZE) {
        record.encode(chunk).expect("fits");
    }
    bytes
}

#[test]
fn frame_reports_for_space_ids_nobody_asked_for_end_the_run() {
    attack_ends_the_run("unrequested frame report of space 1", |mem, guard| {
        for id in 1..=3000u64 {
            let args = [id, 0, 8000, FRAMES_OWNED];
            call(mem, guard, Hypercall::Frames, 8000, args, &words(8000))?;
        }
        Ok(())
    });
}

#[test]
fn an_allocated_bitmap_larger_than_ram_ends_the_run() {
    attack_ends_the_run("allocated-frame bitmap words", |mem, guard| {
        let args = [u64::from(KERNEL_SPACE), 0, 1 << 23, FRAMES_ALLOCATED];
        call(mem, guard, Hypercall::Frames, 8000, args, &words(8000))?;
        Ok(())
    });
}

#[test]
fn snapshot_chunks_that_restart_at_0_end_the_run() {
    attack_ends_the_run("unrequested snapshot", |mem, guard| {
        for _ in 0..3000 {
            let args = [u64::from(KERNEL_SPACE), 0, 1000, 0x1000];
            call(mem, guard, Hypercall::Snapshot, 1000, args, &regions(1000))?;
        }
        Ok(())
    });
}

#[test]
fn a_snapshot_larger_than_the_guest_s_heap_holds_ends_the_run() {
    attack_ends_the_run("snapshot regions", |mem, guard| {
        let args = [u64::from(KERNEL_SPACE), 0, 1 << 22, 0x1000];
        call(mem, guard, Hypercall::Snapshot, 1000, args, &regions(1000))?;
        Ok(())
    });
}

/// A guest claiming more live spaces than can exist (a full check of 400, three operations each,
/// would not fit one 1,024-op batch) is refused before the checker builds a check.
#[test]
fn more_live_spaces_than_can_exist_end_the_run() {
    attack_ends_the_run("400 live spaces", |mem, guard| {
        let mut records = vec![0u8; 400 * SPACE_RECORD_SIZE];
        for (space, chunk) in (1..).zip(records.chunks_exact_mut(SPACE_RECORD_SIZE)) {
            let record = SpaceRecord { space, cr3: 0x1000 };
            record.encode(chunk).expect("fits");
        }
        call(mem, guard, Hypercall::Batch, 0, [400, 0, 0, 0], &records)?;
        Ok(())
    });
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("4 MiB")
}

/// Counts, lengths and ids near the edges of their types.
fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..8,
        1000u32..1100,
        Just(u32::MAX),
        Just(u32::MAX / 48),
        any::<u32>()
    ]
}

fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(1 << 60), Just(u64::MAX), any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_mailbox_contents_are_served_or_refused_without_panic(
        call in 0u32..12,
        len in edgy_u32(),
        count in edgy_u32(),
        args in proptest::array::uniform4(edgy_u64()),
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mem = memory();
        let header = MailboxHeader { call, status: 0, len, count, args };
        let mut head = [0u8; HEADER_SIZE];
        header.encode(&mut head).expect("fits");
        mem.write_slice(&head, GuestAddress(MAILBOX_ADDR)).unwrap();
        mem.write_slice(&payload, GuestAddress(MAILBOX_ADDR + HEADER_SIZE as u64)).unwrap();
        let mut driver = Checked::new(NoWork);
        let mut guard = ReportGuard::new(&mut driver, ReportBounds::for_memory(&mem));
        let outcome = bounded(|| hypercall::handle(&mem, 0, &mut std::io::sink(), Some(&mut guard), None));
        if let Err(e) = outcome {
            // Whatever the guest wrote, the answer is one error with a documented code.
            prop_assert!([2, 101, 103].contains(&e.exit_code()), "{e}");
        }
    }

    #[test]
    fn any_page_tables_and_region_lists_are_checked_within_bounds(
        entries in proptest::collection::vec((0usize..512, 0u64..6, any::<u16>()), 0..512),
        regions in proptest::collection::vec((edgy_u64(), edgy_u64(), 0u32..16), 0..64),
        first in edgy_u64(),
        total in edgy_u64(),
    ) {
        // Tables in frames 1..=5 pointing into each other (or anywhere) with random flags.
        let mem = memory();
        for (i, (index, target, flags)) in entries.iter().enumerate() {
            let table = 0x1000 * (1 + i as u64 % 5);
            let entry = (target * 0x1000) | u64::from(*flags & 0x1ff) | 1;
            mem.write_obj(entry, GuestAddress(table + 8 * *index as u64)).unwrap();
        }
        let records: Vec<RegionRecord> = regions
            .iter()
            .map(|&(base, size, access)| RegionRecord {
                base,
                size,
                access,
                backed: 1,
                object: 0,
                name: RegionRecord::name_field("anon"),
            })
            .collect();
        let mut views = Vec::new();
        let chunk = SnapshotChunk { space: 1, cr3: 0x1000, first, total, regions: &records };
        let collected = SpaceSnapshot::collect(&mut views, chunk);
        let view = views.pop().unwrap_or(SpaceSnapshot {
            space: 1,
            cr3: 0x1000,
            reported_count: records.len() as u64,
            regions: records.clone(),
        });
        prop_assert!(collected.is_ok() || views.is_empty());
        let kernel = SpaceSnapshot { space: u32::MAX, cr3: 0x2000, reported_count: 0, regions: Vec::new() };
        let findings = bounded(|| check(&mem, &kernel, &[view], &Default::default()));
        prop_assert!(findings.len() < 64 * 16, "{} findings", findings.len());
    }
}
