//! Unit tests of the MM on several CPUs of the test machine: who a change shoots down, that
//! frames and tables are freed after the shootdown, the lazy CPUs, the seeded SMP bugs, the
//! fault path's second look at its region, and real host threads running operations at once.

use crate::shootdown::{FlushScope, MAX_FLUSH_PAGES};
use crate::test_machine::{boot_info, Event, TestMachine, BOOT_PML4};
use crate::{Bug, Cpu, MemoryManager, PhysicalFrame, SeededBugs};
use shared_mm::abi::access_bits::{READ, SHARED, USER, WRITE};
use shared_mm::abi::{FaultKind, Op, OpResult, Status};
use shared_mm::boot_info::BootInfo;
use shared_mm::smp::CpuSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const URW: u32 = USER | READ | WRITE;
const BASE: u64 = 0x40_0000;
const PAGE: u64 = 4096;

/// One MM and `n` CPUs, driven from one thread, taking turns.
struct Smp {
    mm: Arc<MemoryManager<TestMachine>>,
    cpus: Vec<Cpu<TestMachine>>,
}

fn smp(n: u32, bugs: SeededBugs) -> Smp {
    let mut cpu0 = Cpu::new(0, TestMachine::new());
    let info = BootInfo {
        cpu_count: u64::from(n),
        ..boot_info()
    };
    let (mm, _heap) = MemoryManager::init(&info, BOOT_PML4, &mut cpu0, bugs).expect("init");
    let siblings: Vec<TestMachine> = (1..n).map(|i| cpu0.machine().sibling(i)).collect();
    let mut cpus = vec![cpu0];
    cpus.extend((1..).zip(siblings).map(|(i, m)| mm.cpu(i, m)));
    Smp {
        mm: Arc::new(mm),
        cpus,
    }
}

impl Smp {
    fn on(&mut self, cpu: usize, op: Op) -> OpResult {
        self.mm.execute(&mut self.cpus[cpu], op)
    }

    /// CPU `cpu` serves the shootdowns sent to it.
    fn serve(&mut self, cpu: usize) {
        let mm = Arc::clone(&self.mm);
        self.cpus[cpu].machine_mut().serve_with(&mm);
    }

    fn events(&self, cpu: usize) -> &[Event] {
        &self.cpus[cpu].machine().events
    }

    fn clear(&mut self) {
        self.cpus
            .iter_mut()
            .for_each(|c| c.machine_mut().events.clear());
    }

    fn shootdowns(&self, cpu: usize) -> Vec<(CpuSet, FlushScope, Vec<u64>)> {
        self.events(cpu)
            .iter()
            .filter_map(|e| match e {
                Event::Shootdown(targets, r) => Some((*targets, r.scope(), r.listed().to_vec())),
                _ => None,
            })
            .collect()
    }

    fn frame(&mut self, space: u32, va: u64) -> PhysicalFrame {
        self.mm
            .inspect_space(&mut self.cpus[0], space, |s, hw| {
                s.directory().translate(va, hw.machine_ref())
            })
            .flatten()
            .expect("mapped")
            .0
    }

    fn cpus_of(&mut self, space: u32) -> CpuSet {
        self.mm
            .inspect_space(&mut self.cpus[0], space, |s, _| s.cpus())
            .expect("space exists")
    }
}

fn map(space: u32, addr: u64, pages: u64, access: u32) -> Op {
    Op::MapFixed {
        space,
        addr,
        size: pages * PAGE,
        access,
    }
}

fn write(space: u32, addr: u64, value: u64) -> Op {
    Op::TouchWrite { space, addr, value }
}

fn unmap(space: u32, addr: u64, pages: u64) -> Op {
    Op::Unmap {
        space,
        addr,
        size: pages * PAGE,
    }
}

/// Space 1 with `pages` read-write pages at `BASE`, the first written by CPU 1.
fn space_run_by_cpu1(bugs: SeededBugs, pages: u64) -> Smp {
    let mut smp = smp(2, bugs);
    assert_eq!(smp.on(0, Op::CreateSpace).value, 1);
    assert_eq!(smp.on(0, map(1, BASE, pages, URW)).addr, BASE);
    assert_eq!(smp.on(1, write(1, BASE, 7)).value, 7);
    smp
}

#[test]
fn unmap_shoots_down_the_other_cpus_of_the_space_before_freeing_its_frames() {
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, 4);
    assert_eq!(smp.cpus_of(1), CpuSet::from_bits(0b11));
    let frame = smp.frame(1, BASE);
    smp.clear();
    assert_eq!(smp.on(0, unmap(1, BASE, 1)).status, Status::Ok);
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::Pages(1), vec![BASE])]
    );
    let events = smp.events(0);
    let sent = events
        .iter()
        .position(|e| matches!(e, Event::Shootdown(..)));
    let freed = events.iter().position(|e| *e == Event::Freed(frame.0));
    assert!(sent.is_some() && sent < freed, "{events:?}");
    smp.serve(1);
    assert_eq!(smp.events(1), [Event::Flush(BASE), Event::Served(0)]);
}

#[test]
fn one_round_per_operation_and_a_full_flush_past_the_ceiling() {
    let pages = MAX_FLUSH_PAGES as u64 + 8;
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, pages);
    for page in 1..4 {
        smp.on(0, write(1, BASE + page * PAGE, page));
    }
    smp.clear();
    smp.on(0, unmap(1, BASE, 4));
    let listed: Vec<u64> = (0..4).map(|p| BASE + p * PAGE).collect();
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::Pages(4), listed)]
    );
    for page in 4..pages {
        smp.on(1, write(1, BASE + page * PAGE, page));
    }
    smp.clear();
    smp.on(0, unmap(1, BASE, pages));
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::All, vec![])]
    );
    smp.serve(1);
    assert!(
        smp.events(1).contains(&Event::FlushAll),
        "{:?}",
        smp.events(1)
    );
}

#[test]
fn a_cpu_that_loaded_another_space_leaves_the_set_and_gets_no_ipi() {
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, 2);
    assert_eq!(smp.on(0, Op::CreateSpace).value, 2);
    smp.on(0, map(2, BASE, 1, URW));
    smp.on(1, write(2, BASE, 1));
    smp.clear();
    smp.on(0, unmap(1, BASE, 1));
    assert!(smp.shootdowns(0).is_empty(), "{:?}", smp.events(0));
    assert_eq!(smp.cpus_of(1), CpuSet::from_bits(0b01));
    assert_eq!(smp.cpus_of(2), CpuSet::from_bits(0b11));
}

#[test]
fn an_idle_cpu_with_the_space_loaded_is_lazy_and_still_shot_down() {
    // CPU 1's operation ended; it still has space 1 loaded.
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, 2);
    smp.clear();
    smp.on(
        0,
        Op::Protect {
            space: 1,
            addr: BASE,
            size: PAGE,
            access: USER | READ,
        },
    );
    assert_eq!(smp.shootdowns(0).len(), 1, "W lost: a shootdown");
    smp.clear();
    smp.on(
        0,
        Op::Protect {
            space: 1,
            addr: BASE,
            size: PAGE,
            access: URW,
        },
    );
    assert!(smp.shootdowns(0).is_empty(), "an upgrade needs none");
    let lazy = space_run_by_cpu1(SeededBugs::NONE.with(Bug::ShootdownMissesLazy), 2);
    let mut lazy = lazy;
    lazy.clear();
    lazy.on(0, unmap(1, BASE, 1));
    assert!(lazy.shootdowns(0).is_empty(), "the seeded bug skips it");
}

#[test]
fn destroy_makes_a_cpu_with_the_space_loaded_load_the_kernels_tables() {
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, 2);
    let root = smp.mm.cpu_table().loaded(1);
    smp.clear();
    smp.on(0, Op::DestroySpace { space: 1 });
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::Destroy, vec![])]
    );
    let events = smp.events(0);
    let sent = events
        .iter()
        .position(|e| matches!(e, Event::Shootdown(..)));
    let root_freed = events.iter().position(|e| *e == Event::Freed(root));
    assert!(sent.is_some() && sent < root_freed, "{events:?}");
    smp.serve(1);
    let kernel = smp.mm.kernel_cr3();
    assert_eq!(smp.events(1), [Event::Activate(kernel), Event::Served(0)]);
    assert_eq!(smp.mm.cpu_table().loaded(1), kernel);
}

#[test]
fn fork_and_a_copy_on_write_break_shoot_down_the_parents_other_cpus() {
    let mut smp = space_run_by_cpu1(SeededBugs::NONE, 1);
    smp.clear();
    assert_eq!(smp.on(0, Op::Fork { space: 1 }).value, 2);
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::Pages(1), vec![BASE])]
    );
    let old = smp.frame(1, BASE);
    smp.clear();
    assert_eq!(smp.on(0, write(1, BASE, 9)).value, 9);
    assert_ne!(smp.frame(1, BASE), old, "copied");
    assert_eq!(
        smp.shootdowns(0),
        [(CpuSet::from_bits(0b10), FlushScope::Pages(1), vec![BASE])]
    );
}

#[test]
fn the_seeded_shootdown_bugs_are_planted() {
    let mut local = space_run_by_cpu1(SeededBugs::NONE.with(Bug::ShootdownLocalOnly), 1);
    local.clear();
    local.on(0, unmap(1, BASE, 1));
    assert!(local.shootdowns(0).is_empty());
    let mut early = space_run_by_cpu1(SeededBugs::NONE.with(Bug::FreeBeforeAck), 1);
    let frame = early.frame(1, BASE);
    early.clear();
    early.on(0, unmap(1, BASE, 1));
    let events = early.events(0);
    let sent = events
        .iter()
        .position(|e| matches!(e, Event::Shootdown(..)));
    let freed = events.iter().position(|e| *e == Event::Freed(frame.0));
    assert!(sent.is_some() && freed < sent, "{events:?}");
}

/// Space 1 with a shared page that CPU 0 wrote (committed under the object's lock), then
/// unmapped (its last handle released).
fn shared_page_released(bugs: SeededBugs) -> Smp {
    let mut smp = smp(1, bugs);
    smp.on(0, Op::CreateSpace);
    smp.on(0, map(1, BASE, 1, URW | SHARED));
    smp.on(0, write(1, BASE, 3));
    smp.on(0, unmap(1, BASE, 1));
    smp
}

#[test]
fn the_lock_order_checker_names_both_locks_and_both_paths_of_the_seeded_bug() {
    let correct = shared_page_released(SeededBugs::NONE);
    assert!(correct.cpus[0].machine().violations.is_empty());
    let planted = shared_page_released(SeededBugs::NONE.with(Bug::LockOrder));
    let violations = &planted.cpus[0].machine().violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    let text = violations[0].to_string();
    for part in [
        "cpu 0 takes object while holding frames (in unmap at ",
        "but cpu 0 took frames while holding object (in touch-write at ",
    ] {
        assert!(text.contains(part), "{text}");
    }
}

/// CPU 0 writes a fresh page of space 1 while CPU 1 unmaps its region between the fault's
/// looks at the space (if it takes two).
fn fault_races_unmap(bugs: SeededBugs) -> (OpResult, Smp) {
    let mut smp = smp(2, bugs);
    smp.on(0, Op::CreateSpace);
    smp.on(0, map(1, BASE, 2, URW));
    smp.on(0, write(1, BASE + PAGE, 1)); // The page table exists: no frame for it below.
    let (mm, mut cpu1) = (Arc::clone(&smp.mm), smp.cpus.pop().expect("cpu 1"));
    smp.cpus[0]
        .machine_mut()
        .after_user_release(Box::new(move || {
            assert_eq!(mm.execute(&mut cpu1, unmap(1, BASE, 2)).status, Status::Ok);
        }));
    (smp.on(0, write(1, BASE, 5)), smp)
}

#[test]
fn the_fault_path_looks_its_region_up_again_under_the_lock() {
    let (result, mut smp) = fault_races_unmap(SeededBugs::NONE);
    assert_eq!(
        (result.status, result.fault),
        (Status::Faulted, FaultKind::SegvNoRegion)
    );
    let present = smp.mm.inspect_space(&mut smp.cpus[0], 1, |s, hw| {
        s.directory().translate(BASE, hw.machine_ref())
    });
    assert_eq!(present, Some(None), "no PTE in the hole");
    let (result, mut smp) = fault_races_unmap(SeededBugs::NONE.with(Bug::FaultNoRecheck));
    assert_eq!(
        result.status,
        Status::Ok,
        "the seeded bug maps the page anyway"
    );
    let present = smp.mm.inspect_space(&mut smp.cpus[0], 1, |s, hw| {
        s.directory().translate(BASE, hw.machine_ref())
    });
    assert!(present.flatten().is_some(), "a PTE in a hole");
}

/// A tiny deterministic random source for the threads.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One thread's random operation on the shared spaces 1 to 4.
fn random_op(rng: &mut Rng) -> Op {
    let space = 1 + rng.below(4) as u32;
    let addr = BASE + rng.below(16) * PAGE;
    match rng.below(10) {
        0 => map(space, addr, 1 + rng.below(3), URW),
        1 => map(space, addr, 1, URW | SHARED),
        2 => unmap(space, addr, 1 + rng.below(4)),
        3 => Op::Protect {
            space,
            addr,
            size: PAGE,
            access: if rng.below(2) == 0 { USER | READ } else { URW },
        },
        4 => Op::Populate {
            space,
            addr,
            size: PAGE,
        },
        5..=7 => write(space, addr, rng.below(1000)),
        _ => Op::TouchRead { space, addr },
    }
}

#[test]
fn host_threads_run_operations_on_shared_spaces_at_once_and_leave_nothing_behind() {
    const CPUS: u32 = 4;
    let mut smp = smp(CPUS, SeededBugs::NONE);
    smp.cpus[0].machine().attach(Arc::clone(&smp.mm));
    let baseline = smp.mm.free_frames(&mut smp.cpus[0]);
    for space in 1..=4 {
        assert_eq!(smp.on(0, Op::CreateSpace).value, space);
    }
    let (done, finished) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mm = &smp.mm;
    std::thread::scope(|scope| {
        for (seed, cpu) in smp.cpus.iter_mut().enumerate() {
            let (done, finished) = (&done, &finished);
            scope.spawn(move || {
                let mut rng = Rng(seed as u64 + 1);
                for round in 0..300 {
                    let result = mm.execute(cpu, random_op(&mut rng));
                    assert_ne!(result.status, Status::BadOp, "round {round}");
                    if round % 50 == 0 {
                        // A fork, destroyed at once: the other CPUs' TLBs of the parent are
                        // shot down.
                        let child = mm.execute(cpu, Op::Fork { space: 1 }).value as u32;
                        mm.execute(cpu, Op::DestroySpace { space: child });
                    }
                }
                done.fetch_add(1, Ordering::AcqRel);
                // Every CPU serves shootdowns until the last operation: CPU 0's destroys below
                // shoot down the others, lazily still on the spaces.
                let last = || match seed {
                    0 => done.load(Ordering::Acquire) == CPUS as usize,
                    _ => finished.load(Ordering::Acquire),
                };
                while !last() {
                    cpu.machine_mut().serve();
                    std::thread::yield_now();
                }
                if seed == 0 {
                    destroy_all(mm, cpu);
                    finished.store(true, Ordering::Release);
                }
            });
        }
    });
    assert_eq!(
        smp.mm.free_frames(&mut smp.cpus[0]),
        baseline,
        "every frame came back"
    );
    let served = |cpu: &Cpu<TestMachine>| {
        let events = &cpu.machine().events;
        events
            .iter()
            .filter(|e| matches!(e, Event::Served(_)))
            .count()
    };
    for cpu in &smp.cpus {
        assert!(
            cpu.machine().violations.is_empty(),
            "{:?}",
            cpu.machine().violations
        );
        assert_eq!(cpu.held().count(), 0);
    }
    assert!(
        smp.cpus[1..].iter().all(|cpu| served(cpu) > 0),
        "every CPU was shot down"
    );
}

/// Checks each space's tree and destroys it.
fn destroy_all(mm: &MemoryManager<TestMachine>, cpu: &mut Cpu<TestMachine>) {
    for space in 1..=4 {
        let tree_ok = mm.inspect_space(cpu, space, |s, _| s.tree().check_invariants().is_ok());
        assert_eq!(tree_ok, Some(true));
        assert_eq!(
            mm.execute(cpu, Op::DestroySpace { space }).status,
            Status::Ok
        );
    }
}
