//! The gdbstub target: each vCPU a thread (tid = cpu + 1) with its parked registers, guest
//! memory at virtual addresses through the CR3 of the thread gdb asks about, breakpoints (debug
//! registers first, `int3` where the probe says it works) and watchpoints armed on every vCPU,
//! gdb's resume actions per thread, and the `monitor` commands. gdb only ever sees the vCPUs
//! stopped: their registers are read when they park ([`Hold`]) and written back, if gdb changed
//! them, by each vCPU's own thread before it runs.

use super::breakpoints::{Breakpoints, Hit, Origin, Planted, Watching, SLOTS};
use super::cpu_listing::{self, CpuLine};
use super::memory::{physical, read_virtual, write_virtual};
use super::monitor::{self, Stopped};
use super::observer::SharedView;
use super::probe::{
    data_breakpoints_work, software_breakpoints_work, steps_can_block_interrupts,
    BREAKPOINT_VECTOR, INT3,
};
use super::registers::{SystemRegs, VcpuState, X86_64System};
use super::GdbError;
use crate::cpus::hold::Hold;
use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints as BreakpointsExt, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint,
    HwWatchpointOps, SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::{kvm_debug_exit_arch, kvm_guest_debug};
use kvm_ioctls::VcpuFd;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A stop reason as gdbstub reports it.
pub type StopReason = MultiThreadStopReason<u64>;

/// EFAULT, gdb's "cannot access memory".
const EFAULT: u8 = 14;

/// gdb's thread id of CPU `cpu`: gdb's ids start at 1.
pub fn tid_of(cpu: u32) -> Tid {
    Tid::new(cpu as usize + 1).expect("cpu + 1 is not zero")
}

/// The CPU of gdb's thread `tid`.
fn cpu_of(tid: Tid) -> u32 {
    u32::try_from(tid.get() - 1).unwrap_or(u32::MAX)
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

/// What gdb asked one thread to do when the guest resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Continue,
    Step,
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
    breakpoints: Breakpoints,
    capabilities: Capabilities,
    view: SharedView,
    /// Where every vCPU parks while the guest is stopped.
    hold: Arc<Hold>,
    /// gdb's resume actions, by CPU (`None`: no action named the thread).
    actions: Vec<Option<Action>>,
    /// Threads no action named stay stopped (gdb's scheduler-locking); else they continue.
    locked: bool,
    /// The CPUs that single-step on this resume: their next debug exit is a finished step.
    stepping: Vec<bool>,
    /// The CPUs whose own `int3` goes back to the guest when they run next.
    reinject: Vec<bool>,
    /// The CPU whose stop gdb heard last: `monitor` commands look at its CR3.
    stopped: u32,
}

impl GuestTarget {
    pub fn new(mem: GuestMemoryMmap, view: SharedView, hold: Arc<Hold>, cpus: u32) -> Self {
        let cpus = cpus.max(1) as usize;
        let mut breakpoints = Breakpoints::default();
        if steps_can_block_interrupts() {
            breakpoints.block_interrupts_on_step();
        }
        GuestTarget {
            mem,
            breakpoints,
            capabilities: Capabilities::default(),
            view,
            hold,
            actions: vec![Some(Action::Continue); cpus],
            locked: false,
            stepping: vec![false; cpus],
            reinject: vec![false; cpus],
            stopped: 0,
        }
    }

    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    pub fn hold(&self) -> Arc<Hold> {
        self.hold.clone()
    }

    /// The CPUs of the VM.
    fn cpus(&self) -> u32 {
        self.actions.len() as u32
    }

    /// Notes the CPU whose stop gdb hears about.
    pub fn set_stopped(&mut self, cpu: u32) {
        self.stopped = cpu;
    }

    /// Reads CPU 0's registers (the stub's own vCPU), for gdb.
    pub fn freeze(&mut self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        self.hold.park_cpu0(VcpuState::read(vcpu)?);
        Ok(())
    }

    /// Whether CPU `cpu` runs on this resume, and whether it single-steps.
    fn plan(&self, cpu: u32) -> Option<bool> {
        match self.actions.get(cpu as usize).copied().flatten() {
            Some(Action::Step) => Some(true),
            Some(Action::Continue) => Some(false),
            None if self.locked => None,
            None => Some(false),
        }
    }

    /// What CPU `cpu` runs with when it steps (`step`) or not.
    fn debug_for(&mut self, cpu: u32, step: bool) -> kvm_guest_debug {
        let reinject = self.reinject.get_mut(cpu as usize).map(std::mem::take);
        if reinject == Some(true) {
            self.breakpoints.reinject_breakpoint(step)
        } else {
            self.breakpoints.guest_debug(step)
        }
    }

    /// Resumes the guest as gdb's actions say: every AP is let go or kept parked, and CPU 0's
    /// registers and breakpoints are written back if it runs. Returns whether CPU 0 runs.
    pub fn thaw(&mut self, vcpu: &VcpuFd) -> Result<bool, GdbError> {
        for cpu in 0..self.cpus() {
            let step = self.plan(cpu);
            self.stepping[cpu as usize] = step == Some(true);
            if cpu > 0 {
                let debug = step.map(|step| self.debug_for(cpu, step));
                self.hold.release(cpu, debug);
            }
        }
        let joining = self.breakpoints.guest_debug(false);
        self.hold.set_joining_debug(joining);
        let Some(step) = self.plan(0) else {
            return Ok(false);
        };
        if let Some(changed) = self.hold.unpark_cpu0() {
            changed.write(vcpu)?;
        }
        let debug = self.debug_for(0, step);
        vcpu.set_guest_debug(&debug)
            .map_err(GdbError::kvm("KVM_SET_GUEST_DEBUG"))?;
        Ok(true)
    }

    /// gdb is gone: every `int3` comes out, every debug register is freed, and every vCPU runs
    /// on undisturbed.
    pub fn release(&mut self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        for planted in self.breakpoints.unplant_all() {
            // A byte that cannot be restored was outside RAM when planted too: nothing to undo.
            let _ = self
                .mem
                .write_slice(&[planted.saved], GuestAddress(planted.phys));
        }
        self.breakpoints.clear_slots();
        self.actions.fill(Some(Action::Continue));
        self.reinject.fill(false);
        self.hold.detach();
        self.thaw(vcpu).map(|_| ())
    }

    /// What a `KVM_EXIT_DEBUG` of CPU `cpu` means. Looks at the values of stepped watchpoints
    /// too, in the address space `cr3` gives (read only then).
    pub fn debug_exit(
        &mut self,
        cpu: u32,
        cr3: impl FnOnce() -> Result<u64, GdbError>,
        exit: &kvm_debug_exit_arch,
    ) -> Result<DebugExit, GdbError> {
        let tid = tid_of(cpu);
        if exit.exception == BREAKPOINT_VECTOR {
            return Ok(if self.breakpoints.is_planted(exit.pc) {
                DebugExit::Stop(StopReason::SwBreak(tid))
            } else {
                DebugExit::GuestBreakpoint
            });
        }
        let changed = if self.breakpoints.needs_stepping() {
            let cr3 = cr3()?;
            let mem = &self.mem;
            self.breakpoints
                .stepped_change(|va, len| value_at(mem, cr3, va, len))
        } else {
            None
        };
        let stepping = self.stepping.get(cpu as usize).copied().unwrap_or(false);
        let trap = StopReason::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        };
        Ok(match (self.breakpoints.hit(exit.dr6), changed) {
            (Some(Hit::Watch { kind, addr }), _) | (_, Some(Hit::Watch { kind, addr })) => {
                DebugExit::Stop(StopReason::Watch { tid, kind, addr })
            }
            (Some(Hit::Breakpoint), _) => DebugExit::Stop(StopReason::HwBreak(tid)),
            _ if stepping => DebugExit::Stop(trap),
            _ if self.breakpoints.needs_stepping() => DebugExit::RunOn,
            _ => DebugExit::Stop(trap),
        })
    }

    /// Gives CPU 0 back its own #BP on its next entry.
    pub fn reinject_breakpoint(&self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        let step = self.stepping.first().copied().unwrap_or(false);
        let debug = self.breakpoints.reinject_breakpoint(step);
        vcpu.set_guest_debug(&debug)
            .map_err(GdbError::kvm("KVM_SET_GUEST_DEBUG"))
    }

    /// Gives AP `cpu` back its own #BP when it runs next.
    pub fn reinject_on(&mut self, cpu: u32) {
        if let Some(flag) = self.reinject.get_mut(cpu as usize) {
            *flag = true;
        }
    }

    /// The parked registers of gdb's thread `tid`.
    fn parked(&self, tid: Tid) -> Result<VcpuState, GdbError> {
        self.hold.registers(cpu_of(tid)).ok_or(GdbError::NotStopped)
    }

    fn cr3(&self, tid: Tid) -> Result<u64, GdbError> {
        self.parked(tid).map(|s| s.sregs.cr3)
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

    /// An `int3` at `va`, in the address space of the CPU that stopped (the kernel's text is
    /// mapped alike in every space).
    fn plant(&mut self, va: u64) -> TargetResult<bool, Self> {
        let cr3 = self.cr3(tid_of(self.stopped)).map_err(TargetError::Fatal)?;
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

    /// gdb's resume action for thread `tid` (a thread of no CPU is ignored).
    fn set_action(&mut self, tid: Tid, action: Action) {
        if let Some(slot) = self.actions.get_mut(cpu_of(tid) as usize) {
            *slot = Some(action);
        }
    }

    /// Every CPU gdb sees, for `monitor cpus`.
    fn cpu_lines(&self) -> Vec<CpuLine> {
        self.hold
            .present()
            .into_iter()
            .map(|cpu| CpuLine {
                cpu,
                stopped: cpu == self.stopped,
                state: self.hold.registers(cpu),
            })
            .collect()
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
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for GuestTarget {
    fn read_registers(&mut self, regs: &mut SystemRegs, tid: Tid) -> TargetResult<(), Self> {
        *regs = self
            .parked(tid)
            .map_err(|_| TargetError::NonFatal)?
            .as_gdb();
        Ok(())
    }

    fn write_registers(&mut self, regs: &SystemRegs, tid: Tid) -> TargetResult<(), Self> {
        let mut state = self.parked(tid).map_err(|_| TargetError::NonFatal)?;
        state.apply(regs).map_err(|_| {
            eprintln!("vmm: gdb: refused a register write that changes a segment selector");
            TargetError::NonFatal
        })?;
        if !self.hold.set_registers(cpu_of(tid), state) {
            return Err(TargetError::NonFatal);
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let cr3 = self.cr3(tid).map_err(|_| TargetError::Errno(EFAULT))?;
        read_virtual(&self.mem, cr3, start, data).map_err(|_| TargetError::Errno(EFAULT))
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let cr3 = self.cr3(tid).map_err(|_| TargetError::Errno(EFAULT))?;
        write_virtual(&self.mem, cr3, start, data).map_err(|_| TargetError::Errno(EFAULT))
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), GdbError> {
        self.hold
            .present()
            .into_iter()
            .for_each(|cpu| active(tid_of(cpu)));
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

/// gdb's `info threads` column: the CPU, its ring, its CR3 and the space loaded there.
impl ThreadExtraInfo for GuestTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, GdbError> {
        let cpu = cpu_of(tid);
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let text = cpu_listing::extra_info(cpu, self.hold.registers(cpu).as_ref(), &view);
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

/// gdb's resume actions. The guest has no signals to deliver: a signal gdb passes is ignored.
/// A thread no action names continues, unless gdb locks the scheduler: then it stays stopped.
impl MultiThreadResume for GuestTarget {
    fn resume(&mut self) -> Result<(), GdbError> {
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), GdbError> {
        self.actions.fill(None);
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), GdbError> {
        self.set_action(tid, Action::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GuestTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), GdbError> {
        self.set_action(tid, Action::Step);
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for GuestTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), GdbError> {
        self.locked = true;
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
            let cr3 = self.cr3(tid_of(self.stopped)).map_err(TargetError::Fatal)?;
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
                        cr3: self.cr3(tid_of(self.stopped))?,
                        cpus: &self.cpu_lines(),
                    };
                    stopped.run(command)
                }
            },
        };
        out.write_raw(text.as_bytes());
        Ok(())
    }
}
