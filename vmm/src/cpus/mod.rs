//! The CPUs of a running VM: one host thread per vCPU, and what those threads share. CPU 0's
//! loop runs on the caller's thread ([`crate::vm`]); each AP gets a thread that waits until
//! CPU 0 asks for the others (`ap`). The first CPU to end the VM (an exit, a panic, a fault,
//! a timeout) decides its outcome, and every other thread is kicked out of KVM_RUN
//! ([`crate::kick`]) and joined before the run returns: none is left behind.
#![forbid(unsafe_code)]

mod ap;
pub mod hold;
pub mod round_trip;
pub mod rounds;

use crate::error::VmmError;
use crate::hypercall::CpuCall;
use crate::kick::Kick;
use crate::serial::SerialConsole;
use hold::Hold;
use kvm_ioctls::{VcpuFd, VmFd};
use mm_driver::protocol_error::ProtocolError;
use mm_driver::RunError;
use round_trip::IpiRoundTrip;
use rounds::Rounds;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

/// How often a kick is sent again while its target has not stopped (one may arrive while the
/// target is outside KVM_RUN, and be lost).
const RESEND: Duration = Duration::from_millis(5);

/// What the CPUs did in a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SmpReport {
    /// The CPUs that came online, in the order they did (CPU 0 first, when it started the
    /// others). Each one's APIC id is its index (checked).
    pub online: Vec<u32>,
    /// The IPI round trip CPU 0 measured.
    pub round_trip: Option<IpiRoundTrip>,
}

/// What the vCPU threads of one running VM share.
pub struct Cpus<'v> {
    count: u32,
    /// With several CPUs, the rounds their MM work comes in.
    rounds: Option<Rounds<'v>>,
    /// How long a started CPU has to report in (`--timeout`).
    timeout: Option<Duration>,
    tsc_khz: Option<u32>,
    /// Set once the VM has ended: every loop stops at its next look.
    stop: AtomicBool,
    /// Set once CPU 0's loop has returned; until then an AP that ended the VM kicks it.
    cpu0_left: AtomicBool,
    cpu0: Kick,
    /// Under a debugger, the all-stop hold every CPU obeys before each KVM_RUN.
    hold: Option<Arc<Hold>>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    started: bool,
    report: SmpReport,
    kicks: Vec<Option<Kick>>,
    outcome: Option<Result<u32, VmmError>>,
}

impl<'v> Cpus<'v> {
    /// The shared state of a VM of `count` CPUs, whose CPU 0 runs on the calling thread; with
    /// several, MM work comes in rounds, whose wake-ups go through `vm` (`None`: no MM work).
    /// Under a debugger, every CPU obeys its `hold`.
    pub fn new(
        count: u32,
        timeout: Option<Duration>,
        tsc_khz: Option<u32>,
        vm: Option<&'v VmFd>,
        hold: Option<Arc<Hold>>,
    ) -> Result<Cpus<'v>, VmmError> {
        Ok(Cpus {
            count,
            rounds: vm.filter(|_| count > 1).map(|vm| Rounds::new(count, vm)),
            timeout,
            tsc_khz,
            stop: AtomicBool::new(false),
            cpu0_left: AtomicBool::new(false),
            cpu0: Kick::current_thread()?,
            hold,
            state: Mutex::new(State {
                kicks: vec![None; count as usize],
                ..State::default()
            }),
            changed: Condvar::new(),
        })
    }

    /// Runs the VM: a thread for each of `aps` (CPUs 1 and up), and `cpu0`, CPU 0's loop, on
    /// this thread. A loop returns `Ok(None)` when it stopped because another CPU ended the VM.
    /// Returns the outcome and what the CPUs did, once every AP thread has ended.
    pub fn run(
        self,
        aps: &mut [VcpuFd],
        mem: &GuestMemoryMmap,
        console: &Mutex<SerialConsole>,
        cpu0: impl FnOnce(&Cpus<'v>) -> Result<Option<u32>, VmmError>,
    ) -> (Result<u32, VmmError>, SmpReport) {
        std::thread::scope(|scope| {
            let threads: Vec<_> = (1..)
                .zip(aps.iter_mut())
                .map(|(cpu, vcpu)| {
                    let cpus = &self;
                    scope.spawn(move || ap::run(cpu, vcpu, cpus, mem, console))
                })
                .collect();
            let ended = cpu0(&self).map_err(|e| self.named(0, e)).transpose();
            self.cpu0_left.store(true, Ordering::Release);
            if let Some(outcome) = ended {
                self.end(outcome);
            }
            self.stop_aps(&threads);
            for thread in threads {
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        let state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        let outcome = state
            .outcome
            .expect("a loop stops early only once another CPU has ended the VM");
        (outcome, state.report)
    }

    /// The VM's CPUs.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// With several CPUs, the rounds their MM work comes in.
    pub fn rounds(&self) -> Option<&Rounds<'v>> {
        self.rounds.as_ref()
    }

    /// Under a debugger, the hold every CPU obeys.
    pub fn hold(&self) -> Option<&Hold> {
        self.hold.as_deref()
    }

    /// The kick that interrupts CPU 0's thread.
    pub fn cpu0_kick(&self) -> &Kick {
        &self.cpu0
    }

    /// Kicks every AP thread once, out of KVM_RUN (the hold re-sends until each has parked).
    pub fn kick_aps(&self) {
        let kicks: Vec<Kick> = self.lock().kicks.iter().flatten().copied().collect();
        // The targets are threads of the running scope, joined only after CPU 0's loop.
        kicks.iter().for_each(Kick::send);
    }

    /// Whether the VM has ended.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Serves a call of CPU `cpu` about the VM's CPUs; the progress lines go to `log`. Returns
    /// false if the VM ended meanwhile (while CPU 0 waited for the others to report in).
    pub fn serve(&self, cpu: u32, call: CpuCall, log: &mut dyn Write) -> Result<bool, VmmError> {
        self.serve_held(cpu, call, log, &mut || Ok(()))
    }

    /// [`Cpus::serve`], where CPU 0, while it waits for the others to report in, calls
    /// `debugger` whenever an AP stopped for the debugger (which then holds every CPU until gdb
    /// resumes them): an AP stopped before it reported in would otherwise wait for CPU 0
    /// forever.
    pub fn serve_held(
        &self,
        cpu: u32,
        call: CpuCall,
        log: &mut dyn Write,
        debugger: &mut dyn FnMut() -> Result<(), VmmError>,
    ) -> Result<bool, VmmError> {
        let only_cpu0 = |call| {
            (cpu == 0)
                .then_some(())
                .ok_or(VmmError::from(ProtocolError::Cpu0Only { cpu, call }))
        };
        match call {
            CpuCall::Start { apic_id } => {
                only_cpu0("StartCpus")?;
                self.start(apic_id, log, debugger)
            }
            CpuCall::Online { .. } if cpu == 0 => Err(VmmError::from(ProtocolError::Cpu0Online)),
            CpuCall::Online {
                cpu: claimed,
                apic_id,
            } => self.online(cpu, claimed, apic_id, log).map(|()| true),
            CpuCall::RoundTrip(report) => {
                only_cpu0("IpiRoundTrip")?;
                let trip = IpiRoundTrip::check(report, self.count, self.tsc_khz)?;
                say(log, &format!("vmm: {trip}"))?;
                self.lock().report.round_trip = Some(trip);
                Ok(true)
            }
        }
    }

    /// `StartCpus`: CPU 0 is online; the APs may run. Waits until every one has reported in,
    /// the VM ended (false), or `timeout` passed (an error naming the first missing CPU; time
    /// spent in the `debugger` does not count).
    fn start(
        &self,
        apic_id: u64,
        log: &mut dyn Write,
        debugger: &mut dyn FnMut() -> Result<(), VmmError>,
    ) -> Result<bool, VmmError> {
        {
            let state = self.lock();
            if state.started || self.count == 1 {
                return Err(VmmError::from(ProtocolError::CannotStartCpus {
                    cpus: self.count,
                }));
            }
        }
        self.online(0, 0, apic_id, log)?;
        self.lock().started = true;
        self.changed.notify_all();
        let mut deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if self.stopped() {
                return Ok(false);
            }
            if self.hold().is_some_and(Hold::has_reports) {
                debugger()?;
                deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
                continue;
            }
            if let Some(missing) = self.wait_online(deadline)? {
                return Err(RunError::CpuOffline {
                    cpu: missing,
                    seconds: self.timeout.unwrap_or_default().as_secs_f64(),
                }
                .into());
            }
            if (0..self.count).all(|cpu| self.lock().report.online.contains(&cpu)) {
                return Ok(true);
            }
        }
    }

    /// Waits a while for a CPU to report in (a short while under a debugger, which may have
    /// an AP to look at); the first CPU still missing at `deadline`, if it passed.
    fn wait_online(&self, deadline: Option<Instant>) -> Result<Option<u32>, VmmError> {
        let state = self.lock();
        let missing = (0..self.count).find(|cpu| !state.report.online.contains(cpu));
        let Some(missing) = missing else {
            return Ok(None);
        };
        let now = Instant::now();
        let left = match deadline {
            Some(deadline) if deadline <= now => return Ok(Some(missing)),
            Some(deadline) => Some(deadline - now),
            None => None,
        };
        let slice = match (left, &self.hold) {
            (left, Some(_)) => Some(left.map_or(RESEND, |left| left.min(RESEND))),
            (left, None) => left,
        };
        drop(match slice {
            None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            Some(slice) => {
                let waited = self.changed.wait_timeout(state, slice);
                waited.unwrap_or_else(|e| e.into_inner()).0
            }
        });
        Ok(None)
    }

    /// CPU `cpu` reports in as `claimed` with APIC id `apic_id`: both must be `cpu`.
    fn online(
        &self,
        cpu: u32,
        claimed: u64,
        apic_id: u64,
        log: &mut dyn Write,
    ) -> Result<(), VmmError> {
        let protocol = VmmError::from;
        if claimed != u64::from(cpu) || apic_id != u64::from(cpu) {
            return Err(protocol(ProtocolError::WrongIdentity {
                cpu,
                claimed_cpu: claimed,
                apic_id,
            }));
        }
        let mut state = self.lock();
        if state.report.online.contains(&cpu) {
            return Err(protocol(ProtocolError::OnlineTwice { cpu }));
        }
        state.report.online.push(cpu);
        self.changed.notify_all();
        say(log, &format!("vmm: cpu {cpu} online (APIC id {apic_id})"))
    }

    /// Ends the VM with `outcome`, unless a CPU ended it first; every loop stops at its next
    /// look, and a waiting thread wakes.
    fn end(&self, outcome: Result<u32, VmmError>) {
        let mut state = self.lock();
        state.outcome.get_or_insert(outcome);
        self.stop.store(true, Ordering::Release);
        self.changed.notify_all();
        if let Some(hold) = &self.hold {
            hold.end();
        }
    }

    /// `error` of CPU `cpu`, naming the CPU when the VM has several and the error is that
    /// CPU's own (a panic, a fault, a halt, a protocol error).
    fn named(&self, cpu: u32, error: VmmError) -> VmmError {
        let own = matches!(
            error,
            VmmError::Run(
                RunError::GuestPanic { .. }
                    | RunError::TripleFault { .. }
                    | RunError::GuestHalted { .. }
                    | RunError::GuestProtocol(_)
            )
        );
        if self.count > 1 && own {
            VmmError::Run(RunError::OnCpu {
                cpu,
                error: Box::new(error.into()),
            })
        } else {
            error
        }
    }

    /// An AP thread's kick, for [`Cpus::stop_aps`].
    fn register(&self, cpu: u32, kick: Kick) {
        if let Some(slot) = self.lock().kicks.get_mut(cpu as usize) {
            *slot = Some(kick);
        }
    }

    /// Blocks an AP thread until CPU 0 asks for the APs (true) or the VM ends first (false).
    fn wait_for_start(&self) -> bool {
        let mut state = self.lock();
        while !state.started && !self.stopped() {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        !self.stopped()
    }

    /// Kicks CPU 0's thread until its loop has returned: an AP that ended the VM calls this,
    /// and CPU 0 may be halted in KVM_RUN, waiting for an interrupt that will never come.
    fn kick_cpu0_until_it_stops(&self) {
        while !self.cpu0_left.load(Ordering::Acquire) {
            // CPU 0's thread outlives every AP thread: it joins them.
            self.cpu0.send();
            std::thread::sleep(RESEND);
        }
    }

    /// Kicks every AP thread until it has ended (its loop looks at `stop` after each KVM_RUN).
    fn stop_aps(&self, threads: &[ScopedJoinHandle<'_, ()>]) {
        while threads.iter().any(|t| !t.is_finished()) {
            self.changed.notify_all();
            self.kick_aps();
            std::thread::sleep(RESEND);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes one whole line to `log` (other CPUs' threads write there too).
fn say(log: &mut dyn Write, line: &str) -> Result<(), VmmError> {
    log.write_all(format!("{line}\n").as_bytes())
        .map_err(VmmError::Console)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(count: u32) -> Cpus<'static> {
        Cpus::new(count, Some(Duration::ZERO), None, None, None).expect("a kick for this thread")
    }

    fn protocol(result: Result<bool, VmmError>) -> ProtocolError {
        match result {
            Err(VmmError::Run(RunError::GuestProtocol(e))) => e,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn each_call_comes_from_the_cpus_that_may_make_it() {
        let cpus = cpus(2);
        let log = &mut Vec::new();
        let start = CpuCall::Start { apic_id: 1 };
        assert!(matches!(
            protocol(cpus.serve(1, start, log)),
            ProtocolError::Cpu0Only { cpu: 1, .. }
        ));
        let online = CpuCall::Online { cpu: 0, apic_id: 0 };
        assert_eq!(
            protocol(cpus.serve(0, online, log)),
            ProtocolError::Cpu0Online
        );
        assert!(log.is_empty(), "nothing came online");
    }

    #[test]
    fn a_cpu_reports_in_once_as_itself() {
        let cpus = cpus(3);
        let log = &mut Vec::new();
        let as_other = CpuCall::Online { cpu: 2, apic_id: 1 };
        assert!(matches!(
            protocol(cpus.serve(1, as_other, log)),
            ProtocolError::WrongIdentity { cpu: 1, .. }
        ));
        let itself = CpuCall::Online { cpu: 1, apic_id: 1 };
        assert!(cpus.serve(1, itself.clone(), log).expect("in"));
        assert_eq!(
            protocol(cpus.serve(1, itself, log)),
            ProtocolError::OnlineTwice { cpu: 1 }
        );
        assert_eq!(
            String::from_utf8_lossy(log),
            "vmm: cpu 1 online (APIC id 1)\n"
        );
    }

    #[test]
    fn starting_names_the_first_cpu_missing_at_the_deadline_and_happens_once() {
        let cpus = cpus(3);
        let log = &mut Vec::new();
        let online = CpuCall::Online { cpu: 1, apic_id: 1 };
        assert!(cpus.serve(1, online, log).expect("in"));
        let start = CpuCall::Start { apic_id: 0 };
        let err = cpus
            .serve(0, start.clone(), log)
            .expect_err("cpu 2 never comes");
        assert!(
            matches!(err, VmmError::Run(RunError::CpuOffline { cpu: 2, .. })),
            "{err}"
        );
        assert!(matches!(
            protocol(cpus.serve(0, start, log)),
            ProtocolError::CannotStartCpus { cpus: 3 }
        ));
        let one = super::tests::cpus(1);
        let start = CpuCall::Start { apic_id: 0 };
        assert!(matches!(
            protocol(one.serve(0, start, log)),
            ProtocolError::CannotStartCpus { cpus: 1 }
        ));
    }

    #[test]
    fn an_ended_vm_keeps_its_first_outcome() {
        let cpus = cpus(2);
        cpus.end(Ok(3));
        cpus.end(Err(VmmError::KvmUnavailable("a later outcome".into())));
        assert!(cpus.stopped() && !cpus.wait_for_start());
        let (outcome, report) = cpus.run(&mut [], &test_memory(), &test_console(), |_| Ok(None));
        assert_eq!(outcome.ok(), Some(3));
        assert_eq!(report, SmpReport::default());
    }

    fn test_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 4096)]).expect("memory")
    }

    fn test_console() -> Mutex<SerialConsole> {
        Mutex::new(SerialConsole::new(mm_driver::console::ConsoleSink::new(
            false,
        )))
    }
}
