//! The gdbstub target: the stopped vCPU's registers, guest memory at virtual addresses,
//! breakpoints (debug registers first, `int3` where the probe says it works), watchpoints,
//! step and continue, and the `monitor` commands. gdb only ever sees the vCPU stopped: its
//! registers are read at the stop and written back, if gdb changed them, when it resumes.

use super::breakpoints::{Breakpoints, Hit, Origin, Planted, Watching, SLOTS};
use super::memory::{physical, read_virtual, write_virtual};
use super::monitor::{self, Stopped};
use super::observer::SharedView;
use super::probe::{data_breakpoints_work, software_breakpoints_work, BREAKPOINT_VECTOR, INT3};
use super::registers::{SystemRegs, VcpuState, X86_64System};
use super::GdbError;
use gdbstub::common::Signal;
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints as BreakpointsExt, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint,
    HwWatchpointOps, SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::kvm_debug_exit_arch;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A stop reason as gdbstub reports it.
pub type StopReason = SingleThreadStopReason<u64>;

/// EFAULT, gdb's "cannot access memory".
const EFAULT: u8 = 14;

/// The vCPU's state while it is stopped.
struct Frozen {
    state: VcpuState,
    /// gdb wrote registers: write them back before the guest runs.
    dirty: bool,
}

/// What a debug exit means for the session.
#[derive(Debug)]
pub enum DebugExit {
    /// Report this to gdb.
    Stop(StopReason),
    /// The guest's own `int3`, caught only because a software breakpoint is planted: give it
    /// back to the guest.
    GuestBreakpoint,
    /// A step taken only to watch a value, which did not change: run on.
    RunOn,
}

/// What the probes measured about this KVM, each once, when first needed.
#[derive(Debug, Default)]
struct Capabilities {
    software_breakpoints: Option<bool>,
    data_breakpoints: Option<bool>,
    /// The user has been told that watchpoints single-step the guest.
    told_stepping: bool,
}

/// A probe's answer: measured the first time, remembered after.
fn probed(
    answer: &mut Option<bool>,
    probe: fn() -> Result<bool, crate::VmmError>,
    what: &str,
) -> bool {
    *answer.get_or_insert_with(|| {
        let works = probe().unwrap_or(false);
        let verdict = if works {
            "work"
        } else {
            "do not work on this KVM"
        };
        eprintln!("vmm: gdb: probed {what}: they {verdict}");
        works
    })
}

/// The little-endian value of the `len` (at most 8) bytes at `va`; `None` when unmapped.
fn value_at(mem: &GuestMemoryMmap, cr3: u64, va: u64, len: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    let want = &mut bytes[..len as usize];
    let n = read_virtual(mem, cr3, va, want).ok()?;
    (n == want.len()).then(|| u64::from_le_bytes(bytes))
}

/// The guest as gdb sees it through the stub.
pub struct GuestTarget {
    mem: GuestMemoryMmap,
    frozen: Option<Frozen>,
    breakpoints: Breakpoints,
    /// Single-step (`true`) or continue when the guest runs next.
    step: bool,
    capabilities: Capabilities,
    view: SharedView,
}

impl GuestTarget {
    pub fn new(mem: GuestMemoryMmap, view: SharedView) -> Self {
        GuestTarget {
            mem,
            frozen: None,
            breakpoints: Breakpoints::default(),
            step: false,
            capabilities: Capabilities::default(),
            view,
        }
    }

    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// Reads the stopped vCPU's registers, for gdb.
    pub fn freeze(&mut self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        self.frozen = Some(Frozen {
            state: VcpuState::read(vcpu)?,
            dirty: false,
        });
        Ok(())
    }

    /// Writes back what gdb changed and arms the breakpoints and the step gdb asked for.
    pub fn thaw(&mut self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        if let Some(frozen) = self.frozen.take() {
            if frozen.dirty {
                frozen.state.write(vcpu)?;
            }
        }
        let debug = self.breakpoints.guest_debug(self.step);
        vcpu.set_guest_debug(&debug)
            .map_err(GdbError::kvm("KVM_SET_GUEST_DEBUG"))
    }

    /// gdb is gone: every `int3` comes out, every debug register is freed, and the guest runs
    /// on undisturbed.
    pub fn release(&mut self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        for planted in self.breakpoints.unplant_all() {
            // A byte that cannot be restored was outside RAM when planted too: nothing to undo.
            let _ = self
                .mem
                .write_slice(&[planted.saved], GuestAddress(planted.phys));
        }
        self.breakpoints.clear_slots();
        self.step = false;
        self.thaw(vcpu)
    }

    /// What a `KVM_EXIT_DEBUG` means. Looks at the values of stepped watchpoints too (in the
    /// address space active now).
    pub fn debug_exit(
        &mut self,
        vcpu: &VcpuFd,
        exit: &kvm_debug_exit_arch,
    ) -> Result<DebugExit, GdbError> {
        if exit.exception == BREAKPOINT_VECTOR {
            return Ok(if self.breakpoints.is_planted(exit.pc) {
                DebugExit::Stop(StopReason::SwBreak(()))
            } else {
                DebugExit::GuestBreakpoint
            });
        }
        let changed = if self.breakpoints.needs_stepping() {
            let cr3 = vcpu
                .get_sregs()
                .map_err(GdbError::kvm("KVM_GET_SREGS"))?
                .cr3;
            let mem = &self.mem;
            self.breakpoints
                .stepped_change(|va, len| value_at(mem, cr3, va, len))
        } else {
            None
        };
        let watch = |kind, addr| {
            DebugExit::Stop(StopReason::Watch {
                tid: (),
                kind,
                addr,
            })
        };
        Ok(match (self.breakpoints.hit(exit.dr6), changed) {
            (Some(Hit::Watch { kind, addr }), _) | (_, Some(Hit::Watch { kind, addr })) => {
                watch(kind, addr)
            }
            (Some(Hit::Breakpoint), _) => DebugExit::Stop(StopReason::HwBreak(())),
            _ if self.step => DebugExit::Stop(StopReason::DoneStep),
            _ if self.breakpoints.needs_stepping() => DebugExit::RunOn,
            _ => DebugExit::Stop(StopReason::Signal(Signal::SIGTRAP)),
        })
    }

    /// Gives the guest back its own #BP on its next entry.
    pub fn reinject_breakpoint(&self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        let debug = self.breakpoints.reinject_breakpoint(self.step);
        vcpu.set_guest_debug(&debug)
            .map_err(GdbError::kvm("KVM_SET_GUEST_DEBUG"))
    }

    fn frozen(&self) -> Result<&VcpuState, GdbError> {
        self.frozen
            .as_ref()
            .map(|f| &f.state)
            .ok_or(GdbError::NotStopped)
    }

    fn cr3(&self) -> Result<u64, GdbError> {
        self.frozen().map(|s| s.sregs.cr3)
    }

    /// Whether `int3` works in ring 0 here; probes on first use.
    fn software_works(&mut self) -> bool {
        let answer = &mut self.capabilities.software_breakpoints;
        probed(
            answer,
            software_breakpoints_work,
            "software breakpoints in guest ring 0",
        )
    }

    /// Whether data breakpoints fire here; probes on first use.
    fn data_breakpoints_work(&mut self) -> bool {
        let answer = &mut self.capabilities.data_breakpoints;
        probed(
            answer,
            data_breakpoints_work,
            "data breakpoints (watchpoints) in DR0-DR3",
        )
    }

    fn plant(&mut self, va: u64) -> TargetResult<bool, Self> {
        let cr3 = self.cr3().map_err(TargetError::Fatal)?;
        let Ok(phys) = physical(&self.mem, cr3, va) else {
            return Err(TargetError::Errno(EFAULT));
        };
        let mut saved = [0u8];
        self.mem
            .read_slice(&mut saved, GuestAddress(phys))
            .and_then(|()| self.mem.write_slice(&[INT3], GuestAddress(phys)))
            .map_err(|_| TargetError::Errno(EFAULT))?;
        let saved = saved[0];
        self.breakpoints.plant(va, Planted { phys, saved });
        Ok(true)
    }
}

/// Tells the VMM's user why gdb got an error for a breakpoint it asked for.
fn refused(what: &str, addr: u64) {
    eprintln!(
        "vmm: gdb: cannot insert {what} at {addr:#x}: all {SLOTS} debug registers (DR0-DR3) are \
         in use; delete or disable one"
    );
}

impl Target for GuestTarget {
    type Arch = X86_64System;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for GuestTarget {
    fn read_registers(&mut self, regs: &mut SystemRegs) -> TargetResult<(), Self> {
        *regs = self.frozen().map_err(TargetError::Fatal)?.as_gdb();
        Ok(())
    }

    fn write_registers(&mut self, regs: &SystemRegs) -> TargetResult<(), Self> {
        let frozen = self
            .frozen
            .as_mut()
            .ok_or(TargetError::Fatal(GdbError::NotStopped))?;
        frozen.state.apply(regs).map_err(|_| {
            eprintln!("vmm: gdb: refused a register write that changes a segment selector");
            TargetError::NonFatal
        })?;
        frozen.dirty = true;
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let cr3 = self.cr3().map_err(TargetError::Fatal)?;
        read_virtual(&self.mem, cr3, start, data).map_err(|_| TargetError::Errno(EFAULT))
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        let cr3 = self.cr3().map_err(TargetError::Fatal)?;
        write_virtual(&self.mem, cr3, start, data).map_err(|_| TargetError::Errno(EFAULT))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GuestTarget {
    /// The guest has no signals to deliver: a signal gdb passes is ignored.
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), GdbError> {
        self.step = false;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for GuestTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), GdbError> {
        self.step = true;
        Ok(())
    }
}

impl BreakpointsExt for GuestTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

/// gdb's `break` (Z0): a debug register when one is free, else an `int3` where the backend
/// runs them.
impl SwBreakpoint for GuestTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breakpoints.add_execute(addr, Origin::Break) {
            return Ok(true);
        }
        if self.software_works() {
            return self.plant(addr);
        }
        refused("a breakpoint", addr);
        Ok(false)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breakpoints.remove_execute(addr, Origin::Break) {
            return Ok(true);
        }
        let Some(planted) = self.breakpoints.unplant(addr) else {
            return Ok(false);
        };
        self.mem
            .write_slice(&[planted.saved], GuestAddress(planted.phys))
            .map_err(|_| TargetError::Errno(EFAULT))?;
        Ok(true)
    }
}

/// gdb's `hbreak` (Z1): a debug register or nothing.
impl HwBreakpoint for GuestTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let added = self.breakpoints.add_execute(addr, Origin::HardwareBreak);
        if !added {
            refused("a hardware breakpoint", addr);
        }
        Ok(added)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove_execute(addr, Origin::HardwareBreak))
    }
}

/// gdb's `watch`, `rwatch` and `awatch` (Z2-Z4), in debug registers. Where the backend fires
/// no data breakpoints, `watch` (writes) still works, by single-stepping; reads cannot be seen.
impl HwWatchpoint for GuestTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let how = if self.data_breakpoints_work() {
            Watching::Register
        } else if kind == WatchKind::Write {
            Watching::Stepping { last: None }
        } else {
            eprintln!(
                "vmm: gdb: cannot watch reads of {addr:#x}: this KVM fires no data breakpoints, \
                 and single-stepping sees only writes; use `watch`"
            );
            return Ok(false);
        };
        let added = self.breakpoints.add_watch(addr, len, kind, how);
        if !added {
            refused(&format!("a {len}-byte watchpoint"), addr);
        }
        if added && how != Watching::Register {
            let cr3 = self.cr3().map_err(TargetError::Fatal)?;
            let mem = &self.mem;
            // Every piece starts from its value now.
            self.breakpoints
                .stepped_change(|va, len| value_at(mem, cr3, va, len));
            if !std::mem::replace(&mut self.capabilities.told_stepping, true) {
                eprintln!(
                    "vmm: gdb: this KVM fires no data breakpoints, so write watchpoints are \
                     watched by single-stepping the guest: expect it to run much slower"
                );
            }
        }
        Ok(added)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove_watch(addr, len, kind))
    }
}

impl MonitorCmd for GuestTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), GdbError> {
        let text = match std::str::from_utf8(cmd) {
            Err(_) => "error: the command is not UTF-8\n".to_string(),
            Ok(line) => match monitor::parse(line) {
                Err(e) => format!("error: {e} (`monitor help` lists the commands)\n"),
                Ok(command) => {
                    let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
                    let stopped = Stopped {
                        mem: &self.mem,
                        view: &view,
                        cr3: self.cr3()?,
                    };
                    stopped.run(command)
                }
            },
        };
        out.write_raw(text.as_bytes());
        Ok(())
    }
}
