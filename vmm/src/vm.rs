//! One guest VM: memory, the loaded kernel, its vCPUs in 64-bit mode, its devices and CPU 0's
//! run loop (the other CPUs' threads are [`crate::cpus`]).

use crate::arch::{cpuid, regs};
use crate::cpus::hold::Hold;
use crate::cpus::{Cpus, SmpReport};
use crate::dirty_log::DirtyLogged;
use crate::error::VmmError;
use crate::gdb::{Claim, GdbServer, Stub, PACKET_BUFFER};
use crate::hypercall::{self, Next};
use crate::report_guard::{ReportBounds, ReportGuard};
use crate::serial::SerialConsole;
use crate::trace;
use crate::vcpu_exit::{self, Exit};
use crate::watchdog::{guest_heartbeat, Watchdog};
use guest_boot::boot_memory::{self, BootMemory};
use guest_boot::loader::LoadedKernel;
use guest_boot::BootError;
use kvm_bindings::{
    kvm_debug_exit_arch, kvm_mp_state, kvm_userspace_memory_region, CpuId, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use mm_driver::console::ConsoleSink;
use mm_driver::driver::Driver;
use mm_driver::{Guest, GuestConfig, RunError};
use shared_mm::boot_info::BootInfo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// A debugger attached to CPU 0's run loop (the gdb stub, [`crate::gdb`]), at its two call-out
/// points; the other CPUs obey its [`Hold`].
pub trait Debugger {
    /// The all-stop hold every CPU of the VM obeys.
    fn hold(&self) -> Arc<Hold>;

    /// Before every KVM_RUN of CPU 0. While the debugger holds the guest stopped, it blocks
    /// here, reading and changing the vCPUs (the others parked in `cpus`' hold) and guest
    /// memory, which it was given when it attached; it returns once CPU 0 may run.
    fn before_run(&mut self, vcpu: &VcpuFd, cpus: &Cpus) -> Result<(), VmmError>;

    /// CPU 0 stopped with KVM_EXIT_DEBUG (a breakpoint, a watchpoint, a step).
    fn on_debug_exit(&mut self, vcpu: &VcpuFd, exit: kvm_debug_exit_arch) -> Result<(), VmmError>;
}

/// A booted-but-not-yet-run guest.
pub struct Vm {
    // Kept alive for the VM's lifetime; the fds close on drop.
    _kvm: Kvm,
    _vm: VmFd,
    /// CPU 0 first.
    vcpus: Vec<VcpuFd>,
    mem: GuestMemoryMmap,
    /// Every vCPU thread serves COM1.
    console: Mutex<SerialConsole>,
    cpuid: CpuId,
    kernel: LoadedKernel,
    /// The boot info the host wrote, for the driver (the guest may overwrite its copy).
    boot_info: BootInfo,
    timeout: Option<Duration>,
    /// The guest's TSC frequency, to tell its TSC readings in time.
    tsc_khz: Option<u32>,
    /// What the CPUs did in the last run.
    smp: SmpReport,
    /// The gdb listener this guest claimed, until its run accepts gdb on it.
    gdb: Option<Claim>,
}

fn open_kvm() -> Result<Kvm, VmmError> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err(VmmError::KvmUnavailable(
            "/dev/kvm does not exist: this host has no KVM (enable virtualization or load the kvm module)".into(),
        ));
    }
    Kvm::new().map_err(|e| {
        VmmError::KvmUnavailable(format!("cannot open /dev/kvm: {e} (check its permissions)"))
    })
}

/// Hands what the guest's flush trace holds to `driver`, emptying it.
fn deliver_trace(mem: &GuestMemoryMmap, driver: &mut dyn Driver) -> Result<(), VmmError> {
    let events = trace::drain(mem)?;
    if events.is_empty() {
        return Ok(());
    }
    driver.trace(mem, &events).map_err(VmmError::from)
}

impl Vm {
    /// Creates the VM, loads the kernel and prepares the vCPU for 64-bit entry.
    pub fn new(config: &GuestConfig) -> Result<Vm, VmmError> {
        // Check the image before touching KVM, so a bad file is reported as such.
        boot_memory::check(&config.boot_spec())?;
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().map_err(|source| VmmError::Kvm {
            what: "KVM_CREATE_VM",
            source,
        })?;
        let BootMemory {
            mem,
            kernel,
            cr3,
            info: boot_info,
        } = boot_memory::prepare(&config.boot_spec())?;
        register_memory(&vm, &mem, 0)?;

        let (vcpus, cpuid) = create_vcpus(&kvm, &vm, config.cpus, cr3, kernel.entry)?;
        let tsc_khz = vcpus[0].get_tsc_khz().ok();
        Ok(Vm {
            _kvm: kvm,
            _vm: vm,
            vcpus,
            mem,
            console: Mutex::new(SerialConsole::new(ConsoleSink::new(config.echo_console))),
            cpuid,
            kernel,
            boot_info,
            timeout: config.timeout,
            tsc_khz,
            smp: SmpReport::default(),
            gdb: None,
        })
    }

    /// Claims `server`'s gdb stub for this guest, if no guest claimed it before: its run then
    /// waits for gdb before the guest's first instruction.
    pub fn claim_gdb(&mut self, server: &GdbServer) {
        self.gdb = server.claim();
    }

    /// Guest RAM, for introspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The CPUID table CPU 0 was given.
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// Where the kernel was loaded.
    pub fn kernel(&self) -> LoadedKernel {
        self.kernel
    }

    /// CPU 0's vCPU, for probes that run a throwaway VM by hand.
    pub(crate) fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpus[0]
    }

    /// Everything the guest printed on COM1 so far, and what the VMM logged for it.
    pub fn console_output(&self) -> String {
        self.console_sink().captured()
    }

    /// What the CPUs did in the last run: which came online, and the IPI round trip.
    pub fn smp_report(&self) -> &SmpReport {
        &self.smp
    }

    fn console_sink(&self) -> ConsoleSink {
        let console = self.console.lock().unwrap_or_else(|e| e.into_inner());
        console.sink().clone()
    }

    /// Runs the guest until it exits; returns its exit status. With several CPUs each runs on a
    /// thread of its own, and every one has left KVM_RUN when this returns. With a gdb stub
    /// claimed (see [`Vm::claim_gdb`]) it first waits for gdb, and gdb can stop the guest at two
    /// call-out points of CPU 0's run loop (before each KVM_RUN and at each debug exit), where
    /// the stub parks every other CPU.
    pub fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, VmmError> {
        driver.booted(&self.boot_info);
        let heartbeat = || Some(guest_heartbeat(self.mem.clone()));
        let watchdog = self
            .timeout
            .map(|limit| Watchdog::start(limit, heartbeat()))
            .transpose()?;
        let result = match self.gdb.take() {
            None => self.run_loop(driver, watchdog.as_ref(), None),
            Some(claim) => self.run_debugged(claim, driver, watchdog.as_ref()),
        };
        if let Some(w) = watchdog {
            w.stop();
        }
        result
    }

    /// [`Vm::run`] under gdb: waits for gdb first, and tells it how the guest ended (the time
    /// spent with gdb, before and after, is not guest time).
    fn run_debugged(
        &mut self,
        claim: Claim,
        driver: &mut dyn Driver,
        watchdog: Option<&Watchdog>,
    ) -> Result<u32, VmmError> {
        let mut packets = [0u8; PACKET_BUFFER];
        let mut stub = {
            let _waiting = watchdog.map(Watchdog::pause);
            Stub::accept(claim, &self.mem, self.vcpus.len() as u32, &mut packets)?
        };
        let mut observed = stub.observe(driver);
        let result = self.run_loop(&mut observed, watchdog, Some(&mut stub));
        let _ended = watchdog.map(Watchdog::pause);
        stub.finish(&self.vcpus[0], result)
    }

    fn run_loop(
        &mut self,
        driver: &mut dyn Driver,
        watchdog: Option<&Watchdog>,
        debugger: Option<&mut dyn Debugger>,
    ) -> Result<u32, VmmError> {
        let log = self.console_sink();
        let Vm {
            _vm: vm,
            vcpus,
            mem,
            console,
            timeout,
            tsc_khz,
            ..
        } = self;
        let hold = debugger.as_ref().map(|d| d.hold());
        let cpus = Cpus::new(vcpus.len() as u32, *timeout, *tsc_khz, Some(vm), hold)?;
        let (vcpu, aps) = vcpus.split_first_mut().expect("a VM has CPU 0");
        let mut logged;
        let driver: &mut dyn Driver = if driver.wants_written() {
            register_memory(vm, mem, KVM_MEM_LOG_DIRTY_PAGES)?;
            logged = DirtyLogged { inner: driver, vm };
            &mut logged
        } else {
            driver
        };
        // Every report the guest sends passes the guard before any driver keeps it.
        let mut guard = ReportGuard::new(driver, ReportBounds::for_memory(mem));
        let driver: &mut dyn Driver = &mut guard;
        let (outcome, report) = cpus.run(aps, mem, console, |cpus| {
            let cpu0 = Cpu0 {
                vcpu,
                mem,
                console,
                cpus,
                log,
            };
            cpu0.run(driver, watchdog, debugger)
        });
        self.smp = report;
        outcome
    }
}

impl Guest for Vm {
    fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError> {
        Vm::run(self, driver).map_err(RunError::from)
    }

    fn memory(&self) -> &GuestMemoryMmap {
        Vm::memory(self)
    }

    fn console_output(&self) -> String {
        Vm::console_output(self)
    }
}

/// Gives KVM the guest's RAM, region `i` as slot `i`, with `flags` (`KVM_MEM_LOG_DIRTY_PAGES`
/// to keep a dirty log; setting a slot again changes its flags).
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|source| VmmError::GuestMemory {
                what: "mapping guest RAM into KVM",
                source,
            })?;
        let mr = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the Vm keeps until after the
        // VM fd is closed, so KVM never sees the mapping go away underneath it.
        unsafe { vm.set_user_memory_region(mr) }.map_err(|source| VmmError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(())
}

/// Creates the vCPUs of a VM of `count` CPUs, each ready to enter `entry` in 64-bit mode on the
/// boot tables at `cr3`; returns them, CPU 0 first, and the CPUID table KVM applied to CPU 0.
/// With more than one, KVM's in-kernel irqchip comes first (every vCPU gets a local APIC, and
/// HLT waits in the kernel), and the APs are made runnable: they start UNINITIALIZED and would
/// block in KVM_RUN. A one-CPU VM has no irqchip, so a `hlt` with interrupts off exits to the
/// VMM as it always did.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u32,
    cr3: u64,
    entry: u64,
) -> Result<(Vec<VcpuFd>, CpuId), VmmError> {
    let failed = |what| move |source| VmmError::Kvm { what, source };
    if count > 1 {
        let max = kvm.get_max_vcpus();
        if count as usize > max {
            return Err(VmmError::TooManyCpus {
                requested: count,
                max,
            });
        }
        vm.create_irq_chip().map_err(failed("KVM_CREATE_IRQCHIP"))?;
    }
    let supported = cpuid::supported_cpuid(kvm)?;
    let mut vcpus = Vec::new();
    let mut cpu0_cpuid = None;
    for cpu in 0..count {
        let vcpu = vm
            .create_vcpu(cpu.into())
            .map_err(failed("KVM_CREATE_VCPU"))?;
        let applied = cpuid::set_cpuid(&vcpu, &supported, cpu)?;
        regs::setup_long_mode(&vcpu, cr3, entry, cpu)?;
        if cpu > 0 {
            let runnable = kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            };
            vcpu.set_mp_state(runnable)
                .map_err(failed("KVM_SET_MP_STATE"))?;
        }
        cpu0_cpuid.get_or_insert(applied);
        vcpus.push(vcpu);
    }
    let cpuid = cpu0_cpuid.ok_or(BootError::BadCpuCount { requested: count })?;
    Ok((vcpus, cpuid))
}

/// CPU 0's run loop: it serves the driver's MM work, the flush trace and the debugger, and
/// starts the other CPUs when the guest asks.
struct Cpu0<'a, 'v> {
    vcpu: &'a mut VcpuFd,
    mem: &'a GuestMemoryMmap,
    console: &'a Mutex<SerialConsole>,
    cpus: &'a Cpus<'v>,
    log: ConsoleSink,
}

impl Cpu0<'_, '_> {
    /// Runs until the guest exits (its status), fails, or another CPU ends the VM (`None`).
    fn run(
        mut self,
        driver: &mut dyn Driver,
        watchdog: Option<&Watchdog>,
        mut debugger: Option<&mut dyn Debugger>,
    ) -> Result<Option<u32>, VmmError> {
        loop {
            if let Some(debugger) = debugger.as_mut() {
                // Time the debugger holds the guest stopped is not guest time.
                let _stopped = watchdog.map(Watchdog::pause);
                debugger.before_run(self.vcpu, self.cpus)?;
            }
            if self.cpus.stopped() {
                return Ok(None);
            }
            if let Some(w) = watchdog.filter(|w| w.expired()) {
                return Err(self.hang(w));
            }
            match vcpu_exit::run(self.vcpu, self.console)? {
                Exit::Hypercall => {
                    if let Some(w) = watchdog {
                        w.pet();
                    }
                    let next = {
                        // The driver's work (the trace, the model, the checker, the next batch)
                        // is host time: however long it takes, the guest did not hang.
                        let _host = watchdog.map(Watchdog::pause);
                        let rounds = self.cpus.rounds();
                        if rounds.is_none() {
                            deliver_trace(self.mem, driver)?;
                        }
                        hypercall::handle(self.mem, 0, &mut self.log, Some(driver), rounds)?
                    };
                    match next {
                        Next::Resume => {}
                        Next::Exit(status) => return Ok(Some(status)),
                        Next::Cpus(call) => {
                            let vcpu = &*self.vcpu;
                            let cpus = self.cpus;
                            let mut held = || match debugger.as_mut() {
                                Some(debugger) => {
                                    let _stopped = watchdog.map(Watchdog::pause);
                                    debugger.before_run(vcpu, cpus)
                                }
                                None => Ok(()),
                            };
                            let served = self.cpus.serve_held(0, call, &mut self.log, &mut held);
                            // Waiting for the other CPUs was host time.
                            if let Some(w) = watchdog {
                                w.pet();
                            }
                            if !served? {
                                return Ok(None);
                            }
                        }
                    }
                }
                Exit::FlushTrace => match self.cpus.rounds() {
                    Some(rounds) => rounds.queue_trace(trace::drain(self.mem)?),
                    None => deliver_trace(self.mem, driver)?,
                },
                Exit::Debug(exit) => match debugger.as_mut() {
                    Some(debugger) => debugger.on_debug_exit(self.vcpu, exit)?,
                    None => return Err(vcpu_exit::unexpected_debug(self.vcpu, exit)),
                },
                Exit::Resume => {}
            }
        }
    }

    /// The watchdog ran out. With several CPUs, where HLT waits in the kernel, a CPU 0 halted
    /// with interrupts off is what a `hlt` exit is with one: a guest halted without exiting.
    fn hang(&self, watchdog: &Watchdog) -> VmmError {
        let registers = regs::dump(self.vcpu);
        let halted = self
            .vcpu
            .get_mp_state()
            .is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
        let interrupts_off = self
            .vcpu
            .get_regs()
            .is_ok_and(|r| r.rflags & RFLAGS_IF == 0);
        if self.cpus.count() > 1 && halted && interrupts_off {
            RunError::GuestHalted { registers }.into()
        } else {
            RunError::Timeout {
                seconds: watchdog.limit().as_secs_f64(),
                registers,
            }
            .into()
        }
    }
}
