//! The sim backend: the guest's MM library run in-process on a simulated x86_64 machine, served
//! as the guest's agent loop serves the mailbox. Fast and deterministic, with guest RAM laid out
//! exactly as under KVM (the same kernel image, boot info and boot page tables), so the same
//! seed and operations give the same results on both backends. The two backends and the sim's
//! TLB: `docs/architecture.md`.
//!
//! With several CPUs (`--cpus N`), each simulated CPU has its own registers, CR3 and TLB, and
//! runs its batch of a round as a coroutine in this one host thread; the [`scheduler`] picks
//! which runs at every point where CPUs interact, so every interleaving is chosen, recorded and
//! replayed exactly (`docs/smp-sim.md`). `unsafe` is denied but in `switch`, which reaches a
//! coroutine's yielder.
#![deny(unsafe_code)]

pub mod cpu;
pub mod machine;
mod panic;
pub mod ram;
mod rounds;
pub mod scheduler;
mod switch;
mod trace_log;

use corosensei::stack::DefaultStack;
use guest_boot::boot_memory::{self, UsedRam};
use guest_boot::loader::{KernelInRam, LoadedKernel};
use guest_mm::trace::Traced;
use guest_mm::{Cpu, MemoryManager, PhysicalFrame};
use machine::{Board, SimMachine};
use mm_driver::console::ConsoleSink;
use mm_driver::driver::{CpuBatch, DriverError};
use mm_driver::driver::{Driver, FramesChunk, FramesPart, SnapshotChunk};
use mm_driver::Schedule;
use mm_driver::{Backend, Boot, Guest, GuestConfig, RunError};
use rounds::Round;
use scheduler::Scheduler;
use shared_mm::abi::{
    Op, OpResult, RegionRecord, SpaceRecord, Status, KERNEL_SPACE, MAX_BATCH, OP_RECORD_SIZE,
};
use shared_mm::boot_info::{BootInfo, GuestCommand};
use std::io::Write;
use std::rc::Rc;
pub use trace_log::TraceLog;
use vm_memory::GuestMemoryMmap;

impl Drop for SimVm {
    /// Leaves this guest's RAM to the next guest of the thread, zeroed where it wrote.
    fn drop(&mut self) {
        let used = UsedRam {
            mem: self.mem.clone(),
            kernel: self.kernel,
            in_ram: std::mem::take(&mut self.in_ram),
        };
        ram::recycle(used, &self.board.written());
    }
}

/// The simulated machine with the flush trace collected in-process.
pub type TracedSim = Traced<SimMachine, TraceLog>;

/// A booted simulated guest.
pub struct SimVm {
    mem: GuestMemoryMmap,
    /// What the CPUs share: RAM, their TLBs, the scheduler.
    board: Rc<Board>,
    /// The flush trace every CPU writes, and whether it is on.
    trace: TraceLog,
    tracing: bool,
    mm: MemoryManager<TracedSim>,
    /// Every CPU, with its machine.
    cpus: Vec<Cpu<TracedSim>>,
    /// With several CPUs, a coroutine stack for each.
    stacks: Vec<DefaultStack>,
    console: ConsoleSink,
    /// The kernel in RAM, for the next guest of this thread to boot on this RAM.
    kernel: LoadedKernel,
    in_ram: KernelInRam,
    /// The boot info the host wrote, for the driver.
    boot_info: BootInfo,
}

impl Guest for SimVm {
    fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError> {
        SimVm::run(self, driver)
    }

    fn memory(&self) -> &GuestMemoryMmap {
        SimVm::memory(self)
    }

    fn console_output(&self) -> String {
        SimVm::console_output(self)
    }

    fn schedule(&self) -> Option<Schedule> {
        let sched = self.board.sched.as_ref()?;
        Some(sched.borrow().taken().clone())
    }
}

impl SimVm {
    /// Lays out guest RAM as a KVM boot would and brings up the MM on the simulated machine,
    /// with `config.cpus` CPUs.
    pub fn new(config: &GuestConfig) -> Result<SimVm, RunError> {
        if config.command != GuestCommand::Serve {
            return Err(RunError::BackendUnsupported {
                backend: "sim",
                what: format!(
                    "the {:?} boot command (sim runs only the MM agent)",
                    config.command
                ),
            });
        }
        let (boot, in_ram) =
            boot_memory::prepare_on(&config.boot_spec(), ram::take(config.memory))?;
        let mut console = ConsoleSink::new(config.echo_console);
        let _ = writeln!(console, "sim: booted, {} MiB RAM", boot.info.ram_size >> 20);
        let count = config.cpus;
        let sched =
            (count > 1).then(|| Scheduler::new(count, config.schedule.clone(), config.random_seed));
        let board = Rc::new(Board::new(boot.mem.clone(), boot.cr3, count, sched));
        let trace = TraceLog::default();
        let machine = |cpu| {
            let sim = SimMachine::new(cpu, Rc::clone(&board));
            Traced::new(sim, trace.clone(), config.trace, cpu)
        };
        let mut cpu = Cpu::new(0, machine(0));
        let bugs = config.seeded_bugs;
        let (mm, _heap) = panic::catch(|| {
            match MemoryManager::init(&boot.info, PhysicalFrame(boot.cr3), &mut cpu, bugs) {
                Ok(ready) => ready,
                Err(e) => panic!("memory manager init failed: {e:?}"),
            }
        })?;
        let _ = writeln!(
            console,
            "sim: memory manager up: {} kernel regions, {} free frames, {count} CPU(s)",
            mm.kernel_tree(&mut cpu, |tree| tree.len()),
            mm.free_frames(&mut cpu)
        );
        let mut cpus = vec![cpu];
        cpus.extend((1..count).map(|i| mm.cpu(i, machine(i))));
        let stacks = match count {
            1 => Vec::new(),
            _ => (0..count).map(|_| switch::stack()).collect(),
        };
        Ok(SimVm {
            mem: boot.mem,
            board,
            trace,
            tracing: config.trace,
            mm,
            cpus,
            stacks,
            console,
            kernel: boot.kernel,
            in_ram,
            boot_info: boot.info,
        })
    }

    /// Guest RAM, for introspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The MM, for introspection.
    pub fn mm(&self) -> &MemoryManager<TracedSim> {
        &self.mm
    }

    /// The first CPU (its machine reaches every CPU's TLB through the board).
    pub fn cpu(&self) -> &Cpu<TracedSim> {
        &self.cpus[0]
    }

    /// Everything the sim printed.
    pub fn console_output(&self) -> String {
        self.console.captured()
    }

    /// Serves `driver` until it has no more work; returns the exit status (0). With several
    /// CPUs the work comes in rounds ([`Driver::next_round`]).
    pub fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError> {
        let _ = writeln!(self.console, "sim: serving MM operations");
        driver.booted(&self.boot_info);
        if driver.wants_written() {
            self.board.start_dirty_log();
        }
        if self.cpus.len() > 1 {
            return self.run_rounds(driver);
        }
        let mut results: Vec<OpResult> = Vec::new();
        loop {
            deliver_trace(&self.trace, &self.mem, driver)?;
            self.deliver_written(driver);
            let (spaces, _generation): (Vec<SpaceRecord>, _) =
                self.mm.space_records(&mut self.cpus[0]);
            let Some(ops) = driver
                .next_batch(&self.mem, &results, &spaces)
                .map_err(RunError::Driver)?
            else {
                return Ok(0);
            };
            if ops.len() > MAX_BATCH {
                return Err(RunError::BatchTooLarge { ops: ops.len() });
            }
            results.clear();
            let mut reports = self.reports();
            for op in ops {
                results.push(reports.execute(op, driver)?);
            }
        }
    }

    /// Hands `driver` the frames written since the last batch or round, if it keeps a dirty
    /// log (the incremental checker does).
    fn deliver_written(&self, driver: &mut dyn Driver) {
        if driver.wants_written() {
            driver.written(&self.board.take_written());
        }
    }

    /// The rounds of several CPUs, each run by the scheduler.
    fn run_rounds(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError> {
        let mut results: Vec<(u32, Vec<OpResult>)> = Vec::new();
        loop {
            deliver_trace(&self.trace, &self.mem, driver)?;
            self.deliver_written(driver);
            let (spaces, _generation) = self.mm.space_records(&mut self.cpus[0]);
            let Some(round) = driver
                .next_round(&self.mem, &results, &spaces)
                .map_err(RunError::Driver)?
            else {
                return Ok(0);
            };
            check_round(&round, self.cpus.len())?;
            let runner = Round {
                mm: &self.mm,
                board: &self.board,
                trace: &self.trace,
                tracing: self.tracing,
            };
            let (mem, trace, mm) = (&self.mem, &self.trace, &self.mm);
            let (cpus, stacks) = (&mut self.cpus, &mut self.stacks);
            results = panic::catch(|| {
                let mut execute0 = |cpu: &mut Cpu<TracedSim>, op| {
                    let mut reports = Reports {
                        mm,
                        cpu,
                        mem,
                        trace,
                    };
                    reports.execute(op, &mut *driver)
                };
                runner.run(cpus, stacks, &round, &mut execute0)
            })??;
        }
    }

    /// CPU 0's view for operations and reports.
    fn reports(&mut self) -> Reports<'_> {
        Reports {
            mm: &self.mm,
            cpu: &mut self.cpus[0],
            mem: &self.mem,
            trace: &self.trace,
        }
    }
}

/// Refuses a round the VM cannot run: a CPU it does not have, or named twice, or a batch
/// larger than the ABI allows.
fn check_round(round: &[CpuBatch], cpus: usize) -> Result<(), RunError> {
    let mut seen = Vec::new();
    for batch in round {
        if batch.ops.len() > MAX_BATCH {
            return Err(RunError::BatchTooLarge {
                ops: batch.ops.len(),
            });
        }
        let why = if batch.cpu as usize >= cpus {
            format!("a batch for cpu {}, and the guest has {cpus}", batch.cpu)
        } else if seen.contains(&batch.cpu) {
            format!("two batches for cpu {}", batch.cpu)
        } else {
            seen.push(batch.cpu);
            continue;
        };
        return Err(RunError::Driver(DriverError::BadRound(why)));
    }
    Ok(())
}

/// Hands the trace events since the last call to `driver`.
fn deliver_trace(
    trace: &TraceLog,
    mem: &GuestMemoryMmap,
    driver: &mut dyn Driver,
) -> Result<(), RunError> {
    let events = trace.take();
    if events.is_empty() {
        return Ok(());
    }
    driver.trace(mem, &events).map_err(RunError::Driver)
}

/// What running an operation on a CPU and serving its reports needs.
struct Reports<'a> {
    mm: &'a MemoryManager<TracedSim>,
    cpu: &'a mut Cpu<TracedSim>,
    mem: &'a GuestMemoryMmap,
    trace: &'a TraceLog,
}

impl Reports<'_> {
    /// Runs one operation as the guest would receive it: through its wire encoding.
    fn execute(&mut self, op: Op, driver: &mut dyn Driver) -> Result<OpResult, RunError> {
        let mut record = [0u8; OP_RECORD_SIZE];
        op.encode(&mut record)
            .expect("record buffer is OP_RECORD_SIZE");
        match Op::decode(&record) {
            None => Ok(OpResult::error(Status::BadOp)),
            Some(Op::Snapshot { space }) => self.snapshot(space, driver),
            Some(Op::Frames { space }) => self.frames(space, driver),
            Some(op) => {
                let result = panic::catch(|| self.mm.execute(self.cpu, op))?;
                let board = self.cpu.machine().inner().board();
                match board.take_lock_order() {
                    Some((cpu, finding)) => Err(RunError::LockOrder { cpu, finding }),
                    None => Ok(result),
                }
            }
        }
    }

    /// Hands the frame report of `space` to `driver`: for the kernel the allocated bitmap
    /// first, then the frames the space owns, one chunk each.
    fn frames(&mut self, space: u32, driver: &mut dyn Driver) -> Result<OpResult, RunError> {
        let Some(owned) = self.mm.owned_frames(self.cpu, space) else {
            return Ok(OpResult::error(Status::NoSuchSpace));
        };
        let mem = self.mem;
        let mut send = |part, words: &[u64]| {
            let chunk = FramesChunk {
                space,
                part,
                first: 0,
                total: words.len() as u64,
                words,
            };
            driver.frames(mem, chunk).map_err(RunError::Driver)
        };
        if space == KERNEL_SPACE {
            let allocated = self.mm.allocated_frames(self.cpu);
            send(FramesPart::Allocated, &allocated)?;
            let shared: Vec<u64> = self
                .mm
                .shared_frames(self.cpu)
                .iter()
                .map(|r| r.to_word())
                .collect();
            send(FramesPart::Shared, &shared)?;
        }
        let words: Vec<u64> = owned.iter().map(|r| r.to_word()).collect();
        send(FramesPart::Owned, &words)?;
        Ok(OpResult {
            value: words.len() as u64,
            ..OpResult::ok()
        })
    }

    /// Hands the region tree of `space` to `driver` in one chunk.
    fn snapshot(&mut self, space: u32, driver: &mut dyn Driver) -> Result<OpResult, RunError> {
        deliver_trace(self.trace, self.mem, driver)?;
        let exported = self.mm.export(self.cpu, space, |export| {
            let records: Vec<RegionRecord> = export.regions.collect();
            (export.cr3, export.total as u64, records)
        });
        let Some((cr3, total, records)) = exported else {
            return Ok(OpResult::error(Status::NoSuchSpace));
        };
        driver
            .snapshot(
                self.mem,
                SnapshotChunk {
                    space,
                    cr3,
                    first: 0,
                    total,
                    regions: &records,
                },
            )
            .map_err(RunError::Driver)?;
        Ok(OpResult {
            value: total,
            ..OpResult::ok()
        })
    }
}

/// Boots guests on the sim alone: what a program that links no KVM injects (a fuzz target,
/// the tests of the crates above the seam).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sim;

impl Boot for Sim {
    fn boot(&self, config: &GuestConfig) -> Result<Box<dyn Guest>, RunError> {
        match config.backend {
            Backend::Sim => Ok(Box::new(SimVm::new(config)?)),
            Backend::Kvm => Err(RunError::BackendUnsupported {
                backend: "kvm",
                what: "a program built without KVM".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that links the sim alone refuses a kvm guest by name, before anything boots.
    #[test]
    fn the_sim_alone_refuses_a_kvm_guest() {
        let kvm = GuestConfig::new(Vec::new());
        assert_eq!(kvm.backend, Backend::Kvm);
        match Sim.boot(&kvm) {
            Err(e @ RunError::BackendUnsupported { backend: "kvm", .. }) => assert_eq!(
                e.to_string(),
                "the kvm backend does not support a program built without KVM"
            ),
            Err(other) => panic!("expected the kvm backend refused, got {other}"),
            Ok(_) => panic!("a kvm guest booted without KVM"),
        }
    }
}
