//! Booting guests in-process: the default one exits 0; bad input and misbehaviour are named errors.
#![forbid(unsafe_code)]

use guest_boot::BootError;
use guest_image::EMBEDDED_KERNEL;
use integration_tests::{boot, config, minimal_elf, run_error, setup_error, TEST_MEMORY};
use mm_driver::GuestConfig;
use mm_driver::RunError;
use shared_mm::boot_info::{GuestCommand, BOOT_INFO_ADDR, KERNEL_PHYS_BASE, MAILBOX_ADDR};
use std::time::{Duration, Instant};
use vmm::VmmError;

/// `hlt`: with interrupts off and no in-kernel irqchip, KVM exits to the VMM.
const HLT: u8 = 0xf4;

/// The tests' config booting `kernel` instead of the embedded guest.
fn with_kernel(kernel: Vec<u8>) -> GuestConfig {
    GuestConfig {
        kernel,
        ..config(GuestCommand::Serve)
    }
}

/// The tests' config with `memory` bytes of guest RAM.
fn with_memory(memory: u64) -> GuestConfig {
    GuestConfig {
        memory,
        ..config(GuestCommand::Serve)
    }
}

/// Deterministic noise (xorshift64) for the not-an-ELF test.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn default_guest_boots_and_exits_zero() {
    let finished = boot(&config(GuestCommand::Serve)).expect("VM setup");
    let console = finished.vm.console_output();
    assert_eq!(finished.status.ok(), Some(0), "console:\n{console}");
    assert!(
        console.contains("guest-kernel: booted"),
        "console:\n{console}"
    );
}

/// The control for the segment tests below: the hand-made ELF is valid, so when it is rejected
/// only its placement can be the reason.
#[test]
fn minimal_elf_at_the_kernel_base_loads_and_runs() {
    let finished = boot(&with_kernel(minimal_elf(KERNEL_PHYS_BASE, &[HLT]))).expect("VM setup");
    let err = finished
        .status
        .expect_err("a bare hlt has no exit hypercall");
    assert!(
        matches!(err, VmmError::Run(RunError::GuestHalted { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("halted"), "{err}");
}

#[test]
fn random_bytes_are_not_an_elf() {
    let err = setup_error(&with_kernel(noise(4096)));
    assert!(
        matches!(err, VmmError::Run(RunError::Boot(BootError::NotElf(_)))),
        "{err:?}"
    );
    assert!(err.to_string().contains("not an x86_64 ELF"), "{err}");
}

#[test]
fn text_file_is_not_an_elf() {
    let err = setup_error(&with_kernel(
        b"#!/bin/sh\necho this is not a kernel\n".to_vec(),
    ));
    assert!(
        matches!(err, VmmError::Run(RunError::Boot(BootError::NotElf(_)))),
        "{err:?}"
    );
    assert!(err.to_string().contains("ELF magic"), "{err}");
}

#[test]
fn elf_for_another_machine_is_rejected() {
    let mut elf = minimal_elf(KERNEL_PHYS_BASE, &[HLT]);
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let err = setup_error(&with_kernel(elf));
    assert!(
        matches!(err, VmmError::Run(RunError::Boot(BootError::NotElf(_)))),
        "{err:?}"
    );
    assert!(err.to_string().contains("not x86_64"), "{err}");
}

/// The embedded kernel cut to `len` bytes is refused as truncated, naming the length.
fn assert_truncated(len: usize) {
    let err = setup_error(&with_kernel(EMBEDDED_KERNEL[..len].to_vec()));
    assert!(
        matches!(
            err,
            VmmError::Run(RunError::Boot(BootError::TruncatedElf(_)))
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("truncated") && message.contains(&format!("{len} bytes")),
        "{message}"
    );
}

#[test]
fn elf_cut_to_40_bytes_is_truncated() {
    assert_truncated(40); // inside the ELF header
}

#[test]
fn elf_cut_to_200_bytes_is_truncated() {
    assert_truncated(200); // inside the program headers
}

/// No prefix of the kernel short enough to miss its segments may panic or load.
#[test]
fn every_short_prefix_of_the_kernel_is_an_error() {
    for len in 0..=256 {
        let err = setup_error(&with_kernel(EMBEDDED_KERNEL[..len].to_vec()));
        assert!(
            matches!(
                err,
                VmmError::Run(RunError::Boot(
                    BootError::NotElf(_) | BootError::TruncatedElf(_)
                ))
            ),
            "{len} bytes: {err}"
        );
    }
}

/// Boots a minimal ELF whose one segment sits at guest-physical `paddr`, asserts it is refused
/// as outside the loadable RAM, and returns the message, checked to name the address and the
/// allowed range.
fn assert_segment_refused(paddr: u64) -> String {
    let err = setup_error(&with_kernel(minimal_elf(paddr, &[HLT])));
    let &VmmError::Run(RunError::Boot(BootError::SegmentOutsideRam {
        paddr: reported,
        ram_size,
        allowed_start,
        ..
    })) = &err
    else {
        panic!("expected SegmentOutsideRam, got {err:?}");
    };
    assert_eq!(
        (reported, allowed_start, ram_size),
        (paddr, KERNEL_PHYS_BASE, TEST_MEMORY)
    );
    let message = err.to_string();
    assert!(message.contains(&format!("{paddr:#x}")), "{message}");
    message
}

#[test]
fn segment_beyond_ram_is_rejected() {
    // Entirely past the end, and straddling the end.
    for paddr in [TEST_MEMORY, TEST_MEMORY - 0x40] {
        let message = assert_segment_refused(paddr);
        let end = format!("past the end of guest RAM at {TEST_MEMORY:#x}");
        assert!(message.contains(&end), "{message}");
    }
}

#[test]
fn segment_on_the_boot_structures_is_rejected() {
    // The boot info, the mailbox, and the last page below the kernel base.
    for paddr in [BOOT_INFO_ADDR, MAILBOX_ADDR, KERNEL_PHYS_BASE - 0x1000] {
        let message = assert_segment_refused(paddr);
        let below = format!("below {KERNEL_PHYS_BASE:#x}, on the VMM's boot structures");
        assert!(message.contains(&below), "{message}");
    }
}

/// `memory` bytes of guest RAM are refused, with a message that contains `why`.
fn assert_bad_memory(memory: u64, why: &str) {
    let err = setup_error(&with_memory(memory));
    assert!(
        matches!(err, VmmError::Run(RunError::Boot(BootError::BadMemorySize { requested, .. })) if requested == memory),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("bad guest memory size") && message.contains(why),
        "{message}"
    );
}

#[test]
fn memory_of_1_mib_is_too_small() {
    assert_bad_memory(1 << 20, "at least 16 MiB");
}

#[test]
fn memory_of_1_tib_is_refused() {
    assert_bad_memory(1 << 40, "at most 16 GiB");
}

#[test]
fn memory_not_a_multiple_of_2_mib_is_refused() {
    assert_bad_memory(65 << 20, "multiple of 2 MiB");
    assert_bad_memory(TEST_MEMORY + 4096, "multiple of 2 MiB");
}

#[test]
fn guest_triple_fault_reports_the_registers() {
    let err = run_error(GuestCommand::TripleFault);
    assert!(
        matches!(err, VmmError::Run(RunError::TripleFault { .. })),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("triple-faulted") && message.contains("rip="),
        "{message}"
    );
}

#[test]
fn guest_panic_reports_message_and_location() {
    let err = run_error(GuestCommand::Panic);
    let VmmError::Run(RunError::GuestPanic {
        message,
        file,
        line,
        ..
    }) = &err
    else {
        panic!("expected a guest panic, got: {err}");
    };
    assert_eq!(message, "panic requested by the host");
    assert!(file.ends_with(".rs") && *line > 0, "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("panic requested by the host") && shown.contains(file.as_str()),
        "{shown}"
    );
}

/// A guest in one long op (a 16 MiB populate: 4,096 frames zeroed and mapped, 5-7 s on this
/// host, whose KVM emulates guest ring 0) makes no hypercall for longer than its timeout, but
/// its heartbeat shows progress: it is not stopped. A guest in a loop with no progress is
/// (`guest_that_never_exits_times_out`).
#[test]
fn a_slow_guest_that_makes_progress_is_not_taken_for_hung() {
    use shared_mm::abi::access_bits::{READ, USER, WRITE};
    use shared_mm::abi::Op;
    let (addr, size) = (0x4000_0000, 16 << 20);
    let ops = [
        Op::CreateSpace,
        Op::MapFixed {
            space: 1,
            addr,
            size,
            access: USER | READ | WRITE,
        },
        Op::Populate {
            space: 1,
            addr,
            size,
        },
    ];
    let limit = Duration::from_secs(1);
    let mut config = config(GuestCommand::Serve);
    config.timeout = Some(limit);
    let started = Instant::now();
    let failure = mm_fuzz::replay(&vmm::Backends::default(), &config, &ops, 1, false)
        .expect("the guest boots");
    let elapsed = started.elapsed();
    assert_eq!(failure, None, "after {elapsed:?}");
    // Where guest ring 0 runs natively the populate is quick, and this shows less.
    if elapsed < 2 * limit {
        eprintln!("note: the populate took {elapsed:?}, not much longer than the timeout");
    }
}

/// Hands out a fixed script of batches, each after `pause` of host work.
struct SlowHost {
    script: mm_driver::driver::Script,
    pause: Duration,
}

impl mm_driver::driver::Driver for SlowHost {
    fn next_batch(
        &mut self,
        mem: &vm_memory::GuestMemoryMmap,
        results: &[shared_mm::abi::OpResult],
        spaces: &[shared_mm::abi::SpaceRecord],
    ) -> Result<Option<Vec<shared_mm::abi::Op>>, mm_driver::driver::DriverError> {
        std::thread::sleep(self.pause);
        self.script.next_batch(mem, results, spaces)
    }
}

/// The host's own work between batches (a slow checker, a loaded machine) is not guest time:
/// a driver that takes longer than the timeout to answer each hypercall does not make the
/// guest look hung.
#[test]
fn host_work_between_batches_does_not_count_against_the_guest() {
    use shared_mm::abi::Op;
    let limit = Duration::from_secs(1);
    let mut config = config(GuestCommand::Serve);
    config.timeout = Some(limit);
    let batches = vec![vec![Op::CreateSpace], vec![Op::DestroySpace { space: 1 }]];
    let mut driver = SlowHost {
        script: mm_driver::driver::Script::new(batches),
        pause: 2 * limit,
    };
    let mut vm = vmm::Vm::new(&config).expect("VM setup");
    let status = vm.run(&mut driver);
    assert_eq!(status.expect("no hang: the guest waited for the host"), 0);
    assert_eq!(driver.script.results.len(), 2, "both batches ran");
    assert_eq!(driver.script.results[0][0].value, 1, "space 1 was created");
}

#[test]
fn guest_that_never_exits_times_out() {
    let limit = Duration::from_secs(1);
    let mut config = config(GuestCommand::Hang);
    config.timeout = Some(limit);
    let started = Instant::now();
    let finished = boot(&config).expect("VM setup");
    let elapsed = started.elapsed();
    let err = finished.status.expect_err("a hanging guest cannot exit");
    assert!(
        matches!(err, VmmError::Run(RunError::Timeout { seconds, .. }) if seconds == 1.0),
        "{err}"
    );
    assert!(
        elapsed >= limit && elapsed < Duration::from_secs(5),
        "stopped after {elapsed:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("did not exit within 1 s") && message.contains("rip="),
        "{message}"
    );
}
