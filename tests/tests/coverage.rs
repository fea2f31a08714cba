//! Coverage feedback: a sanitizer-coverage guest boots, passes the self-check, and its edge counters can be read, merged and reset between batches.
#![forbid(unsafe_code)]

use guest_image::variant::{build_variant_with, GuestVariant};
use mm_checker::Checked;
use mm_driver::driver::{Driver, DriverError, Script, SnapshotChunk};
use mm_driver::GuestConfig;
use mm_fuzz::coverage::{CoverageMap, CoverageSet};
use mm_fuzz::self_check::SelfCheck;
use shared_mm::abi::{
    access_bits::{READ, USER, WRITE},
    Op, OpResult, SpaceRecord, Status,
};
use std::sync::OnceLock;
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmm::Vm;

/// The coverage build of the default guest, built once per test binary.
fn coverage_config() -> GuestConfig {
    static KERNEL: OnceLock<Vec<u8>> = OnceLock::new();
    let kernel = KERNEL.get_or_init(|| {
        let elf = build_variant_with(&GuestVariant::default().with_coverage())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()))
    });
    GuestConfig {
        kernel: kernel.clone(),
        timeout: Some(Duration::from_secs(30)),
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    }
}

/// What the counters showed when one batch's results came back.
#[derive(Debug)]
struct BatchCoverage {
    /// Counters that were nonzero.
    hit: usize,
    /// Edges never hit before.
    new: usize,
    /// Counters still nonzero right after the reset.
    left_after_reset: usize,
}

/// Wraps a driver: before each batch, reads the counters of the previous one (the first read
/// covers boot), merges them, and resets them.
struct CoverageProbe<D> {
    inner: D,
    map: CoverageMap,
    seen: CoverageSet,
    batches: Vec<BatchCoverage>,
}

impl<D: Driver> Driver for CoverageProbe<D> {
    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        let counters = self.map.read(mem)?;
        let new = self.seen.merge(&counters);
        self.map.reset(mem)?;
        self.batches.push(BatchCoverage {
            hit: counters.iter().filter(|&&c| c != 0).count(),
            new,
            left_after_reset: self.map.read(mem)?.iter().filter(|&&c| c != 0).count(),
        });
        self.inner.next_batch(mem, results, spaces)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.inner.snapshot(mem, chunk)
    }
}

#[test]
fn coverage_build_has_counters_in_the_kernel_image() {
    let config = coverage_config();
    let map = CoverageMap::from_elf(&config.kernel)
        .expect("well-formed ELF")
        .expect("a coverage build has counters");
    assert!(map.len() > 100, "only {} counters", map.len());
    // Linked at KERNEL_VIRT_BASE + phys, inside the image, which starts at 2 MiB.
    assert!(
        map.start().0 >= 0x20_0000 && map.start().0 < 1 << 30,
        "{map:?}"
    );
}

#[test]
fn normal_build_has_no_counters() {
    assert_eq!(
        CoverageMap::from_elf(guest_image::EMBEDDED_KERNEL),
        Ok(None)
    );
}

#[test]
fn coverage_guest_passes_the_self_check_and_agreement_checks() {
    let mut vm = Vm::new(&coverage_config()).expect("boot the coverage guest");
    let mut checked = Checked::new(SelfCheck::new());
    let status = vm
        .run(&mut checked)
        .unwrap_or_else(|e| panic!("coverage guest failed: {e}\n{}", vm.console_output()));
    assert_eq!(status, 0);
    assert!(checked.findings.is_empty(), "{:#?}", checked.findings);
    let check = checked.into_inner();
    assert!(check.passed(), "{:#?}", check.failures);
}

#[test]
fn counters_show_each_batch_and_reset_between_batches() {
    let config = coverage_config();
    let map = CoverageMap::from_elf(&config.kernel).unwrap().unwrap();
    let urw = USER | READ | WRITE;
    let (space, addr) = (1, 0x40_0000);
    let script = Script::new(vec![
        vec![
            Op::CreateSpace,
            Op::MapFixed {
                space,
                addr,
                size: 0x4000,
                access: urw,
            },
            Op::TouchWrite {
                space,
                addr,
                value: 42,
            },
            Op::TouchRead { space, addr },
        ],
        vec![
            Op::Protect {
                space,
                addr: addr + 0x1000,
                size: 0x1000,
                access: USER | READ,
            },
            Op::Unmap {
                space,
                addr: addr + 0x2000,
                size: 0x2000,
            },
        ],
    ]);
    let mut probe = CoverageProbe {
        inner: script,
        map,
        seen: CoverageSet::new(),
        batches: Vec::new(),
    };
    let mut vm = Vm::new(&config).expect("boot the coverage guest");
    vm.run(&mut probe)
        .unwrap_or_else(|e| panic!("coverage guest failed: {e}\n{}", vm.console_output()));

    let results = &probe.inner.results;
    assert!(
        results.iter().flatten().all(|r| r.status == Status::Ok),
        "{results:#?}"
    );
    // Reads before batch 1 (boot), batch 2 (after batch 1) and the end (after batch 2).
    let [boot, first, second] = probe.batches.as_slice() else {
        panic!("{:#?}", probe.batches);
    };
    assert!(boot.hit > 0 && boot.new == boot.hit, "{boot:?}");
    assert!(first.hit > 0 && first.new > 0, "{first:?}");
    assert!(second.hit > 0 && second.new > 0, "{second:?}");
    assert!(
        probe.batches.iter().all(|b| b.left_after_reset == 0),
        "{:#?}",
        probe.batches
    );
    assert_eq!(
        probe.seen.covered(),
        boot.new + first.new + second.new,
        "{:#?}",
        probe.batches
    );
    assert!(probe.seen.covered() <= map.len());
}
