//! A round on several simulated CPUs: each CPU with a batch runs it in a coroutine of its own,
//! and the scheduler's loop resumes them one at a time, as the [`Scheduler`] picks, serving the
//! shootdowns sent meanwhile (a target runs its handler at the preemption point it stopped at,
//! or at once if it waits or is idle). All in one host thread: every interleaving is the
//! scheduler's choice, so a round replays exactly.

use crate::machine::{Board, SimMachine};
use crate::scheduler::Scheduler;
use crate::switch::{self, CpuCoroutine};
use crate::{TraceLog, TracedSim};
use corosensei::stack::DefaultStack;
use corosensei::ScopedCoroutineRef;
use guest_mm::trace::Traced;
use guest_mm::{Cpu, MemoryManager};
use mm_driver::driver::CpuBatch;
use mm_driver::RunError;
use shared_mm::abi::{Op, OpResult};
use std::cell::{RefCell, RefMut};
use std::rc::Rc;

/// A CPU's coroutine, within the scope where it may run.
type CoroutineRef<'r, 'a> = ScopedCoroutineRef<'r, (), (), (), &'a mut DefaultStack>;

/// The round's coroutines, each with its CPU, all within their scopes.
type Scoped<'r, 'a> = [(u32, CoroutineRef<'r, 'a>)];

/// Runs one operation on a CPU (the sim's [`SimVm::execute`](crate::SimVm), with its reports).
pub type Execute<'e> = dyn FnMut(&mut Cpu<TracedSim>, Op) -> Result<OpResult, RunError> + 'e;

/// What a round needs of the VM.
pub struct Round<'v> {
    pub mm: &'v MemoryManager<TracedSim>,
    pub board: &'v Rc<Board>,
    pub trace: &'v TraceLog,
    pub tracing: bool,
}

impl Round<'_> {
    fn sched(&self) -> RefMut<'_, Scheduler> {
        self.board
            .sched
            .as_ref()
            .expect("a round of several CPUs has a scheduler")
            .borrow_mut()
    }

    /// Runs `batches` (one per CPU at most) on `cpus`, each op through `execute` (CPU 0's
    /// through `execute0`, which may serve reports); returns each batch's results by CPU.
    pub fn run(
        &self,
        cpus: &mut [Cpu<TracedSim>],
        stacks: &mut [DefaultStack],
        batches: &[CpuBatch],
        execute0: &mut Execute<'_>,
    ) -> Result<Vec<(u32, Vec<OpResult>)>, RunError> {
        let with_work: Vec<u32> = batches.iter().map(|b| b.cpu).collect();
        let ops = batches.iter().map(|b| b.ops.len()).sum();
        self.sched().start_round(&with_work, ops);
        let failure: RefCell<Option<RunError>> = RefCell::new(None);
        let mut results: Vec<(u32, Vec<OpResult>)> =
            batches.iter().map(|b| (b.cpu, Vec::new())).collect();
        let mut execute0 = Some(execute0);
        let mut coroutines = Vec::new();
        let mut cpus: Vec<Option<&mut Cpu<TracedSim>>> = cpus.iter_mut().map(Some).collect();
        let mut stacks: Vec<Option<&mut DefaultStack>> = stacks.iter_mut().map(Some).collect();
        for (batch, (_, out)) in batches.iter().zip(results.iter_mut()) {
            let index = batch.cpu as usize;
            let (Some(cpu), Some(stack)) = (cpus[index].take(), stacks[index].take()) else {
                unreachable!("the driver's round has cpu {} twice", batch.cpu)
            };
            let execute = if batch.cpu == 0 {
                execute0.take()
            } else {
                None
            };
            let work = self.work(cpu, &batch.ops, out, execute, &failure);
            coroutines.push((
                batch.cpu,
                CpuCoroutine::with_stack(stack, move |yielder, ()| switch::body(yielder, work)),
            ));
        }
        nest(coroutines, Vec::new(), &mut |refs| {
            self.schedule(refs, &failure)
        })?;
        match failure.into_inner() {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// CPU `cpu`'s work: `ops` in order, results to `out`, stopping at the first failure.
    fn work<'w, 'e: 'w>(
        &'w self,
        cpu: &'w mut Cpu<TracedSim>,
        ops: &'w [Op],
        out: &'w mut Vec<OpResult>,
        mut execute: Option<&'w mut Execute<'e>>,
        failure: &'w RefCell<Option<RunError>>,
    ) -> Box<dyn FnOnce() + 'w> {
        Box::new(move || {
            for &op in ops {
                if failure.borrow().is_some() {
                    return;
                }
                self.sched().cpus[cpu.index() as usize].op = Some(op);
                let result = match execute.as_mut() {
                    Some(execute) => execute(cpu, op),
                    None => crate::panic::catch(|| self.mm.execute(cpu, op)),
                };
                match result {
                    Ok(result) => out.push(result),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                        return;
                    }
                }
            }
        })
    }

    /// The scheduler's loop over the round's coroutines: serve the shootdowns sent, pick a CPU,
    /// resume it; until every CPU is done, one fails, or all that have work wait (a deadlock).
    fn schedule(
        &self,
        coroutines: &mut Scoped<'_, '_>,
        failure: &RefCell<Option<RunError>>,
    ) -> Result<(), RunError> {
        loop {
            self.serve_shootdowns();
            let next = self.sched().pick();
            let Some(cpu) = next else {
                let mut sched = self.sched();
                if sched.anyone_waits() {
                    return Err(RunError::Deadlock {
                        cpus: sched.deadlock(),
                    });
                }
                sched.end_round();
                return Ok(());
            };
            self.sched().resume(cpu);
            let Some((_, coroutine)) = coroutines.iter_mut().find(|(c, _)| *c == cpu) else {
                unreachable!("cpu {cpu} is runnable with no work")
            };
            let done = switch::resume(coroutine);
            let mut sched = self.sched();
            sched.running = None;
            if done {
                sched.done(cpu);
            }
            drop(sched);
            if let Some((cpu, finding)) = self.board.take_lock_order() {
                return Err(RunError::LockOrder { cpu, finding });
            }
            if failure.borrow().is_some() {
                return Ok(());
            }
        }
    }

    /// Every CPU runs the shootdowns sent to it (the MM's handler, on its machine) and
    /// acknowledges them.
    fn serve_shootdowns(&self) {
        loop {
            let next = {
                let mut sched = self.sched();
                sched.cpus.iter_mut().enumerate().find_map(|(t, run)| {
                    (!run.pending.is_empty()).then(|| (t as u32, run.pending.remove(0)))
                })
            };
            let Some((target, (sender, request))) = next else {
                return;
            };
            let mut machine = Traced::new(
                SimMachine::new(target, Rc::clone(self.board)),
                self.trace.clone(),
                self.tracing,
                target,
            );
            self.mm
                .serve_shootdown(&mut machine, target, sender, &request);
            self.sched().acknowledged(sender);
        }
    }
}

/// Enters the scope of each coroutine in turn, then runs `f` on all of them.
fn nest<'a, T>(
    mut pending: Vec<(u32, CpuCoroutine<'a>)>,
    refs: Vec<(u32, CoroutineRef<'_, 'a>)>,
    f: &mut dyn FnMut(&mut Scoped<'_, 'a>) -> T,
) -> T {
    match pending.pop() {
        None => {
            let mut refs = refs;
            f(&mut refs)
        }
        Some((cpu, coroutine)) => coroutine.scope(move |inner| {
            let mut refs: Vec<(u32, CoroutineRef<'_, 'a>)> = refs;
            refs.push((cpu, inner));
            nest(pending, refs, f)
        }),
    }
}
