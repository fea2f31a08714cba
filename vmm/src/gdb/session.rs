//! One gdb session, driven from CPU 0's run loop's two call-out points ([`Debugger`]). The
//! guest runs until there is something to report (a breakpoint, a watchpoint or a finished step
//! on any vCPU, Ctrl-C, a stop a driver asked for); then the stub parks every other vCPU
//! ([`Hold`]), and serves gdb's packets on CPU 0's thread until gdb resumes the guest, detaches
//! or goes away. A gdb that goes away is a detach: the guest runs on to its own end. When gdb
//! resumes other threads but not CPU 0 (scheduler-locking), CPU 0's thread waits in the stub
//! for the next stop.

use super::interrupt::InterruptWatch;
use super::observer::{MmView, Observed, SharedView};
use super::target::{tid_of, DebugExit, GuestTarget, StopReason};
use super::{Claim, GdbError};
use crate::cpus::hold::Hold;
use crate::cpus::Cpus;
use crate::kick::Kick;
use crate::vm::Debugger;
use crate::VmmError;
use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, GdbStubError};
use kvm_bindings::kvm_debug_exit_arch;
use kvm_ioctls::VcpuFd;
use mm_driver::driver::Driver;
use mm_driver::stop::StopRequest;
use mm_driver::RunError;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

/// gdbstub's state machine, over the packet buffer `'b` borrows.
type Machine<'b> = GdbStubStateMachine<'b, GuestTarget, TcpStream>;
type Transition<'b> = Result<Machine<'b>, GdbStubError<GdbError, std::io::Error>>;

/// The largest packet gdb may send (gdbstub tells gdb in `qSupported`, and gdb keeps to it): a
/// packet that does not fit, or never ends, ends the session instead of growing a buffer with
/// whatever arrives.
pub const PACKET_BUFFER: usize = 4096;

/// The fixed-capacity buffer a session parses gdb's packets in ([`Stub::accept`]).
pub type PacketBuffer = [u8; PACKET_BUFFER];

/// Bytes read from gdb and not yet handed to gdbstub.
#[derive(Default)]
struct Inbox {
    bytes: Vec<u8>,
    next: usize,
}

/// How reading from gdb ended.
enum Received {
    Byte(u8),
    /// Nothing arrived (only when not waiting).
    Nothing,
    /// gdb closed the connection, or it broke.
    Gone(String),
}

impl Inbox {
    fn has_unread(&self) -> bool {
        self.next < self.bytes.len()
    }

    /// The next byte; waits for it if `wait`, else takes only what has arrived.
    fn next(&mut self, conn: &mut TcpStream, wait: bool) -> Received {
        if let Some(&byte) = self.bytes.get(self.next) {
            self.next += 1;
            return Received::Byte(byte);
        }
        let mut buf = [0u8; 4096];
        // Non-blocking only for this read: gdbstub writes its replies on the same socket.
        let read = conn.set_nonblocking(!wait).and_then(|()| loop {
            match conn.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        });
        let restored = conn.set_nonblocking(false);
        match (read, restored) {
            (Ok(0), _) => Received::Gone("gdb closed the connection".into()),
            (Err(e), _) if e.kind() == ErrorKind::WouldBlock => Received::Nothing,
            (Err(e), _) | (Ok(_), Err(e)) => Received::Gone(e.to_string()),
            (Ok(n), Ok(())) => {
                self.bytes = buf[..n].to_vec();
                self.next = 1;
                Received::Byte(buf[0])
            }
        }
    }
}

/// The gdb stub attached to one guest.
pub struct Stub<'b> {
    /// `None` once gdb has detached or gone away.
    gdb: Option<Machine<'b>>,
    target: GuestTarget,
    watch: InterruptWatch,
    inbox: Inbox,
    stop: StopRequest,
    /// Stops found at debug exits (by CPU), reported one at a time at CPU 0's next call-out
    /// point.
    pending: VecDeque<(u32, StopReason)>,
    /// CPU 0's registers are parked in the hold: it is stopped, or gdb left it stopped while
    /// other threads run.
    cpu0_parked: bool,
    /// The guest is over (it failed with this signal), and gdb looks at what is left.
    ended: Option<Signal>,
}

/// The signal gdb is told a guest that ended with `error` got, when gdb may look at it.
fn fatal_signal(error: &VmmError) -> Option<Signal> {
    match error {
        VmmError::Run(error) => run_signal(error),
        _ => None,
    }
}

impl Stub<'_> {
    /// The CPU whose failure ended the guest, if gdb can look at it (its thread left its
    /// registers in the hold), else CPU 0.
    fn failed_cpu(&self, error: &VmmError) -> u32 {
        match error {
            VmmError::Run(RunError::OnCpu { cpu, .. })
                if self.target.hold().registers(*cpu).is_some() =>
            {
                *cpu
            }
            _ => 0,
        }
    }
}

/// [`fatal_signal`] of a run's error, also when it names the CPU that failed.
fn run_signal(error: &RunError) -> Option<Signal> {
    match error {
        RunError::GuestPanic { .. } => Some(Signal::SIGABRT),
        RunError::TripleFault { .. } => Some(Signal::SIGSEGV),
        RunError::GuestHalted { .. } | RunError::GuestProtocol(_) => Some(Signal::SIGILL),
        RunError::Timeout { .. } => Some(Signal::SIGALRM),
        RunError::OnCpu { error, .. } => run_signal(error),
        _ => None,
    }
}

impl<'b> Stub<'b> {
    /// Waits for gdb on the claimed listener, on CPU 0's thread, before the guest's first
    /// instruction, for a VM of `cpus` CPUs; gdb's packets are parsed in `packets`.
    pub fn accept(
        claim: Claim,
        mem: &GuestMemoryMmap,
        cpus: u32,
        packets: &'b mut PacketBuffer,
    ) -> Result<Stub<'b>, VmmError> {
        let Claim { listener, stop } = claim;
        let (conn, peer) = loop {
            match listener.accept() {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other.map_err(GdbError::Accept)?,
            }
        };
        eprintln!("vmm: gdb connected from {peer}; the guest waits before its first instruction");
        let kick = Kick::current_thread()?;
        let clone = conn.try_clone().map_err(GdbError::Interrupt)?;
        let watch = InterruptWatch::start(clone, kick)?;
        let view: SharedView = Arc::new(Mutex::new(MmView::default()));
        let hold = Arc::new(Hold::new(cpus));
        let mut target = GuestTarget::new(mem.clone(), view, hold, cpus);
        let stub = GdbStub::builder(conn)
            .with_packet_buffer(packets)
            .build()
            .map_err(|e| GdbError::Accept(std::io::Error::other(e.to_string())))?;
        let gdb = stub
            .run_state_machine(&mut target)
            .map_err(|e| GdbError::Accept(std::io::Error::other(e.to_string())))?;
        Ok(Stub {
            gdb: Some(gdb),
            target,
            watch,
            inbox: Inbox::default(),
            stop,
            pending: VecDeque::new(),
            cpu0_parked: false,
            ended: None,
        })
    }

    /// Wraps the guest's driver so the monitor commands see the MM of the last batch.
    pub fn observe<'d>(&self, driver: &'d mut dyn Driver) -> Observed<'d> {
        Observed::new(driver, self.target.view())
    }

    /// Ends the session with the guest's own end: gdb hears that the guest exited, or, when it
    /// failed (a panic, a triple fault), gets to look at it first. Returns `result` unchanged.
    pub fn finish(
        &mut self,
        vcpu: &VcpuFd,
        result: Result<u32, VmmError>,
    ) -> Result<u32, VmmError> {
        let Some(Machine::Running(gdb)) = self.gdb.take() else {
            return result;
        };
        match &result {
            Ok(status) => {
                let code = (*status).min(255) as u8;
                let exited = gdb.report_stop(&mut self.target, StopReason::Exited(code));
                settle(exited);
            }
            Err(error) => match fatal_signal(error) {
                None => {
                    let end = StopReason::Terminated(Signal::SIGKILL);
                    settle(gdb.report_stop(&mut self.target, end));
                }
                Some(signal) => {
                    eprintln!("vmm: gdb: the guest failed ({signal}); gdb may look at it now");
                    self.ended = Some(signal);
                    let cpu = self.failed_cpu(error);
                    self.target.set_stopped(cpu);
                    if self.target.freeze(vcpu).is_ok() {
                        let tid = tid_of(cpu);
                        let failed = StopReason::SignalWithThread { tid, signal };
                        let stopped = gdb.report_stop(&mut self.target, failed);
                        if let Some(gdb) = settle(stopped) {
                            let _ = self.serve(vcpu, gdb);
                        }
                    }
                }
            },
        }
        self.gdb = None;
        result
    }

    /// A transition while the guest lives: a target error is fatal; a lost connection or a
    /// protocol error ends the session, and the guest runs on (`None`).
    fn step(
        &mut self,
        vcpu: &VcpuFd,
        transition: Transition<'b>,
    ) -> Result<Option<Machine<'b>>, VmmError> {
        match transition {
            Ok(gdb) => Ok(Some(gdb)),
            Err(e) if e.is_target_error() => Err(VmmError::Gdb(
                e.into_target_error().expect("checked it is a target error"),
            )),
            Err(e) => {
                self.leave(vcpu, &format!("gdb session failed ({e})"))?;
                Ok(None)
            }
        }
    }

    /// gdb is gone: the guest runs on without breakpoints (unless it is over already).
    fn leave(&mut self, vcpu: &VcpuFd, why: &str) -> Result<(), VmmError> {
        self.gdb = None;
        self.watch.set_running(false);
        if self.ended.is_some() {
            eprintln!("vmm: {why}");
            return Ok(());
        }
        eprintln!("vmm: {why}; the guest runs on without gdb");
        self.target.release(vcpu)?;
        self.cpu0_parked = false;
        Ok(())
    }

    /// What to report now, and on which CPU, if the guest must stop: a debug exit's reason
    /// (an AP's is looked at with every CPU parked), or a driver's request (on CPU 0).
    fn stop_reason(
        &mut self,
        vcpu: &VcpuFd,
        cpus: &Cpus,
    ) -> Result<Option<(u32, StopReason)>, VmmError> {
        if let Some(pending) = self.pending.pop_front() {
            return Ok(Some(pending));
        }
        let hold = self.target.hold();
        if hold.has_reports() {
            if !self.halt(vcpu, cpus)? {
                return Ok(None);
            }
            self.look_at_reports(&hold)?;
            if let Some(pending) = self.pending.pop_front() {
                return Ok(Some(pending));
            }
            // Nothing for gdb (a stepped watch that did not change): every CPU runs on.
            self.cpu0_parked = !self.target.thaw(vcpu)?;
            return Ok(None);
        }
        Ok(self.stop.take().map(|why| {
            eprintln!("vmm: gdb: stopped {why}");
            let signal = Signal::SIGTRAP;
            (
                0,
                StopReason::SignalWithThread {
                    tid: tid_of(0),
                    signal,
                },
            )
        }))
    }

    /// What the APs' debug exits mean: stops for gdb are queued.
    fn look_at_reports(&mut self, hold: &Hold) -> Result<(), GdbError> {
        for (cpu, exit) in hold.take_reports() {
            let cr3 = || {
                let parked = hold.registers(cpu).ok_or(GdbError::NotStopped);
                parked.map(|s| s.sregs.cr3)
            };
            match self.target.debug_exit(cpu, cr3, &exit)? {
                DebugExit::Stop(reason) => self.pending.push_back((cpu, reason)),
                DebugExit::GuestBreakpoint => self.target.reinject_on(cpu),
                DebugExit::RunOn => {}
            }
        }
        Ok(())
    }

    /// All-stop: CPU 0's registers are read, and every other CPU is kicked out of KVM_RUN until
    /// it has parked. False if the VM ended first.
    fn halt(&mut self, vcpu: &VcpuFd, cpus: &Cpus) -> Result<bool, GdbError> {
        if !self.cpu0_parked {
            self.target.freeze(vcpu)?;
            self.cpu0_parked = true;
        }
        let hold = self.target.hold();
        hold.hold_all();
        while !hold.all_parked() {
            if cpus.stopped() || hold.vm_ended() {
                return Ok(false);
            }
            cpus.kick_aps();
            hold.wait_a_little();
        }
        Ok(true)
    }

    /// Hands gdbstub the bytes gdb sent while the guest ran (a Ctrl-C, most likely).
    fn pump_running(
        &mut self,
        vcpu: &VcpuFd,
        mut gdb: Machine<'b>,
    ) -> Result<Option<Machine<'b>>, VmmError> {
        loop {
            let Machine::Running(mut running) = gdb else {
                return Ok(Some(gdb));
            };
            let byte = match self.inbox.next(running.borrow_conn(), false) {
                Received::Byte(byte) => byte,
                Received::Nothing => return Ok(Some(running.into())),
                Received::Gone(why) => {
                    self.leave(vcpu, &format!("gdb connection lost ({why})"))?;
                    return Ok(None);
                }
            };
            let next = running.incoming_data(&mut self.target, byte);
            match self.step(vcpu, next)? {
                Some(next) => gdb = next,
                None => return Ok(None),
            }
        }
    }

    /// Holds the guest stopped and serves gdb until it resumes the guest (which the stub arms
    /// and lets run) or leaves. After the guest's end, a resume only tells gdb that the guest
    /// terminated.
    fn serve(&mut self, vcpu: &VcpuFd, mut gdb: Machine<'b>) -> Result<(), VmmError> {
        self.watch.set_running(false);
        loop {
            let next = match gdb {
                Machine::Idle(mut idle) => match self.inbox.next(idle.borrow_conn(), true) {
                    Received::Byte(byte) => idle.incoming_data(&mut self.target, byte),
                    Received::Nothing => Ok(idle.into()),
                    Received::Gone(why) => {
                        return self.leave(vcpu, &format!("gdb connection lost ({why})"));
                    }
                },
                Machine::CtrlCInterrupt(interrupt) => {
                    self.target.set_stopped(0);
                    let signal = Signal::SIGINT;
                    let reason = Some(StopReason::SignalWithThread {
                        tid: tid_of(0),
                        signal,
                    });
                    interrupt.interrupt_handled(&mut self.target, reason)
                }
                Machine::Running(running) => {
                    if let Some(signal) = self.ended {
                        let end = StopReason::Terminated(signal);
                        settle(running.report_stop(&mut self.target, end));
                        return Ok(());
                    }
                    self.cpu0_parked = !self.target.thaw(vcpu)?;
                    self.watch.set_running(true);
                    self.gdb = Some(running.into());
                    return Ok(());
                }
                Machine::Disconnected(gone) => {
                    return match (gone.get_reason(), self.ended) {
                        (_, Some(_)) => Ok(()),
                        (DisconnectReason::Kill, None) => Err(VmmError::Gdb(GdbError::Killed)),
                        (_, None) => self.leave(vcpu, "gdb detached"),
                    };
                }
            };
            gdb = match self.step(vcpu, next)? {
                Some(gdb) => gdb,
                None => return Ok(()),
            };
        }
    }
}

/// A transition after the guest's end, whose failure only ends the session.
fn settle(transition: Transition<'_>) -> Option<Machine<'_>> {
    transition
        .map_err(|e| eprintln!("vmm: gdb: session ended: {e}"))
        .ok()
}

impl Stub<'_> {
    /// One look before CPU 0 runs: reports a stop and serves gdb if there is one. Returns
    /// whether CPU 0 may run (else gdb left it stopped while other threads run).
    fn look(&mut self, vcpu: &VcpuFd, cpus: &Cpus) -> Result<bool, VmmError> {
        let Some(gdb) = self.gdb.take() else {
            return Ok(true);
        };
        let gdb = if self.watch.take_pending() || self.inbox.has_unread() {
            match self.pump_running(vcpu, gdb)? {
                Some(gdb) => gdb,
                None => return Ok(true),
            }
        } else {
            gdb
        };
        let stopped = match gdb {
            Machine::Running(running) => {
                let Some((cpu, reason)) = self.stop_reason(vcpu, cpus)? else {
                    self.gdb = Some(running.into());
                    return Ok(!self.cpu0_parked);
                };
                if !self.halt(vcpu, cpus)? {
                    self.pending.push_front((cpu, reason));
                    self.gdb = Some(running.into());
                    return Ok(true);
                }
                self.target.set_stopped(cpu);
                running.report_stop(&mut self.target, reason)
            }
            // The first stop (before the guest's first instruction), or Ctrl-C: `serve` reports.
            other => {
                if !self.halt(vcpu, cpus)? {
                    self.gdb = Some(other);
                    return Ok(true);
                }
                Ok(other)
            }
        };
        if let Some(gdb) = self.step(vcpu, stopped)? {
            self.serve(vcpu, gdb)?;
        }
        Ok(!self.cpu0_parked)
    }
}

impl Debugger for Stub<'_> {
    fn hold(&self) -> Arc<Hold> {
        self.target.hold()
    }

    fn before_run(&mut self, vcpu: &VcpuFd, cpus: &Cpus) -> Result<(), VmmError> {
        while !self.look(vcpu, cpus)? {
            if cpus.stopped() {
                return Ok(());
            }
            // CPU 0 stays stopped: wait for another CPU's stop, Ctrl-C or the VM's end.
            self.target.hold().wait_a_little();
        }
        Ok(())
    }

    fn on_debug_exit(&mut self, vcpu: &VcpuFd, exit: kvm_debug_exit_arch) -> Result<(), VmmError> {
        let cr3 = || {
            let sregs = vcpu.get_sregs().map_err(GdbError::kvm("KVM_GET_SREGS"));
            sregs.map(|s| s.cr3)
        };
        match self.target.debug_exit(0, cr3, &exit)? {
            DebugExit::Stop(reason) => self.pending.push_back((0, reason)),
            DebugExit::GuestBreakpoint => self.target.reinject_breakpoint(vcpu)?,
            DebugExit::RunOn => {}
        }
        Ok(())
    }
}
