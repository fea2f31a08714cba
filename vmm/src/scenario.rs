//! The built-in MM self-check: a scripted run of every operation kind and edge case through
//! real hypercalls, each step with the result the guest must produce.

use crate::checker::{Checked, Finding};
use crate::driver::{Driver, Script, SpaceSnapshot};
use crate::{Guest, VmmError};
use shared_mm::abi::{
    access_bits::{EXECUTE, READ, USER, WRITE},
    FaultKind, Op, OpResult, RegionRecord, SpaceRecord, Status, KERNEL_SPACE, USER_SPACE_END,
};
use vm_memory::GuestMemoryMmap;

const URW: u32 = USER | READ | WRITE;
const GIB: u64 = 1 << 30;

/// What a step's result must satisfy.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    Ok,
    /// Ok, and `value` equals this.
    Value(u64),
    /// Ok, and the placed address equals this.
    At(u64),
    /// Ok, and the placed address is a multiple of this.
    AlignedTo(u64),
    Error(Status),
    Fault(FaultKind),
}

/// One scripted operation and its expected outcome.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub what: &'static str,
    pub op: Op,
    pub expect: Expect,
}

const fn step(what: &'static str, op: Op, expect: Expect) -> Step {
    Step { what, op, expect }
}

/// The scenario: spaces A (id 1) and B (id 2).
pub fn steps() -> Vec<Step> {
    use Expect::*;
    use Op::*;
    let (a, b) = (1, 2);
    let v = 0x1122_3344_5566_7788;
    vec![
        step("create space A", CreateSpace, Value(1)),
        step("create space B", CreateSpace, Value(2)),
        step(
            "map fixed 4 pages",
            MapFixed {
                space: a,
                addr: 0x40_0000,
                size: 0x4000,
                access: URW,
            },
            At(0x40_0000),
        ),
        step(
            "write from ring 3",
            TouchWrite {
                space: a,
                addr: 0x40_0010,
                value: v,
            },
            Value(v),
        ),
        step(
            "read back from ring 3",
            TouchRead {
                space: a,
                addr: 0x40_0010,
            },
            Value(v),
        ),
        step(
            "fresh page reads zero",
            TouchRead {
                space: a,
                addr: 0x40_1008,
            },
            Value(0),
        ),
        step(
            "unaligned read across pages",
            TouchRead {
                space: a,
                addr: 0x40_1ffc,
            },
            Value(0),
        ),
        step(
            "fixed map overlapping is refused",
            MapFixed {
                space: a,
                addr: 0x40_3000,
                size: 0x2000,
                access: URW,
            },
            Error(Status::Overlap),
        ),
        step(
            "fixed map touching the end is fine",
            MapFixed {
                space: a,
                addr: 0x40_4000,
                size: 0x1000,
                access: URW,
            },
            At(0x40_4000),
        ),
        step(
            "misaligned base",
            MapFixed {
                space: a,
                addr: 0x50_0001,
                size: 0x1000,
                access: URW,
            },
            Error(Status::InvalidArgument),
        ),
        step(
            "zero size",
            MapAnywhere {
                space: a,
                size: 0,
                align: 0x1000,
                access: URW,
            },
            Error(Status::InvalidArgument),
        ),
        step(
            "misaligned size",
            MapAnywhere {
                space: a,
                size: 0x1234,
                align: 0x1000,
                access: URW,
            },
            Error(Status::InvalidArgument),
        ),
        step(
            "non-power-of-two alignment",
            MapAnywhere {
                space: a,
                size: 0x1000,
                align: 0x3000,
                access: URW,
            },
            Error(Status::BadAlignment),
        ),
        step(
            "map anywhere",
            MapAnywhere {
                space: a,
                size: 0x3000,
                align: 0x1000,
                access: URW,
            },
            AlignedTo(0x1000),
        ),
        step(
            "map anywhere, 1 GiB aligned",
            MapAnywhere {
                space: a,
                size: 0x20_0000,
                align: GIB,
                access: URW,
            },
            AlignedTo(GIB),
        ),
        step(
            "map randomized, 64 KiB aligned",
            MapRandomized {
                space: a,
                size: 0x1_0000,
                align: 0x1_0000,
                access: URW,
            },
            AlignedTo(0x1_0000),
        ),
        step(
            "map at the top of user space",
            MapFixed {
                space: a,
                addr: USER_SPACE_END - 0x1000,
                size: 0x1000,
                access: URW,
            },
            At(USER_SPACE_END - 0x1000),
        ),
        step(
            "map past the top of user space",
            MapFixed {
                space: a,
                addr: USER_SPACE_END - 0x1000,
                size: 0x2000,
                access: URW,
            },
            Error(Status::OutOfRange),
        ),
        step(
            "map past 2^64",
            MapFixed {
                space: a,
                addr: 0xFFFF_FFFF_FFFF_F000,
                size: 0x2000,
                access: URW,
            },
            Error(Status::Overflow),
        ),
        step(
            "unknown access bits",
            MapAnywhere {
                space: a,
                size: 0x1000,
                align: 0x1000,
                access: 0x100,
            },
            Error(Status::BadAccess),
        ),
        step(
            "protect the middle page read-only (split in 3)",
            Protect {
                space: a,
                addr: 0x40_1000,
                size: 0x1000,
                access: USER | READ,
            },
            Ok,
        ),
        step(
            "write to read-only page faults",
            TouchWrite {
                space: a,
                addr: 0x40_1000,
                value: 1,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "read of read-only page works",
            TouchRead {
                space: a,
                addr: 0x40_1008,
            },
            Value(0),
        ),
        step(
            "left piece keeps its data",
            TouchRead {
                space: a,
                addr: 0x40_0010,
            },
            Value(v),
        ),
        step(
            "right piece stays writable",
            TouchWrite {
                space: a,
                addr: 0x40_2000,
                value: 7,
            },
            Value(7),
        ),
        step(
            "protect across a hole is refused",
            Protect {
                space: a,
                addr: 0x40_4000,
                size: 0x2000,
                access: URW,
            },
            Error(Status::NotMapped),
        ),
        step(
            "refused protect changed nothing",
            TouchWrite {
                space: a,
                addr: 0x40_4000,
                value: 9,
            },
            Value(9),
        ),
        step(
            "protect to none keeps the data",
            Protect {
                space: a,
                addr: 0x40_0000,
                size: 0x1000,
                access: USER,
            },
            Ok,
        ),
        step(
            "no access after protect to none",
            TouchRead {
                space: a,
                addr: 0x40_0010,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "protect back to read-write",
            Protect {
                space: a,
                addr: 0x40_0000,
                size: 0x1000,
                access: URW,
            },
            Ok,
        ),
        step(
            "data survived protect to none",
            TouchRead {
                space: a,
                addr: 0x40_0010,
            },
            Value(v),
        ),
        step(
            "execute in a no-exec region faults",
            TouchExec {
                space: a,
                addr: 0x40_0000,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "map an executable page",
            MapFixed {
                space: a,
                addr: 0x60_0000,
                size: 0x1000,
                access: USER | READ | EXECUTE,
            },
            At(0x60_0000),
        ),
        step(
            "execute from ring 3",
            TouchExec {
                space: a,
                addr: 0x60_0000,
            },
            Ok,
        ),
        step(
            "executed page still reads zero",
            TouchRead {
                space: a,
                addr: 0x60_0000,
            },
            Value(0),
        ),
        step(
            "map a kernel-only page in user space",
            MapFixed {
                space: a,
                addr: 0x70_0000,
                size: 0x1000,
                access: READ | WRITE,
            },
            At(0x70_0000),
        ),
        step(
            "user touch of a supervisor page faults",
            TouchRead {
                space: a,
                addr: 0x70_0000,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "user touch of kernel memory faults",
            TouchRead {
                space: a,
                addr: 0xFFFF_FFFF_8020_0000,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "non-canonical address",
            TouchRead {
                space: a,
                addr: 0x8000_0000_0000_0000,
            },
            Fault(FaultKind::GeneralProtection),
        ),
        // Regression, found by the fuzzer: exec of a kernel huge-page address panicked the guest.
        step(
            "user exec of kernel memory faults",
            TouchExec {
                space: a,
                addr: 0xFFFF_FFFF_8020_1000,
            },
            Fault(FaultKind::SegvAccess),
        ),
        step(
            "touch with no region",
            TouchRead {
                space: a,
                addr: 0x1000_0000,
            },
            Fault(FaultKind::SegvNoRegion),
        ),
        step(
            "space B does not see A's memory",
            TouchRead {
                space: b,
                addr: 0x40_0010,
            },
            Fault(FaultKind::SegvNoRegion),
        ),
        step("snapshot A", Snapshot { space: a }, Ok),
        step(
            "partial unmap spanning two pieces",
            Unmap {
                space: a,
                addr: 0x40_1000,
                size: 0x2000,
            },
            Ok,
        ),
        step(
            "unmapped page faults",
            TouchRead {
                space: a,
                addr: 0x40_1000,
            },
            Fault(FaultKind::SegvNoRegion),
        ),
        step(
            "page below the unmap keeps its data",
            TouchRead {
                space: a,
                addr: 0x40_0010,
            },
            Value(v),
        ),
        step(
            "page above the unmap is still mapped",
            TouchRead {
                space: a,
                addr: 0x40_3000,
            },
            Value(0),
        ),
        step(
            "unmap across regions and holes",
            Unmap {
                space: a,
                addr: 0x40_0000,
                size: 0x40_0000,
            },
            Ok,
        ),
        step(
            "everything in the range is gone",
            TouchRead {
                space: a,
                addr: 0x60_0000,
            },
            Fault(FaultKind::SegvNoRegion),
        ),
        step(
            "unmap of an empty range is fine",
            Unmap {
                space: a,
                addr: 0x40_0000,
                size: 0x1000,
            },
            Ok,
        ),
        step(
            "unmap past the top is refused",
            Unmap {
                space: a,
                addr: USER_SPACE_END,
                size: 0x1000,
            },
            Error(Status::OutOfRange),
        ),
        step(
            "snapshot the kernel",
            Snapshot {
                space: KERNEL_SPACE,
            },
            Value(3),
        ),
        step("destroy space B", DestroySpace { space: b }, Ok),
        step(
            "destroyed space is gone",
            TouchRead {
                space: b,
                addr: 0x40_0000,
            },
            Error(Status::NoSuchSpace),
        ),
        step(
            "destroy an unknown space",
            DestroySpace { space: 99 },
            Error(Status::NoSuchSpace),
        ),
        step("destroy space A", DestroySpace { space: a }, Ok),
    ]
}

/// A short scenario in four batches that springs each seeded bug of the guest (see the
/// `bug-*` features in guest-kernel/Cargo.toml): the agreement checker runs between batches,
/// and each step's expectation catches what the checker cannot see.
pub fn bug_bait() -> Vec<Vec<Step>> {
    use Expect::*;
    use Op::*;
    let a = 1;
    let write = |addr, value| {
        step(
            "write",
            TouchWrite {
                space: a,
                addr,
                value,
            },
            Value(value),
        )
    };
    vec![
        vec![
            step("create space", CreateSpace, Value(1)),
            step(
                "map 4 pages",
                MapFixed {
                    space: a,
                    addr: 0x40_0000,
                    size: 0x4000,
                    access: URW,
                },
                At(0x40_0000),
            ),
            write(0x40_0000, 1),
            write(0x40_1000, 2),
            write(0x40_2000, 3),
            write(0x40_3000, 4),
        ],
        vec![
            step(
                "protect the last page read-only",
                Protect {
                    space: a,
                    addr: 0x40_3000,
                    size: 0x1000,
                    access: USER | READ,
                },
                Ok,
            ),
            step(
                "write to it faults",
                TouchWrite {
                    space: a,
                    addr: 0x40_3000,
                    value: 5,
                },
                Fault(FaultKind::SegvAccess),
            ),
            step(
                "unmap the first two pages",
                Unmap {
                    space: a,
                    addr: 0x40_0000,
                    size: 0x2000,
                },
                Ok,
            ),
            step(
                "first unmapped page faults",
                TouchRead {
                    space: a,
                    addr: 0x40_0000,
                },
                Fault(FaultKind::SegvNoRegion),
            ),
            step(
                "second unmapped page faults",
                TouchRead {
                    space: a,
                    addr: 0x40_1000,
                },
                Fault(FaultKind::SegvNoRegion),
            ),
        ],
        vec![
            step(
                "map 4 more pages",
                MapFixed {
                    space: a,
                    addr: 0x50_0000,
                    size: 0x4000,
                    access: URW,
                },
                At(0x50_0000),
            ),
            write(0x50_0000, 6),
            write(0x50_1000, 7),
            write(0x50_2000, 8),
            write(0x50_3000, 9),
            step(
                "kept page keeps its data",
                TouchRead {
                    space: a,
                    addr: 0x40_2000,
                },
                Value(3),
            ),
            step(
                "kept read-only page keeps its data",
                TouchRead {
                    space: a,
                    addr: 0x40_3000,
                },
                Value(4),
            ),
        ],
        vec![step(
            "fixed map overlapping the left neighbour's last page",
            MapFixed {
                space: a,
                addr: 0x50_3000,
                size: 0x2000,
                access: URW,
            },
            Error(Status::Overlap),
        )],
    ]
}

/// Checks one result against its expectation; `Err` says how it differs.
pub fn check(expect: Expect, got: &OpResult) -> Result<(), String> {
    let ok = got.status == Status::Ok;
    let pass = match expect {
        Expect::Ok => ok,
        Expect::Value(v) => ok && got.value == v,
        Expect::At(a) => ok && got.addr == a,
        Expect::AlignedTo(a) => ok && got.addr.is_multiple_of(a),
        Expect::Error(s) => got.status == s,
        Expect::Fault(f) => got.status == Status::Faulted && got.fault == f,
    };
    if pass {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {got:?}"))
    }
}

/// Steps per batch: small, so that a wrapping agreement checker runs often.
const STEPS_PER_BATCH: usize = 8;

/// Runs [`steps`] in small batches and records what passed.
pub struct SelfCheck {
    steps: Vec<Step>,
    /// Index of the first step of the batch in flight.
    in_flight: Option<usize>,
    /// One line per failed step.
    pub failures: Vec<String>,
    /// Region trees received, in arrival order.
    pub snapshots: Vec<SpaceSnapshot>,
    /// Steps whose results have been checked.
    pub checked: usize,
}

impl SelfCheck {
    pub fn new() -> Self {
        SelfCheck {
            steps: steps(),
            in_flight: None,
            failures: Vec::new(),
            snapshots: Vec::new(),
            checked: 0,
        }
    }

    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    pub fn passed(&self) -> bool {
        self.checked == self.steps.len() && self.failures.is_empty()
    }

    fn check_kernel_snapshot(&mut self) {
        let Some(kernel) = self.snapshots.iter().find(|s| s.space == KERNEL_SPACE) else {
            self.failures
                .push("the guest sent no kernel snapshot".into());
            return;
        };
        let kernel = &kernel.regions;
        let names: Vec<&str> = kernel.iter().map(|r| r.name_str()).collect();
        let mut missing: Vec<String> = ["physmap", "kernel image", "kmalloc"]
            .iter()
            .filter(|wanted| !names.contains(wanted))
            .map(|wanted| format!("kernel snapshot lacks the {wanted:?} region: {names:?}"))
            .collect();
        if kernel.iter().any(|r| r.backed != 0) {
            missing.push("kernel reservations must be unbacked".into());
        }
        self.failures.extend(missing);
    }
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver for SelfCheck {
    fn next_batch(
        &mut self,
        _: &GuestMemoryMmap,
        results: &[OpResult],
        _: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, String> {
        let start = match self.in_flight {
            None => 0,
            Some(start) => {
                let batch = &self.steps[start..(start + STEPS_PER_BATCH).min(self.steps.len())];
                if results.len() != batch.len() {
                    return Err(format!(
                        "guest returned {} results for {} operations",
                        results.len(),
                        batch.len()
                    ));
                }
                for (i, (step, got)) in batch.iter().zip(results).enumerate() {
                    if let Err(why) = check(step.expect, got) {
                        self.failures
                            .push(format!("step {} ({}): {why}", start + i, step.what));
                    }
                }
                self.checked += batch.len();
                start + batch.len()
            }
        };
        if start >= self.steps.len() {
            self.check_kernel_snapshot();
            return Ok(None);
        }
        self.in_flight = Some(start);
        let end = (start + STEPS_PER_BATCH).min(self.steps.len());
        Ok(Some(self.steps[start..end].iter().map(|s| s.op).collect()))
    }

    fn snapshot(
        &mut self,
        _: &GuestMemoryMmap,
        space: u32,
        cr3: u64,
        first: u64,
        total: u64,
        regions: &[RegionRecord],
    ) -> Result<(), String> {
        SpaceSnapshot::collect(&mut self.snapshots, space, cr3, first, total, regions)
    }
}

/// What a checked run of scripted steps found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Steps whose result differed from the expectation.
    pub mismatches: Vec<String>,
    /// Agreement-checker findings, with the number of the check that found them.
    pub findings: Vec<(usize, Finding)>,
}

impl Outcome {
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty() && self.findings.is_empty()
    }
}

/// Runs `batches` of steps on `vm` with the agreement checker after every batch.
pub fn run_checked(vm: &mut Guest, batches: &[Vec<Step>]) -> Result<Outcome, VmmError> {
    let ops = batches
        .iter()
        .map(|b| b.iter().map(|s| s.op).collect())
        .collect();
    let mut driver = Checked::new(Script::new(ops));
    vm.run(&mut driver)?;
    let mut outcome = Outcome {
        findings: std::mem::take(&mut driver.findings),
        ..Outcome::default()
    };
    let results = &driver.inner().results;
    for (b, batch) in batches.iter().enumerate() {
        let got = results.get(b).map(Vec::as_slice).unwrap_or_default();
        for (i, step) in batch.iter().enumerate() {
            let verdict = got
                .get(i)
                .ok_or_else(|| "no result".to_string())
                .and_then(|r| check(step.expect, r));
            if let Err(why) = verdict {
                outcome
                    .mismatches
                    .push(format!("batch {b} step {i} ({}): {why}", step.what));
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_compares_every_field_it_promises() {
        let ok = |addr, value| OpResult {
            addr,
            value,
            ..OpResult::ok()
        };
        assert!(check(Expect::Value(5), &ok(0, 5)).is_ok());
        assert!(check(Expect::Value(5), &ok(0, 6)).is_err());
        assert!(check(Expect::At(0x1000), &ok(0x2000, 0)).is_err());
        assert!(check(Expect::AlignedTo(0x10000), &ok(0x11000, 0)).is_err());
        assert!(check(Expect::Ok, &OpResult::error(Status::NoSpace)).is_err());
        assert!(check(
            Expect::Error(Status::NoSpace),
            &OpResult::error(Status::Overlap)
        )
        .is_err());
        let segv = OpResult {
            status: Status::Faulted,
            fault: FaultKind::SegvAccess,
            addr: 0,
            value: 0,
        };
        assert!(check(Expect::Fault(FaultKind::SegvAccess), &segv).is_ok());
        assert!(check(Expect::Fault(FaultKind::SegvNoRegion), &segv).is_err());
    }

    #[test]
    fn scenario_fits_one_batch_and_covers_every_op_kind() {
        let steps = steps();
        assert!(steps.len() <= shared_mm::abi::MAX_BATCH);
        let kinds: std::collections::BTreeSet<String> = steps
            .iter()
            .map(|s| {
                format!("{:?}", s.op)
                    .split([' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.len(), 11, "{kinds:?}");
    }
}
