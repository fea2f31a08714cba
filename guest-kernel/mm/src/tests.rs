//! Unit tests of the MM library on the test machine: splitting and rollback, demand paging,
//! frame reuse, the flushes each change owes the TLB, and sharing: fork, copy-on-write and
//! shared memory.

use crate::test_machine::{boot_info, Event, TestMachine, BOOT_PML4};
use crate::{Bug, Cpu, MemoryManager, PhysicalFrame, SeededBugs};
use shared_mm::abi::access_bits::{READ, SHARED, USER, WRITE};
use shared_mm::abi::{FaultKind, FrameRefs, Op, OpResult, RegionRecord, Status};
use shared_mm::pte::PageTableFlags;

const URW: u32 = USER | READ | WRITE;
const BASE: u64 = 0x40_0000;
const PAGE: u64 = 4096;

/// The MM with the one CPU a test drives it on.
pub(crate) struct TestMm {
    pub mm: MemoryManager<TestMachine>,
    pub cpu: Cpu<TestMachine>,
}

impl TestMm {
    pub fn execute(&mut self, op: Op) -> OpResult {
        self.mm.execute(&mut self.cpu, op)
    }

    pub fn machine(&self) -> &TestMachine {
        self.cpu.machine()
    }

    pub fn machine_mut(&mut self) -> &mut TestMachine {
        self.cpu.machine_mut()
    }

    pub fn free_frames(&mut self) -> usize {
        self.mm.free_frames(&mut self.cpu)
    }

    pub fn cr3(&mut self, space: u32) -> u64 {
        self.mm
            .inspect_space(&mut self.cpu, space, |s, _| s.cr3())
            .expect("space exists")
    }

    /// The frame and flags `va` maps to in `space`.
    pub fn translate(&mut self, space: u32, va: u64) -> Option<(PhysicalFrame, PageTableFlags)> {
        self.mm
            .inspect_space(&mut self.cpu, space, |s, hw| {
                s.directory().translate(va, hw.machine_ref())
            })
            .expect("space exists")
    }

    pub fn shared_frames(&mut self) -> Vec<FrameRefs> {
        self.mm.shared_frames(&mut self.cpu)
    }
}

pub(crate) fn mm_with(bugs: SeededBugs) -> TestMm {
    let mut cpu = Cpu::new(0, TestMachine::new());
    let (mm, _heap) = MemoryManager::init(&boot_info(), BOOT_PML4, &mut cpu, bugs).expect("init");
    TestMm { mm, cpu }
}

/// A fresh MM with space 1 and a 4-page read-write region at `BASE`.
pub(crate) fn mm_with_region(bugs: SeededBugs) -> TestMm {
    let mut mm = mm_with(bugs);
    assert_eq!(mm.execute(Op::CreateSpace).value, 1);
    let map = Op::MapFixed {
        space: 1,
        addr: BASE,
        size: 4 * PAGE,
        access: URW,
    };
    assert_eq!(mm.execute(map).addr, BASE);
    mm
}

fn regions(mm: &mut TestMm) -> Vec<(u64, u64, u32)> {
    mm.mm
        .export(&mut mm.cpu, 1, |export| {
            export
                .regions
                .map(|r: RegionRecord| (r.base, r.size, r.access))
                .collect()
        })
        .expect("space 1 exists")
}

fn write(mm: &mut TestMm, addr: u64, value: u64) -> OpResult {
    mm.execute(Op::TouchWrite {
        space: 1,
        addr,
        value,
    })
}

fn read(mm: &mut TestMm, addr: u64) -> OpResult {
    mm.execute(Op::TouchRead { space: 1, addr })
}

#[test]
fn demand_paging_commits_a_zeroed_frame_on_first_touch_only() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    let before = mm.free_frames();
    assert_eq!(read(&mut mm, BASE + 8).value, 0, "fresh pages read zero");
    // One data frame, plus whatever page tables the first page of the region needs.
    let after_first = mm.free_frames();
    assert!(after_first < before);
    assert_eq!(write(&mut mm, BASE + 8, 0xfeed).value, 0xfeed);
    assert_eq!(read(&mut mm, BASE + 8).value, 0xfeed);
    assert_eq!(
        mm.free_frames(),
        after_first,
        "a present page costs no new frame"
    );
    assert_eq!(write(&mut mm, BASE + PAGE, 1).value, 1);
    assert_eq!(
        mm.free_frames(),
        after_first - 1,
        "the next page costs one frame"
    );
}

#[test]
#[should_panic(expected = "3 of which no other CPU undid")]
fn a_resolved_fault_that_never_sticks_with_one_cpu_is_reported_after_three() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    mm.cpu.machine.faults_forever = true;
    read(&mut mm, BASE);
}

#[test]
fn prot_none_keeps_the_data_and_faults_until_restored() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    write(&mut mm, BASE, 0x1234);
    let protect = |access| Op::Protect {
        space: 1,
        addr: BASE,
        size: PAGE,
        access,
    };
    assert_eq!(mm.execute(protect(USER)).status, Status::Ok);
    let fault = read(&mut mm, BASE);
    assert_eq!(
        (fault.status, fault.fault),
        (Status::Faulted, FaultKind::SegvAccess)
    );
    assert_eq!(mm.execute(protect(URW)).status, Status::Ok);
    assert_eq!(read(&mut mm, BASE).value, 0x1234);
}

#[test]
fn partial_unmap_splits_frees_the_cut_and_keeps_the_rest() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    for page in 0..4 {
        write(&mut mm, BASE + page * PAGE, page + 1);
    }
    let before = mm.free_frames();
    let unmap = Op::Unmap {
        space: 1,
        addr: BASE + PAGE,
        size: 2 * PAGE,
    };
    assert_eq!(mm.execute(unmap).status, Status::Ok);
    assert_eq!(
        regions(&mut mm),
        [(BASE, PAGE, URW), (BASE + 3 * PAGE, PAGE, URW)]
    );
    assert_eq!(
        mm.free_frames(),
        before + 2,
        "exactly the two cut pages are freed"
    );
    assert_eq!(read(&mut mm, BASE).value, 1);
    assert_eq!(read(&mut mm, BASE + 3 * PAGE).value, 4);
    let gone = read(&mut mm, BASE + PAGE);
    assert_eq!(
        (gone.status, gone.fault),
        (Status::Faulted, FaultKind::SegvNoRegion)
    );
}

#[test]
fn protect_over_a_hole_changes_nothing() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    write(&mut mm, BASE, 7);
    let before = regions(&mut mm);
    let protect = Op::Protect {
        space: 1,
        addr: BASE + 3 * PAGE,
        size: 2 * PAGE,
        access: USER | READ,
    };
    assert_eq!(mm.execute(protect).status, Status::NotMapped);
    assert_eq!(regions(&mut mm), before, "the region tree is as it was");
    assert_eq!(
        write(&mut mm, BASE, 8).value,
        8,
        "the page is still writable"
    );
}

#[test]
fn protect_splits_into_three_pieces_with_their_data() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    for page in 0..4 {
        write(&mut mm, BASE + page * PAGE, 10 + page);
    }
    let protect = Op::Protect {
        space: 1,
        addr: BASE + PAGE,
        size: PAGE,
        access: USER | READ,
    };
    assert_eq!(mm.execute(protect).status, Status::Ok);
    assert_eq!(
        regions(&mut mm),
        [
            (BASE, PAGE, URW),
            (BASE + PAGE, PAGE, USER | READ),
            (BASE + 2 * PAGE, 2 * PAGE, URW)
        ]
    );
    let denied = write(&mut mm, BASE + PAGE, 0);
    assert_eq!(
        (denied.status, denied.fault),
        (Status::Faulted, FaultKind::SegvAccess)
    );
    for page in 0..4 {
        assert_eq!(read(&mut mm, BASE + page * PAGE).value, 10 + page);
    }
}

#[test]
fn running_out_of_frames_leaves_the_space_as_it_was() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    let big = Op::MapFixed {
        space: 1,
        addr: 0x1000_0000,
        size: 0x1000_0000,
        access: URW,
    };
    assert_eq!(mm.execute(big).status, Status::Ok);
    let mut page = 0x1000_0000;
    let oom = loop {
        let r = write(&mut mm, page, 1);
        if r.status != Status::Ok {
            break r;
        }
        page += PAGE;
    };
    assert_eq!(oom.status, Status::OutOfMemory);
    let free = mm.free_frames();
    let fault = read(&mut mm, page);
    assert_eq!(
        fault.status,
        Status::OutOfMemory,
        "the failed page was not committed"
    );
    assert_eq!(mm.free_frames(), free);
    let unmap = Op::Unmap {
        space: 1,
        addr: 0x1000_0000,
        size: 0x1000_0000,
    };
    assert_eq!(mm.execute(unmap).status, Status::Ok);
    assert_eq!(
        read(&mut mm, BASE).value,
        0,
        "the MM works again once frames are back"
    );
}

#[test]
fn a_freed_frame_backs_the_next_page_and_reads_zero() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    write(&mut mm, BASE, 0xdead);
    write(&mut mm, BASE + PAGE, 0xbeef);
    let unmap = Op::Unmap {
        space: 1,
        addr: BASE,
        size: PAGE,
    };
    mm.execute(unmap);
    let freed: Vec<u64> = mm
        .machine()
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Freed(f) => Some(*f),
            _ => None,
        })
        .collect();
    assert_eq!(freed.len(), 1);
    assert_eq!(
        read(&mut mm, BASE + 2 * PAGE).value,
        0,
        "the reused frame was zeroed"
    );
    let (frame, _) = mm.translate(1, BASE + 2 * PAGE).expect("mapped");
    assert_eq!(
        frame.0, freed[0],
        "the lowest free frame, just freed, is reused"
    );
}

/// The flushes issued between the last activation and now.
fn flushes(mm: &TestMm) -> Vec<u64> {
    mm.machine()
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Flush(va) => Some(*va),
            _ => None,
        })
        .collect()
}

#[test]
fn unmap_flushes_every_cleared_page_before_freeing_its_frame() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    write(&mut mm, BASE, 1);
    write(&mut mm, BASE + 2 * PAGE, 2);
    mm.machine_mut().events.clear();
    let unmap = Op::Unmap {
        space: 1,
        addr: BASE,
        size: 4 * PAGE,
    };
    mm.execute(unmap);
    let events = &mm.machine().events;
    let flush_at = |va| events.iter().position(|e| *e == Event::Flush(va));
    let first_free = events.iter().position(|e| matches!(e, Event::Freed(_)));
    assert!(
        flush_at(BASE).is_some() && flush_at(BASE + 2 * PAGE).is_some(),
        "{events:?}"
    );
    assert!(first_free > flush_at(BASE + 2 * PAGE), "{events:?}");
}

#[test]
fn a_seeded_bug_switched_on_at_run_time_is_planted() {
    let mut mm = mm_with_region(SeededBugs::NONE.with(Bug::NoTlbFlush));
    write(&mut mm, BASE, 1);
    mm.machine_mut().events.clear();
    let unmap = Op::Unmap {
        space: 1,
        addr: BASE,
        size: PAGE,
    };
    mm.execute(unmap);
    assert!(
        flushes(&mm).is_empty(),
        "bug-no-tlb-flush: unmap skipped invlpg"
    );
    assert!(
        SeededBugs::compiled().iter().next().is_none(),
        "the test build plants nothing"
    );
}

#[test]
fn every_seeded_bug_has_a_feature_name_that_parses_back() {
    for bug in Bug::ALL {
        assert_eq!(Bug::from_feature(bug.feature()), Some(bug));
    }
    assert_eq!(Bug::from_feature("bug-nonexistent"), None);
}

/// The frame and writability of `va` in `space`'s page tables.
fn leaf(mm: &mut TestMm, space: u32, va: u64) -> Option<(u64, bool)> {
    let (frame, flags) = mm.translate(space, va)?;
    Some((frame.0, flags.contains(PageTableFlags::WRITABLE)))
}

fn refs(mm: &mut TestMm) -> Vec<(u64, u32)> {
    mm.shared_frames()
        .iter()
        .map(|r| (r.frame, r.refs))
        .collect()
}

#[test]
fn fork_shares_frames_read_only_and_a_write_copies_once() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    write(&mut mm, BASE, 0x11);
    let (frame, _) = leaf(&mut mm, 1, BASE).expect("written");
    mm.machine_mut().events.clear();
    assert_eq!(mm.execute(Op::Fork { space: 1 }).value, 2);
    assert_eq!(
        leaf(&mut mm, 1, BASE),
        Some((frame, false)),
        "parent read-only"
    );
    assert!(
        flushes(&mm).contains(&BASE),
        "the parent's W entry is flushed"
    );
    assert_eq!(refs(&mut mm), [(frame, 2)]);
    let child_read = Op::TouchRead {
        space: 2,
        addr: BASE,
    };
    assert_eq!(
        mm.execute(child_read).value,
        0x11,
        "the child sees the data"
    );
    assert_eq!(
        leaf(&mut mm, 2, BASE),
        Some((frame, false)),
        "one frame, read-only"
    );
    // The child's write copies; the parent keeps its data and, as the last holder, its frame.
    let child_write = Op::TouchWrite {
        space: 2,
        addr: BASE,
        value: 0x22,
    };
    assert_eq!(mm.execute(child_write).value, 0x22);
    let (copy, writable) = leaf(&mut mm, 2, BASE).expect("mapped");
    assert!(copy != frame && writable);
    assert!(refs(&mut mm).is_empty(), "{:?}", refs(&mut mm));
    assert_eq!(read(&mut mm, BASE).value, 0x11);
    let free = mm.free_frames();
    assert_eq!(write(&mut mm, BASE, 0x33).value, 0x33);
    assert_eq!(
        leaf(&mut mm, 1, BASE),
        Some((frame, true)),
        "reused, not copied"
    );
    assert_eq!(mm.free_frames(), free);
}

#[test]
fn shared_memory_is_one_frame_for_both_and_lives_until_the_last_unmap() {
    let mut mm = mm_with(SeededBugs::NONE);
    assert_eq!(mm.execute(Op::CreateSpace).value, 1);
    let map = Op::MapFixed {
        space: 1,
        addr: BASE,
        size: PAGE,
        access: URW | SHARED,
    };
    assert_eq!(mm.execute(map).addr, BASE);
    write(&mut mm, BASE, 0x44);
    assert_eq!(mm.execute(Op::Fork { space: 1 }).value, 2);
    let child_write = Op::TouchWrite {
        space: 2,
        addr: BASE,
        value: 0x55,
    };
    assert_eq!(mm.execute(child_write).value, 0x55);
    assert_eq!(read(&mut mm, BASE).value, 0x55, "the parent sees the write");
    let (frame, writable) = leaf(&mut mm, 1, BASE).expect("mapped");
    assert!(writable, "shared memory is never copy-on-write");
    assert_eq!(leaf(&mut mm, 2, BASE), Some((frame, true)));
    mm.machine_mut().events.clear();
    let unmap = Op::Unmap {
        space: 1,
        addr: BASE,
        size: PAGE,
    };
    assert_eq!(mm.execute(unmap).status, Status::Ok);
    let freed = |mm: &TestMm| mm.machine().events.contains(&Event::Freed(frame));
    assert!(!freed(&mm), "the child still maps it");
    let child_read = Op::TouchRead {
        space: 2,
        addr: BASE,
    };
    assert_eq!(mm.execute(child_read).value, 0x55);
    assert_eq!(mm.execute(Op::DestroySpace { space: 2 }).status, Status::Ok);
    assert!(freed(&mm), "the last reference is gone");
}

#[test]
fn protect_cannot_add_or_drop_sharing() {
    let mut mm = mm_with_region(SeededBugs::NONE);
    let protect = |access| Op::Protect {
        space: 1,
        addr: BASE,
        size: PAGE,
        access,
    };
    assert_eq!(mm.execute(protect(URW | SHARED)).status, Status::BadAccess);
    assert_eq!(regions(&mut mm), [(BASE, 4 * PAGE, URW)], "unchanged");
}

#[test]
fn seeded_sharing_bugs_are_planted() {
    let forked = |bug| {
        let mut mm = mm_with_region(SeededBugs::NONE.with(bug));
        write(&mut mm, BASE, 1);
        mm.machine_mut().events.clear();
        mm.execute(Op::Fork { space: 1 });
        mm
    };
    let mut mm = forked(Bug::ForkParentWritable);
    assert_eq!(leaf(&mut mm, 1, BASE).map(|(_, w)| w), Some(true));
    let mut mm = forked(Bug::ForkNoFlush);
    assert_eq!(leaf(&mut mm, 1, BASE).map(|(_, w)| w), Some(false));
    assert!(flushes(&mm).is_empty(), "{:?}", mm.machine().events);
    let mut mm = forked(Bug::CowNoCopy);
    let (frame, _) = leaf(&mut mm, 1, BASE).expect("mapped");
    write(&mut mm, BASE, 2);
    assert_eq!(leaf(&mut mm, 1, BASE), Some((frame, true)), "no copy made");
    let mut mm = forked(Bug::RefcountLeak);
    write(&mut mm, BASE, 2);
    assert_eq!(refs(&mut mm).len(), 1, "the old frame keeps a reference");
}

#[test]
fn the_kernel_end_off_by_one_hands_out_the_images_last_frame_after_the_frames_below() {
    use crate::frame_allocator::FrameAllocator;
    use shared_mm::boot_info::LOW_RESERVED_END;
    let info = boot_info();
    let below = (info.kernel_phys_start - LOW_RESERVED_END) / PAGE;
    let last_of_image = info.kernel_phys_end - PAGE;
    let handed_out = |bugs| {
        let mut frames = FrameAllocator::new(&info, bugs);
        (0..=below)
            .map(|_| frames.allocate().expect("free frames").0)
            .collect::<Vec<u64>>()
    };
    let planted = handed_out(SeededBugs::NONE.with(Bug::KernelEndOffByOne));
    assert!(!planted[..below as usize].contains(&last_of_image));
    assert_eq!(
        planted[below as usize], last_of_image,
        "the next frame is the image's"
    );
    let correct = handed_out(SeededBugs::NONE);
    assert_eq!(
        correct[below as usize], info.kernel_phys_end,
        "the first after the image"
    );
}

#[test]
fn destroying_the_active_space_switches_away_first_unless_the_bug_is_planted() {
    for (bugs, switched) in [
        (SeededBugs::NONE, true),
        (SeededBugs::NONE.with(Bug::DestroyActiveSpace), false),
    ] {
        let mut mm = mm_with_region(bugs);
        write(&mut mm, BASE, 1);
        let cr3 = mm.cr3(1);
        mm.machine_mut().events.clear();
        mm.execute(Op::DestroySpace { space: 1 });
        let events = &mm.machine().events;
        let freed = events.iter().position(|e| *e == Event::Freed(cr3));
        let away = events.iter().position(|e| matches!(e, Event::Activate(_)));
        assert!(freed.is_some(), "{events:?}");
        assert_eq!(
            away.is_some_and(|a| Some(a) < freed),
            switched,
            "{events:?}"
        );
    }
}

#[test]
fn check_tree_reports_the_trees_own_invariants_and_the_stale_summary_bug() {
    let pages = |mm: &mut TestMm| {
        // A one-page hole, then the big hole below 0x1000_0000 shrunk by a page: see
        // shared-mm's seeded_bug tests.
        for addr in [0x2000, 0x1000_0000, 0x3000] {
            let map = Op::MapFixed {
                space: 1,
                addr,
                size: PAGE,
                access: URW,
            };
            assert_eq!(mm.execute(map).addr, addr);
        }
        mm.execute(Op::CheckTree { space: 1 })
    };
    let empty_space = |bugs| {
        let mut mm = mm_with(bugs);
        assert_eq!(mm.execute(Op::CreateSpace).value, 1);
        mm
    };
    let mut correct = empty_space(SeededBugs::NONE);
    assert_eq!(pages(&mut correct), OpResult::ok());
    let kernel = shared_mm::abi::KERNEL_SPACE;
    assert_eq!(
        correct.execute(Op::CheckTree { space: kernel }),
        OpResult::ok()
    );
    let missing = correct.execute(Op::CheckTree { space: 9 });
    assert_eq!(missing.status, Status::NoSuchSpace);
    let mut planted = empty_space(SeededBugs::NONE.with(Bug::StaleGapSummary));
    let found = pages(&mut planted);
    assert_eq!((found.status, found.addr), (Status::Ok, 0x1000));
    let name = shared_mm::region_tree::InvariantViolation::kind_name(found.value);
    assert_eq!(name, Some("a gap-index subtree summary is stale"));
}

#[test]
fn every_long_loop_reports_progress_per_page() {
    // A watchdog takes a slow guest for a hung one unless its long loops report progress:
    // each op over many pages must report at least one step per page.
    const PAGES: u64 = 64;
    let mut mm = mm_with(SeededBugs::NONE);
    assert_eq!(mm.execute(Op::CreateSpace).value, 1);
    let range = |op: fn(u64, u64) -> Op| op(BASE, PAGES * PAGE);
    let ops = [
        range(|addr, size| Op::MapFixed {
            space: 1,
            addr,
            size,
            access: URW,
        }),
        range(|addr, size| Op::Populate {
            space: 1,
            addr,
            size,
        }),
        Op::Fork { space: 1 },
        range(|addr, size| Op::Protect {
            space: 1,
            addr,
            size,
            access: USER | READ,
        }),
        range(|addr, size| Op::Unmap {
            space: 1,
            addr,
            size,
        }),
        Op::DestroySpace { space: 2 },
    ];
    let mut steps = Vec::new();
    for op in ops {
        let before = mm.machine().progress.get();
        assert_eq!(mm.execute(op).status, Status::Ok, "{op:?}");
        steps.push(mm.machine().progress.get() - before);
    }
    assert!(steps[1..].iter().all(|&n| n >= PAGES), "{steps:?}");
}

/// A space whose only holes are `[BASE, BASE + 8 pages)` and, above a one-page region,
/// `[BASE + 9 pages, BASE + 10 pages)`: everything else is mapped.
fn mm_with_two_holes(bugs: SeededBugs) -> TestMm {
    use shared_mm::abi::{USER_SPACE_BASE, USER_SPACE_END};
    let mut mm = mm_with(bugs);
    assert_eq!(mm.execute(Op::CreateSpace).value, 1);
    let fills = [
        (USER_SPACE_BASE, BASE - USER_SPACE_BASE),
        (BASE + 8 * PAGE, PAGE),
        (BASE + 10 * PAGE, USER_SPACE_END - BASE - 10 * PAGE),
    ];
    for (addr, size) in fills {
        let map = Op::MapFixed {
            space: 1,
            addr,
            size,
            access: USER | READ,
        };
        assert_eq!(mm.execute(map).addr, addr);
    }
    mm
}

#[test]
fn seeded_placement_bugs_are_planted() {
    let anywhere = Op::MapAnywhere {
        space: 1,
        size: PAGE,
        align: PAGE,
        access: URW,
    };
    let mut mm = mm_with_two_holes(SeededBugs::NONE);
    assert_eq!(mm.execute(anywhere).addr, BASE + 9 * PAGE, "best fit");
    let mut mm = mm_with_two_holes(SeededBugs::NONE.with(Bug::AnywhereFirstFit));
    assert_eq!(mm.execute(anywhere).addr, BASE, "first fit");

    // Draws in the 8-page hole (the other is taken first): the low half only with the bug.
    let high_half_draws = |bugs| {
        let mut mm = mm_with_two_holes(bugs);
        mm.execute(Op::MapFixed {
            space: 1,
            addr: BASE + 9 * PAGE,
            size: PAGE,
            access: URW,
        });
        let randomized = Op::MapRandomized {
            space: 1,
            size: PAGE,
            align: PAGE,
            access: URW,
        };
        let unmap = Op::Unmap {
            space: 1,
            addr: BASE,
            size: 8 * PAGE,
        };
        (0..64)
            .filter(|_| {
                let at = mm.execute(randomized).addr;
                assert_eq!(mm.execute(unmap).status, Status::Ok);
                assert!((BASE..BASE + 8 * PAGE).contains(&at), "{at:#x}");
                at >= BASE + 4 * PAGE
            })
            .count()
    };
    assert!(high_half_draws(SeededBugs::NONE) > 0);
    assert_eq!(high_half_draws(SeededBugs::NONE.with(Bug::AslrLowHalf)), 0);
}
