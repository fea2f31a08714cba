//! The guest MM through real hypercalls: the built-in self-check, and the region trees it exports.
#![forbid(unsafe_code)]

use mm_driver::GuestConfig;
use mm_fuzz::self_check::SelfCheck;
use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::KERNEL_SPACE;
use std::time::Duration;
use vmm::Vm;

fn run_self_check() -> SelfCheck {
    let config = GuestConfig {
        timeout: Some(Duration::from_secs(30)),
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config).expect("boot the default guest");
    let mut check = SelfCheck::new();
    let status = vm
        .run(&mut check)
        .unwrap_or_else(|e| panic!("guest failed: {e}\n{}", vm.console_output()));
    assert_eq!(status, 0);
    check
}

#[test]
fn every_self_check_step_gives_the_expected_result() {
    let check = run_self_check();
    assert!(
        check.failures.is_empty(),
        "failed steps:\n{}",
        check.failures.join("\n")
    );
    assert_eq!(check.checked, check.step_count());
}

#[test]
fn protect_splits_regions_and_snapshots_show_the_pieces() {
    let check = run_self_check();
    let regions = &check
        .snapshots
        .iter()
        .find(|s| s.space == 1)
        .expect("snapshot of space A")
        .regions;
    let spans: Vec<(u64, u64, u32)> = regions.iter().map(|r| (r.base, r.size, r.access)).collect();
    // Sorted and disjoint.
    assert!(
        spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
        "{spans:#x?}"
    );
    // The 4-page fixed mapping at 0x400000 was split by protect into three pieces.
    let urw = USER | READ | WRITE;
    for piece in [
        (0x40_0000, 0x1000, urw),
        (0x40_1000, 0x1000, USER | READ),
        (0x40_2000, 0x2000, urw),
    ] {
        assert!(
            spans.contains(&piece),
            "missing piece {piece:#x?} in {spans:#x?}"
        );
    }
    assert!(regions
        .iter()
        .all(|r| r.backed == 1 && r.name_str() == "anon"));
}

#[test]
fn kernel_tree_holds_unbacked_reservations() {
    let check = run_self_check();
    let regions = &check
        .snapshots
        .iter()
        .find(|s| s.space == KERNEL_SPACE)
        .expect("kernel snapshot")
        .regions;
    let names: Vec<&str> = regions.iter().map(|r| r.name_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in ["physmap", "kernel image", "kmalloc"] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert!(regions.iter().all(|r| r.backed == 0));
}

/// Runs a script and, at each batch boundary where space 1 exists, translates every address of
/// the next `probes` entry with the host's own page walk (the guest is paused there).
struct FrameProbe {
    script: mm_driver::driver::Script,
    probes: Vec<Vec<u64>>,
    frames: Vec<Vec<Option<u64>>>,
}

impl mm_driver::driver::Driver for FrameProbe {
    fn next_batch(
        &mut self,
        mem: &vm_memory::GuestMemoryMmap,
        results: &[shared_mm::abi::OpResult],
        spaces: &[shared_mm::abi::SpaceRecord],
    ) -> Result<Option<Vec<shared_mm::abi::Op>>, mm_driver::driver::DriverError> {
        if let (Some(vas), Some(space)) = (self.probes.get(self.frames.len()), spaces.first()) {
            let mut frames = Vec::new();
            for &va in vas {
                let t = x86_paging::page_walk::translate(mem, space.cr3, va)
                    .unwrap_or_else(|e| panic!("walking {va:#x}: {e}"));
                frames.push(t.map(|t| t.phys & !0xfff));
            }
            self.frames.push(frames);
        }
        self.script.next_batch(mem, results, spaces)
    }
}

#[test]
fn freed_frames_are_reused_and_never_mapped_twice() {
    use shared_mm::abi::Op::*;
    let rw = USER | READ | WRITE;
    let batches = vec![
        vec![
            CreateSpace,
            MapFixed {
                space: 1,
                addr: 0x40_0000,
                size: 0x1000,
                access: rw,
            },
            TouchWrite {
                space: 1,
                addr: 0x40_0000,
                value: 1,
            },
        ],
        vec![
            Unmap {
                space: 1,
                addr: 0x40_0000,
                size: 0x1000,
            },
            MapFixed {
                space: 1,
                addr: 0x80_0000,
                size: 0x2000,
                access: rw,
            },
            TouchWrite {
                space: 1,
                addr: 0x80_0000,
                value: 2,
            },
            TouchWrite {
                space: 1,
                addr: 0x80_1000,
                value: 3,
            },
        ],
    ];
    let mut driver = mm_checker::Checked::new(FrameProbe {
        script: mm_driver::driver::Script::new(batches),
        probes: vec![vec![0x40_0000], vec![0x40_0000, 0x80_0000, 0x80_1000]],
        frames: Vec::new(),
    });
    let config = GuestConfig {
        timeout: Some(Duration::from_secs(30)),
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config).expect("boot the default guest");
    assert_eq!(vm.run(&mut driver).expect("guest runs"), 0);
    // The agreement checker ran after each batch: no frame is mapped twice.
    assert!(driver.findings.is_empty(), "{:#?}", driver.findings);
    let frames = driver.into_inner().frames;
    let [before, after] = &frames[..] else {
        panic!("{frames:x?}")
    };
    let first = before[0].expect("the written page is mapped");
    // After the unmap, the old page is gone and its frame backs the next page touched; the page
    // after that gets another frame.
    assert_eq!(after[0], None, "{frames:x?}");
    assert_eq!(after[1], Some(first), "{frames:x?}");
    assert!(after[2].is_some_and(|f| f != first), "{frames:x?}");
}
