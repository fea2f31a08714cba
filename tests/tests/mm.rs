//! The guest MM through real hypercalls: the built-in self-check, and the region trees it exports.

use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::KERNEL_SPACE;
use std::time::Duration;
use vmm::scenario::SelfCheck;
use vmm::{Vm, VmConfig};

fn run_self_check() -> SelfCheck {
    let config = VmConfig {
        timeout: Some(Duration::from_secs(30)),
        ..VmConfig::default()
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
