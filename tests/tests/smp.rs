//! Several CPUs under KVM, in-process: every AP reports in and acknowledges CPU 0's pings, and
//! whatever ends the VM on any CPU (a panic, a triple fault, a CPU that never reports in, a
//! hang, a halt) is reported with its CPU and its exit code, with no vCPU thread left behind.
#![forbid(unsafe_code)]

use guest_boot::BootError;
use integration_tests::{boot, config, minimal_elf, Finished, TEST_MEMORY};
use mm_checker::Checked;
use mm_driver::driver::{CpuBatch, RoundScript};
use mm_driver::RunError;
use mm_driver::{Boot, GuestConfig};
use shared_mm::abi::access_bits::{READ, USER, WRITE};
use shared_mm::abi::{FaultKind, Op};
use shared_mm::boot_info::{GuestCommand, KERNEL_PHYS_BASE, MIN_GUEST_RAM};
use shared_mm::smp::{CpuSet, MAX_CPUS};
use shared_mm::trace::TraceEvent;
use std::time::{Duration, Instant};
use vmm::{Backends, VmmError};

/// The tests' config for `command` with `cpus` CPUs.
fn with_cpus(cpus: u32, command: GuestCommand) -> GuestConfig {
    GuestConfig {
        cpus,
        ..config(command)
    }
}

/// Boots `config`; panics if the VM cannot be set up.
fn run(config: &GuestConfig) -> Finished {
    boot(config).unwrap_or_else(|e| panic!("VM setup failed: {e}"))
}

/// Boots `config` and returns the error its run ended with, and how long the run took.
fn run_error(config: &GuestConfig) -> (VmmError, Duration) {
    let started = Instant::now();
    let finished = run(config);
    let took = started.elapsed();
    match finished.status {
        Ok(status) => panic!(
            "guest exited with status {status}, expected an error; console:\n{}",
            finished.vm.console_output()
        ),
        Err(e) => (e, took),
    }
}

/// Asserts that a VM of `cpus` CPUs runs the self-check's guest to exit 0, that every CPU came
/// online once with its index as APIC id, and that every AP served every ping CPU 0 sent.
fn every_cpu_comes_online_and_acknowledges(cpus: u32) {
    let finished = run(&with_cpus(cpus, GuestCommand::Serve));
    let console = finished.vm.console_output();
    assert_eq!(finished.status.ok(), Some(0), "console:\n{console}");
    let report = finished.vm.smp_report();
    let mut online = report.online.clone();
    assert_eq!(online.first(), Some(&0), "CPU 0 starts the others");
    online.sort_unstable();
    assert_eq!(online, (0..cpus).collect::<Vec<_>>(), "console:\n{console}");
    for cpu in 0..cpus {
        let line = format!("vmm: cpu {cpu} online (APIC id {cpu})");
        assert_eq!(
            console.matches(&line).count(),
            1,
            "{line}; console:\n{console}"
        );
    }
    // The host checked each AP served exactly the pings CPU 0 sent it (else the run fails).
    let trip = report
        .round_trip
        .as_ref()
        .expect("CPU 0 reports the round trip");
    assert_eq!(trip.targets, CpuSet::first(cpus).without(0));
    assert!(trip.pings > 0 && trip.median_cycles > trip.tsc_read_cycles);
    assert_eq!(console.matches("vmm: IPI round trip").count(), 1);
}

#[test]
fn two_cpus_boot_and_the_ap_reports_in_and_acknowledges_pings() {
    every_cpu_comes_online_and_acknowledges(2);
}

#[test]
fn four_cpus_boot_and_every_ap_reports_in_and_acknowledges_pings() {
    every_cpu_comes_online_and_acknowledges(4);
}

#[test]
fn the_most_cpus_fit_the_smallest_guest() {
    let config = GuestConfig {
        memory: MIN_GUEST_RAM,
        timeout: Some(Duration::from_secs(30)),
        ..with_cpus(MAX_CPUS, GuestCommand::Serve)
    };
    let finished = run(&config);
    let console = finished.vm.console_output();
    assert_eq!(finished.status.ok(), Some(0), "console:\n{console}");
    assert_eq!(finished.vm.smp_report().online.len(), MAX_CPUS as usize);
}

#[test]
fn one_cpu_is_as_before_with_no_smp_lines() {
    let finished = run(&config(GuestCommand::Serve));
    let console = finished.vm.console_output();
    assert_eq!(finished.status.ok(), Some(0), "console:\n{console}");
    assert_eq!(finished.vm.smp_report(), &Default::default());
    assert!(!console.contains("vmm: "), "console:\n{console}");
}

/// Asserts `err` is `what` on CPU `cpu`, with `exit` as its exit code and `needle` in its
/// message, and that the run ended well within the time limit (no thread was left waiting).
fn assert_on_cpu(err: &VmmError, cpu: u32, exit: i32, needle: &str) {
    let VmmError::Run(RunError::OnCpu { cpu: named, .. }) = err else {
        panic!("expected an error naming a CPU, got: {err}");
    };
    assert_eq!(*named, cpu, "{err}");
    assert_eq!(err.exit_code(), exit, "{err}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("on cpu {cpu}: ")), "{message}");
    assert!(message.contains(needle), "{message}");
}

#[test]
fn a_panic_on_an_ap_names_its_cpu() {
    let (err, took) = run_error(&with_cpus(2, GuestCommand::ApPanic));
    assert_on_cpu(&err, 1, 101, "guest panicked at");
    assert!(
        err.to_string().contains("panic requested by the host"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_triple_fault_on_an_ap_names_its_cpu_and_its_registers() {
    let (err, took) = run_error(&with_cpus(4, GuestCommand::ApTripleFault));
    assert_on_cpu(&err, 3, 102, "triple-faulted");
    assert!(err.to_string().contains("rip="), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// The tests' config for `command` with `cpus` CPUs and a time limit of one second.
fn timing_out(cpus: u32, command: GuestCommand) -> GuestConfig {
    GuestConfig {
        timeout: Some(Duration::from_secs(1)),
        ..with_cpus(cpus, command)
    }
}

#[test]
fn an_ap_that_never_reports_in_is_named_when_the_timeout_runs_out() {
    let (err, took) = run_error(&timing_out(3, GuestCommand::ApSilent));
    assert!(
        matches!(err, VmmError::Run(RunError::CpuOffline { cpu: 2, .. })),
        "{err}"
    );
    assert_eq!(err.exit_code(), 124);
    assert!(err
        .to_string()
        .contains("cpu 2 did not report in within 1 s"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_hang_on_cpu_0_times_out_and_stops_the_halted_aps() {
    let (err, took) = run_error(&timing_out(2, GuestCommand::Hang));
    assert!(
        matches!(err, VmmError::Run(RunError::Timeout { .. })),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_panic_on_cpu_0_names_it_when_there_are_several() {
    let (err, _) = run_error(&with_cpus(2, GuestCommand::Panic));
    assert_on_cpu(&err, 0, 101, "panic requested by the host");
}

/// With several CPUs the in-kernel irqchip keeps a halted CPU in KVM: a `hlt` with interrupts
/// off is reported as a halt (exit 103) once the timeout runs out, as one CPU's `hlt` exit is.
#[test]
fn a_halt_without_exit_is_reported_as_such_with_several_cpus() {
    let config = GuestConfig {
        kernel: minimal_elf(KERNEL_PHYS_BASE, &[0xf4]),
        ..timing_out(2, GuestCommand::Serve)
    };
    let (err, _) = run_error(&config);
    assert_on_cpu(&err, 0, 103, "guest halted without an exit hypercall");
}

#[test]
fn cpu_counts_out_of_range_are_refused_before_kvm() {
    for cpus in [0, MAX_CPUS + 1] {
        let config = GuestConfig {
            cpus,
            memory: TEST_MEMORY,
            ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
        };
        let err = vmm::Vm::new(&config).err().expect("refused");
        assert!(
            matches!(
                err,
                VmmError::Run(RunError::Boot(BootError::BadCpuCount { .. }))
            ),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}

#[test]
fn the_sim_refuses_several_cpus_in_one_line() {
    let config = GuestConfig {
        backend: mm_driver::Backend::Sim,
        ..with_cpus(2, GuestCommand::Serve)
    };
    let err = VmmError::from(Backends::default().boot(&config).err().expect("refused"));
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "the sim backend does not support several CPUs yet (--cpus 2); use --backend kvm"
    );
}

/// Rounds that shoot down a lazy CPU: CPU 1 writes a page of space 1 and goes idle with the
/// space loaded; CPU 0 unmaps the page, then protects the next one read-only; CPU 1 touches
/// both again.
fn shootdown_rounds() -> Vec<Vec<CpuBatch>> {
    const BASE: u64 = 0x40_0000;
    let urw = USER | READ | WRITE;
    let on = |cpu, ops: Vec<Op>| vec![CpuBatch { cpu, ops }];
    let write = |addr| Op::TouchWrite {
        space: 1,
        addr,
        value: 7,
    };
    vec![
        on(0, vec![Op::CreateSpace]),
        on(
            0,
            vec![Op::MapFixed {
                space: 1,
                addr: BASE,
                size: 4 * 4096,
                access: urw,
            }],
        ),
        on(1, vec![write(BASE), write(BASE + 4096)]),
        on(
            0,
            vec![
                Op::Unmap {
                    space: 1,
                    addr: BASE,
                    size: 4096,
                },
                Op::Protect {
                    space: 1,
                    addr: BASE + 4096,
                    size: 4096,
                    access: USER | READ,
                },
            ],
        ),
        on(1, vec![write(BASE), write(BASE + 4096)]),
    ]
}

/// Runs [`shootdown_rounds`] checked on kvm with two CPUs, with `bugs` planted (a guest
/// variant); returns the findings' rules, the trace and the results.
fn run_shootdown_rounds(bugs: &[&str]) -> (Vec<String>, RoundScript) {
    let mut config = with_cpus(2, GuestCommand::Serve);
    if !bugs.is_empty() {
        let elf = guest_image::variant::build_variant(bugs).unwrap_or_else(|e| panic!("{e}"));
        config.kernel = std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
    }
    let mut vm = Backends::default()
        .boot(&config)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut checked = Checked::new(RoundScript::new(shootdown_rounds()));
    let status = vm.run(&mut checked);
    assert_eq!(status.ok(), Some(0), "{}", vm.console_output());
    let rules = checked
        .findings
        .iter()
        .map(|(_, f)| f.rule.to_string())
        .collect();
    (rules, checked.into_inner())
}

#[test]
fn a_change_on_one_cpu_is_shot_down_on_the_other_before_anything_is_freed() {
    let (rules, script) = run_shootdown_rounds(&[]);
    assert!(rules.is_empty(), "{rules:?}");
    let last = script.results.last().expect("the last round ran");
    let faults: Vec<FaultKind> = last[0].1.iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [FaultKind::SegvNoRegion, FaultKind::SegvAccess],
        "CPU 1 sees the unmap and the protect"
    );
    let request = script.trace.iter().position(|r| {
        r.cpu == 0
            && matches!(r.event, TraceEvent::ShootdownRequest { targets, .. } if targets == CpuSet::EMPTY.with(1))
    });
    let ack = script
        .trace
        .iter()
        .position(|r| r.cpu == 1 && r.event == TraceEvent::ShootdownAck { sender: 0 });
    assert!(request.is_some() && request < ack, "{:?}", script.trace);
}

#[test]
fn every_seeded_shootdown_bug_is_seen_by_the_per_cpu_replay() {
    for bug in [
        "bug-shootdown-local-only",
        "bug-shootdown-misses-lazy",
        "bug-free-before-ack",
    ] {
        let (rules, _) = run_shootdown_rounds(&[bug]);
        assert!(
            rules.iter().any(|r| r == "frame-freed-while-cached"),
            "{bug}: {rules:?}"
        );
    }
}
