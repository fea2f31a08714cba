//! The all-stop hold of a debugged VM: how the gdb stub (on CPU 0's thread) parks the other
//! vCPUs' threads outside KVM_RUN, reads and changes their registers while they are parked,
//! and lets them run again with the breakpoints it asks for.
//!
//! Each CPU has a seat. The stub asks every seat to hold ([`Hold::hold_all`]) and kicks the
//! threads until each present CPU has parked (or the VM ended). A parked CPU publishes its
//! registers, read on its own thread, and waits for orders: the registers gdb changed, written
//! back by the CPU itself, and the `KVM_SET_GUEST_DEBUG` setting it runs with. An AP's debug
//! exit parks it too, with the exit as its report for the stub, which it kicks until the stub
//! has seen it. A CPU that is asked to hold but not told to run (gdb's scheduler-locking)
//! stays parked. The VM's end or gdb's departure ([`Hold::detach`]) releases every seat.

use crate::error::VmmError;
use crate::gdb::VcpuState;
use crate::kick::Kick;
use kvm_bindings::{kvm_debug_exit_arch, kvm_guest_debug};
use kvm_ioctls::VcpuFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a waiting side sleeps before it looks (and kicks) again.
const RECHECK: Duration = Duration::from_millis(5);

/// What a parked CPU does when it is let go.
#[derive(Clone, Copy, Debug)]
pub struct Orders {
    /// Registers gdb changed, written back before the CPU runs.
    pub registers: Option<VcpuState>,
    /// What the CPU runs with: breakpoints, a single step.
    pub debug: kvm_guest_debug,
}

/// One CPU's place in the hold.
#[derive(Default)]
struct Seat {
    /// The CPU's loop runs (CPU 0 always; an AP once CPU 0 started the others).
    present: bool,
    /// Its loop has ended.
    ended: bool,
    /// Asked to park before its next KVM_RUN.
    hold: bool,
    /// Parked, with these registers.
    parked: Option<VcpuState>,
    /// gdb changed the parked registers.
    dirty: bool,
    /// A debug exit the stub has not looked at yet.
    report: Option<kvm_debug_exit_arch>,
    /// Orders waiting for the parked CPU to take them.
    orders: Option<Orders>,
}

struct State {
    seats: Vec<Seat>,
    /// The setting a CPU that joins (an AP that starts) runs with.
    debug: Option<kvm_guest_debug>,
    /// A debugger still watches (cleared when gdb leaves).
    attached: bool,
}

/// The hold of one VM's CPUs, shared by the stub and every vCPU thread.
pub struct Hold {
    /// Some seat is asked to hold: the fast look before each KVM_RUN.
    held: AtomicBool,
    /// Some seat has a report.
    reports: AtomicBool,
    /// The VM ended: no CPU parks any more.
    ended: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Hold {
    /// The hold of a VM of `count` CPUs, under a debugger; CPU 0 (the stub's) is present.
    pub fn new(count: u32) -> Hold {
        let mut seats: Vec<Seat> = (0..count.max(1)).map(|_| Seat::default()).collect();
        seats[0].present = true;
        Hold {
            held: AtomicBool::new(false),
            reports: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            state: Mutex::new(State {
                seats,
                debug: None,
                attached: true,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let waited = self.changed.wait_timeout(state, RECHECK);
        waited.unwrap_or_else(|e| e.into_inner()).0
    }

    fn recompute(&self, state: &State) {
        let held = state.seats.iter().any(|s| s.hold);
        self.held.store(held, Ordering::Release);
        let reports = state.seats.iter().any(|s| s.report.is_some());
        self.reports.store(reports, Ordering::Release);
        self.changed.notify_all();
    }

    // --- the vCPU threads' side ---

    /// AP `cpu`'s loop starts: returns the setting it must run with, if gdb set one.
    pub fn enter(&self, cpu: u32) -> Option<kvm_guest_debug> {
        let mut state = self.lock();
        let debug = state.debug;
        if let Some(seat) = state.seats.get_mut(cpu as usize) {
            seat.present = true;
        }
        self.changed.notify_all();
        debug
    }

    /// CPU `cpu`'s loop has ended: nobody waits for it to park. A CPU that failed leaves its
    /// `last` registers, for gdb to look at where it failed.
    pub fn leave(&self, cpu: u32, last: Option<VcpuState>) {
        let mut state = self.lock();
        if let Some(seat) = state.seats.get_mut(cpu as usize) {
            seat.ended = true;
            seat.hold = false;
            if last.is_some() {
                seat.parked = last;
            }
        }
        self.recompute(&state);
    }

    /// The VM ended: every parked CPU wakes, and none parks again.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let _state = self.lock();
        self.changed.notify_all();
    }

    /// Before AP `cpu` enters KVM_RUN: parks if the stub asked it to.
    pub fn park_if_asked(&self, cpu: u32, vcpu: &VcpuFd, cpu0: &Kick) -> Result<(), VmmError> {
        if !self.held.load(Ordering::Acquire) {
            return Ok(());
        }
        let asked = self
            .lock()
            .seats
            .get(cpu as usize)
            .is_some_and(|seat| seat.hold);
        if asked {
            self.park(cpu, vcpu, None, cpu0)?;
        }
        Ok(())
    }

    /// AP `cpu` stopped with a debug exit: parks with it as its report, kicking CPU 0's thread
    /// (`cpu0`) until the stub has taken it. Without a debugger any more, the exit is ignored.
    pub fn report(
        &self,
        cpu: u32,
        vcpu: &VcpuFd,
        exit: kvm_debug_exit_arch,
        cpu0: &Kick,
    ) -> Result<(), VmmError> {
        self.park(cpu, vcpu, Some(exit), cpu0)
    }

    /// Publishes the registers, waits for orders (or the VM's end), and carries them out.
    fn park(
        &self,
        cpu: u32,
        vcpu: &VcpuFd,
        report: Option<kvm_debug_exit_arch>,
        cpu0: &Kick,
    ) -> Result<(), VmmError> {
        let registers = VcpuState::read(vcpu)?;
        let mut state = self.lock();
        if !state.attached || self.ended.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(seat) = state.seats.get_mut(cpu as usize) else {
            return Ok(());
        };
        seat.parked = Some(registers);
        seat.dirty = false;
        seat.report = report;
        self.recompute(&state);
        let orders = loop {
            if self.ended.load(Ordering::Acquire) {
                return Ok(());
            }
            let seat = &mut state.seats[cpu as usize];
            if let Some(orders) = seat.orders.take() {
                break orders;
            }
            if seat.report.is_some() {
                // CPU 0 may be halted in KVM_RUN, waiting for an interrupt: wake its stub.
                cpu0.send();
            }
            state = self.wait(state);
        };
        drop(state);
        if let Some(registers) = orders.registers {
            registers.write(vcpu)?;
        }
        vcpu.set_guest_debug(&orders.debug)
            .map_err(|source| VmmError::Kvm {
                what: "KVM_SET_GUEST_DEBUG",
                source,
            })
    }

    // --- the stub's side ---

    /// Whether some AP parked with a debug exit the stub has not taken yet.
    pub fn has_reports(&self) -> bool {
        self.reports.load(Ordering::Acquire)
    }

    /// Takes every report, by CPU.
    pub fn take_reports(&self) -> Vec<(u32, kvm_debug_exit_arch)> {
        let mut state = self.lock();
        let taken = (0..)
            .zip(state.seats.iter_mut())
            .filter_map(|(cpu, seat)| seat.report.take().map(|exit| (cpu, exit)))
            .collect();
        self.recompute(&state);
        taken
    }

    /// Asks every AP to park before its next KVM_RUN (CPU 0 is the stub's own).
    pub fn hold_all(&self) {
        let mut state = self.lock();
        state.seats.iter_mut().skip(1).for_each(|s| s.hold = true);
        self.recompute(&state);
    }

    /// Whether every present AP whose loop runs has parked.
    pub fn all_parked(&self) -> bool {
        let state = self.lock();
        state
            .seats
            .iter()
            .skip(1)
            .filter(|s| s.present && !s.ended)
            .all(|s| s.parked.is_some() && s.orders.is_none())
    }

    /// Waits a little for a change (a CPU parked, a report, the VM's end).
    pub fn wait_a_little(&self) {
        let state = self.lock();
        drop(self.wait(state));
    }

    /// Whether the VM ended.
    pub fn vm_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The CPUs gdb may see as threads: CPU 0, and every AP whose loop runs or that left its
    /// registers when it ended.
    pub fn present(&self) -> Vec<u32> {
        let state = self.lock();
        (0..)
            .zip(&state.seats)
            .filter(|(cpu, s)| *cpu == 0 || (s.present && (!s.ended || s.parked.is_some())))
            .map(|(cpu, _)| cpu)
            .collect()
    }

    /// The registers parked CPU `cpu` published.
    pub fn registers(&self, cpu: u32) -> Option<VcpuState> {
        self.lock().seats.get(cpu as usize).and_then(|s| s.parked)
    }

    /// CPU 0's registers, read by the stub on its own thread.
    pub fn park_cpu0(&self, registers: VcpuState) {
        let mut state = self.lock();
        state.seats[0].parked = Some(registers);
        state.seats[0].dirty = false;
    }

    /// gdb changed parked CPU `cpu`'s registers; false if it is not parked.
    pub fn set_registers(&self, cpu: u32, registers: VcpuState) -> bool {
        let mut state = self.lock();
        let Some(seat) = state.seats.get_mut(cpu as usize) else {
            return false;
        };
        if seat.parked.is_none() {
            return false;
        }
        seat.parked = Some(registers);
        seat.dirty = true;
        true
    }

    /// CPU 0 runs again: the registers gdb changed, if it did.
    pub fn unpark_cpu0(&self) -> Option<VcpuState> {
        let mut state = self.lock();
        let seat = &mut state.seats[0];
        let changed = seat.parked.take().filter(|_| seat.dirty);
        seat.dirty = false;
        changed
    }

    /// Sets what joining CPUs run with, and lets AP `cpu` run with `debug` (`None`: it stays
    /// parked). An AP that has not parked only stops being asked to.
    pub fn release(&self, cpu: u32, debug: Option<kvm_guest_debug>) {
        let mut state = self.lock();
        let Some(seat) = state.seats.get_mut(cpu as usize) else {
            return;
        };
        let Some(debug) = debug else {
            seat.hold = true;
            self.recompute(&state);
            return;
        };
        seat.hold = false;
        if let Some(parked) = seat.parked.take() {
            seat.orders = Some(Orders {
                registers: seat.dirty.then_some(parked),
                debug,
            });
        }
        seat.dirty = false;
        self.recompute(&state);
    }

    /// The setting a CPU that starts later runs with.
    pub fn set_joining_debug(&self, debug: kvm_guest_debug) {
        self.lock().debug = Some(debug);
    }

    /// gdb is gone: debug exits are ignored from now on, and reports not taken are dropped
    /// (the stub then lets every CPU go, [`Hold::release`]).
    pub fn detach(&self) {
        let mut state = self.lock();
        state.attached = false;
        state.seats.iter_mut().for_each(|s| s.report = None);
        self.recompute(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_ended_cpus_count_as_parked_and_a_held_cpu_stays_held() {
        let hold = Hold::new(3);
        assert!(hold.all_parked(), "APs not started yet");
        hold.enter(1);
        hold.hold_all();
        assert!(!hold.all_parked(), "cpu 1 runs");
        hold.leave(1, None);
        assert!(hold.all_parked(), "cpu 1 ended");
        hold.release(2, None);
        assert!(hold.held.load(Ordering::Acquire), "cpu 2 stays held");
        assert_eq!(hold.present(), vec![0], "cpu 1 ended, cpu 2 never started");
    }
}
