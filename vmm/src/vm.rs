//! One guest VM: memory, the loaded kernel, a vCPU in 64-bit mode, its devices and its run loop.

use crate::arch::{cpuid, regs};
use crate::backend::Backend;
use crate::boot_memory::{self, BootMemory};
use crate::driver::Driver;
use crate::error::{ProtocolError, VmmError};
use crate::gdb::{Claim, GdbServer, Stub, PACKET_BUFFER};
use crate::hypercall::{self, Next};
use crate::loader::LoadedKernel;
use crate::report_guard::{ReportBounds, ReportGuard};
use crate::serial::{ConsoleSink, SerialConsole, COM1_BASE, COM1_LEN};
use crate::trace;
use crate::watchdog::Watchdog;
use guest_mm::SeededBugs;
use kvm_bindings::{kvm_debug_exit_arch, kvm_userspace_memory_region, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use shared_mm::abi::{HYPERCALL_PORT, RAW_EXIT_PORT};
use shared_mm::boot_info::{GuestCommand, BOOT_INFO_ADDR};
use shared_mm::trace::TRACE_PORT;
use std::time::Duration;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The guest kernel built by vmm/build.rs and embedded in this binary.
pub static EMBEDDED_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_ELF"));

/// Where vmm/build.rs left that ELF, with its debug info, for gdb.
pub const EMBEDDED_KERNEL_PATH: &str = env!("GUEST_KERNEL_ELF");

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// How to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The kernel ELF image.
    pub kernel: Vec<u8>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Stop a guest that runs this long; `None` lets it run forever.
    pub timeout: Option<Duration>,
    /// Stream guest serial output to stdout (it is always captured too).
    pub echo_console: bool,
    /// Seed for the guest's randomized placement.
    pub random_seed: u64,
    /// What the guest does after boot.
    pub command: GuestCommand,
    /// Where the guest MM runs.
    pub backend: Backend,
    /// Whether the MM writes the flush trace (the TLB coherence checker needs it; the bench
    /// turns it off to measure its cost).
    pub trace: bool,
    /// Seeded bugs the sim backend plants at run time. Under KVM the kernel image carries its
    /// bugs (as cargo features), and this is ignored.
    pub seeded_bugs: SeededBugs,
    /// The gdb stub (`--gdb`): the first guest booted with it waits for gdb before its first
    /// instruction. KVM only.
    pub gdb: Option<GdbServer>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: EMBEDDED_KERNEL.to_vec(),
            memory: DEFAULT_MEMORY,
            timeout: Some(Duration::from_secs(60)),
            echo_console: false,
            random_seed: 0x5eed,
            command: GuestCommand::Serve,
            backend: Backend::Kvm,
            trace: true,
            seeded_bugs: SeededBugs::NONE,
            gdb: None,
        }
    }
}

/// A debugger attached to the run loop (the gdb stub, [`crate::gdb`]), at its two call-out
/// points.
pub trait Debugger {
    /// Before every KVM_RUN. While the debugger holds the guest stopped, it blocks here,
    /// reading and changing the vCPU (and guest memory, which it was given when it attached);
    /// it returns once the vCPU may run.
    fn before_run(&mut self, vcpu: &VcpuFd) -> Result<(), VmmError>;

    /// The vCPU stopped with KVM_EXIT_DEBUG (a breakpoint, a watchpoint, a step).
    fn on_debug_exit(&mut self, vcpu: &VcpuFd, exit: kvm_debug_exit_arch) -> Result<(), VmmError>;
}

/// A booted-but-not-yet-run guest.
pub struct Vm {
    // Kept alive for the VM's lifetime; the fds close on drop.
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    mem: GuestMemoryMmap,
    console: SerialConsole,
    cpuid: CpuId,
    kernel: LoadedKernel,
    timeout: Option<Duration>,
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
    driver.trace(mem, &events).map_err(VmmError::Driver)
}

impl Vm {
    /// Creates the VM, loads the kernel and prepares the vCPU for 64-bit entry.
    pub fn new(config: &VmConfig) -> Result<Vm, VmmError> {
        // Check the image before touching KVM, so a bad file is reported as such.
        boot_memory::check(config)?;
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().map_err(|source| VmmError::Kvm {
            what: "KVM_CREATE_VM",
            source,
        })?;
        let BootMemory {
            mem, kernel, cr3, ..
        } = boot_memory::prepare(config)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|source| VmmError::GuestMemory {
                    what: "mapping guest RAM into KVM",
                    source,
                })?;
            let mr = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
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

        let vcpu = vm.create_vcpu(0).map_err(|source| VmmError::Kvm {
            what: "KVM_CREATE_VCPU",
            source,
        })?;
        let cpuid = cpuid::set_supported_cpuid(&kvm, &vcpu)?;
        regs::setup_long_mode(&vcpu, cr3, kernel.entry, BOOT_INFO_ADDR)?;

        Ok(Vm {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            mem,
            console: SerialConsole::new(ConsoleSink::new(config.echo_console)),
            cpuid,
            kernel,
            timeout: config.timeout,
            gdb: config.gdb.as_ref().and_then(GdbServer::claim),
        })
    }

    /// Guest RAM, for introspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The CPUID table the vCPU was given.
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// Where the kernel was loaded.
    pub fn kernel(&self) -> LoadedKernel {
        self.kernel
    }

    /// The vCPU, for probes that run a throwaway VM by hand.
    pub(crate) fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// Everything the guest printed on COM1 so far.
    pub fn console_output(&self) -> String {
        self.console.sink().captured()
    }

    /// Runs the guest until it exits; returns its exit status. With a gdb stub claimed (see
    /// [`VmConfig::gdb`]) it first waits for gdb, and gdb can stop it at two call-out points of
    /// the run loop: before each KVM_RUN and at each debug exit.
    pub fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, VmmError> {
        let watchdog = self.timeout.map(Watchdog::start).transpose()?;
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
            Stub::accept(claim, &self.mem, &mut packets)?
        };
        let mut observed = stub.observe(driver);
        let result = self.run_loop(&mut observed, watchdog, Some(&mut stub));
        let _ended = watchdog.map(Watchdog::pause);
        stub.finish(&self.vcpu, result)
    }

    fn run_loop(
        &mut self,
        driver: &mut dyn Driver,
        watchdog: Option<&Watchdog>,
        mut debugger: Option<&mut dyn Debugger>,
    ) -> Result<u32, VmmError> {
        let mut log = self.console.sink().clone();
        // Every report the guest sends passes the guard before any driver keeps it.
        let mut guard = ReportGuard::new(driver, ReportBounds::for_memory(&self.mem));
        let driver: &mut dyn Driver = &mut guard;
        loop {
            if let Some(debugger) = debugger.as_mut() {
                // Time the debugger holds the guest stopped is not guest time.
                let _stopped = watchdog.map(Watchdog::pause);
                debugger.before_run(&self.vcpu)?;
            }
            if let Some(w) = watchdog.filter(|w| w.expired()) {
                return Err(VmmError::Timeout {
                    seconds: w.limit().as_secs_f64(),
                    registers: regs::dump(&self.vcpu),
                });
            }
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    return Err(VmmError::Kvm {
                        what: "KVM_RUN",
                        source,
                    })
                }
            };
            match exit {
                VcpuExit::IoOut(HYPERCALL_PORT, _) => {
                    if let Some(w) = watchdog {
                        w.pet();
                    }
                    deliver_trace(&self.mem, driver)?;
                    if let Next::Exit(status) = hypercall::handle(&self.mem, &mut log, driver)? {
                        return Ok(status);
                    }
                }
                VcpuExit::IoOut(TRACE_PORT, _) => deliver_trace(&self.mem, driver)?,
                VcpuExit::IoOut(RAW_EXIT_PORT, _) => {}
                VcpuExit::IoOut(port, data)
                    if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) =>
                {
                    let value = data.first().copied().unwrap_or(0);
                    self.console
                        .write((port - COM1_BASE) as u8, value)
                        .map_err(VmmError::Console)?;
                }
                VcpuExit::IoIn(port, data) => {
                    let value = if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) {
                        self.console.read((port - COM1_BASE) as u8)
                    } else {
                        0xff
                    };
                    data.fill(value);
                }
                VcpuExit::IoOut(..) => {}
                VcpuExit::Debug(exit) if debugger.is_some() => {
                    if let Some(debugger) = debugger.as_mut() {
                        debugger.on_debug_exit(&self.vcpu, exit)?;
                    }
                }
                VcpuExit::Hlt => {
                    return Err(VmmError::GuestHalted {
                        registers: regs::dump(&self.vcpu),
                    })
                }
                VcpuExit::Shutdown => {
                    return Err(VmmError::TripleFault {
                        registers: regs::dump(&self.vcpu),
                    })
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(VmmError::GuestProtocol(ProtocolError::EntryFailed {
                        reason,
                        cpu,
                    }))
                }
                VcpuExit::InternalError => {
                    return Err(VmmError::GuestProtocol(ProtocolError::KvmInternalError {
                        registers: regs::dump(&self.vcpu),
                    }))
                }
                other => {
                    let exit = format!("{other:?}");
                    return Err(VmmError::GuestProtocol(ProtocolError::UnexpectedExit {
                        exit,
                        registers: regs::dump(&self.vcpu),
                    }));
                }
            }
        }
    }
}
