//! One gdb session, driven from the run loop's two call-out points ([`Debugger`]). The guest
//! runs until there is something to report (a breakpoint, a watchpoint, a finished step,
//! Ctrl-C, a stop a driver asked for); then the stub holds the vCPU stopped and serves gdb's
//! packets on the vCPU thread until gdb resumes the guest, detaches or goes away. A gdb that
//! goes away is a detach: the guest runs on to its own end.

use super::interrupt::InterruptWatch;
use super::observer::{MmView, Observed, SharedView};
use super::target::{DebugExit, GuestTarget, StopReason};
use super::{Claim, GdbError};
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
    /// A stop found at a debug exit, reported at the next call-out point.
    pending: Option<StopReason>,
    /// The guest is over (it failed with this signal), and gdb looks at what is left.
    ended: Option<Signal>,
}

/// The signal gdb is told a guest that ended with `error` got, when gdb may look at it.
fn fatal_signal(error: &VmmError) -> Option<Signal> {
    match error {
        VmmError::Run(RunError::GuestPanic { .. }) => Some(Signal::SIGABRT),
        VmmError::Run(RunError::TripleFault { .. }) => Some(Signal::SIGSEGV),
        VmmError::Run(RunError::GuestHalted { .. } | RunError::GuestProtocol(_)) => {
            Some(Signal::SIGILL)
        }
        VmmError::Run(RunError::Timeout { .. }) => Some(Signal::SIGALRM),
        _ => None,
    }
}

impl<'b> Stub<'b> {
    /// Waits for gdb on the claimed listener, on the vCPU thread, before the guest's first
    /// instruction; gdb's packets are parsed in `packets`.
    pub fn accept(
        claim: Claim,
        mem: &GuestMemoryMmap,
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
        let mut target = GuestTarget::new(mem.clone(), view);
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
            pending: None,
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
                    if self.target.freeze(vcpu).is_ok() {
                        let stopped = gdb.report_stop(&mut self.target, StopReason::Signal(signal));
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
        Ok(())
    }

    /// What to report now, if the guest must stop: a debug exit's reason, or a driver's request.
    fn stop_reason(&mut self) -> Option<StopReason> {
        self.pending.take().or_else(|| {
            self.stop.take().map(|why| {
                eprintln!("vmm: gdb: stopped {why}");
                StopReason::Signal(Signal::SIGTRAP)
            })
        })
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
                    let reason = Some(StopReason::Signal(Signal::SIGINT));
                    interrupt.interrupt_handled(&mut self.target, reason)
                }
                Machine::Running(running) => {
                    if let Some(signal) = self.ended {
                        let end = StopReason::Terminated(signal);
                        settle(running.report_stop(&mut self.target, end));
                        return Ok(());
                    }
                    self.target.thaw(vcpu)?;
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

impl Debugger for Stub<'_> {
    fn before_run(&mut self, vcpu: &VcpuFd) -> Result<(), VmmError> {
        let Some(gdb) = self.gdb.take() else {
            return Ok(());
        };
        let gdb = if self.watch.take_pending() || self.inbox.has_unread() {
            match self.pump_running(vcpu, gdb)? {
                Some(gdb) => gdb,
                None => return Ok(()),
            }
        } else {
            gdb
        };
        let stopped = match gdb {
            Machine::Running(running) => {
                let Some(reason) = self.stop_reason() else {
                    self.gdb = Some(running.into());
                    return Ok(());
                };
                self.target.freeze(vcpu)?;
                running.report_stop(&mut self.target, reason)
            }
            // The first stop (before the guest's first instruction), or Ctrl-C: `serve` reports.
            other => {
                self.target.freeze(vcpu)?;
                Ok(other)
            }
        };
        match self.step(vcpu, stopped)? {
            Some(gdb) => self.serve(vcpu, gdb),
            None => Ok(()),
        }
    }

    fn on_debug_exit(&mut self, vcpu: &VcpuFd, exit: kvm_debug_exit_arch) -> Result<(), VmmError> {
        match self.target.debug_exit(vcpu, &exit)? {
            DebugExit::Stop(reason) => self.pending = Some(reason),
            DebugExit::GuestBreakpoint => self.target.reinject_breakpoint(vcpu)?,
            DebugExit::RunOn => {}
        }
        Ok(())
    }
}
