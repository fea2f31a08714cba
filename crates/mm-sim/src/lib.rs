//! The sim backend: the guest's MM library run in-process on a simulated x86_64 machine, served
//! as the guest's agent loop serves the mailbox. Fast and deterministic, with guest RAM laid out
//! exactly as under KVM (the same kernel image, boot info and boot page tables), so the same
//! seed and operations give the same results on both backends. The two backends and the sim's
//! TLB: `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod machine;
mod panic;
pub mod ram;
mod trace_log;

use guest_boot::boot_memory::{self, UsedRam};
use guest_boot::loader::{KernelInRam, LoadedKernel};
use guest_mm::trace::Traced;
use guest_mm::{Cpu, MemoryManager, PhysicalFrame};
use machine::SimMachine;
use mm_driver::console::ConsoleSink;
use mm_driver::driver::{Driver, FramesChunk, FramesPart, SnapshotChunk};
use mm_driver::{Backend, Boot, Guest, GuestConfig, RunError};
use shared_mm::abi::{
    Op, OpResult, RegionRecord, SpaceRecord, Status, KERNEL_SPACE, MAX_BATCH, OP_RECORD_SIZE,
};
use shared_mm::boot_info::{BootInfo, GuestCommand};
use std::io::Write;
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
        ram::recycle(used, self.cpu.machine().inner().written());
    }
}

/// The simulated machine with the flush trace collected in-process.
pub type TracedSim = Traced<SimMachine, TraceLog>;

/// A booted simulated guest.
pub struct SimVm {
    mem: GuestMemoryMmap,
    mm: MemoryManager<TracedSim>,
    /// The one CPU, with its machine.
    cpu: Cpu<TracedSim>,
    console: ConsoleSink,
    /// The kernel in RAM, for the next guest of this thread to boot on this RAM.
    kernel: LoadedKernel,
    in_ram: KernelInRam,
    /// The boot info the host wrote, for the driver.
    boot_info: BootInfo,
}

/// Refuses more than one CPU: the sim runs one (several are to come, deterministically
/// scheduled).
pub fn check_cpus(cpus: u32) -> Result<(), RunError> {
    if cpus == 1 {
        return Ok(());
    }
    Err(RunError::BackendUnsupported {
        backend: "sim",
        what: format!("several CPUs yet (--cpus {cpus}); use --backend kvm"),
    })
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
}

impl SimVm {
    /// Lays out guest RAM as a KVM boot would and brings up the MM on the simulated machine.
    pub fn new(config: &GuestConfig) -> Result<SimVm, RunError> {
        check_cpus(config.cpus)?;
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
        let machine = Traced::new(
            SimMachine::new(boot.mem.clone(), boot.cr3),
            TraceLog::default(),
            config.trace,
            0,
        );
        let mut cpu = Cpu::new(0, machine);
        let bugs = config.seeded_bugs;
        let (mm, _heap) = panic::catch(|| {
            match MemoryManager::init(&boot.info, PhysicalFrame(boot.cr3), &mut cpu, bugs) {
                Ok(ready) => ready,
                Err(e) => panic!("memory manager init failed: {e:?}"),
            }
        })?;
        let _ = writeln!(
            console,
            "sim: memory manager up: {} kernel regions, {} free frames",
            mm.kernel_tree(&mut cpu, |tree| tree.len()),
            mm.free_frames(&mut cpu)
        );
        Ok(SimVm {
            mem: boot.mem,
            mm,
            cpu,
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

    /// The one CPU (its machine holds the TLB).
    pub fn cpu(&self) -> &Cpu<TracedSim> {
        &self.cpu
    }

    /// Everything the sim printed.
    pub fn console_output(&self) -> String {
        self.console.captured()
    }

    /// Serves `driver` until it has no more work; returns the exit status (0).
    pub fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError> {
        let _ = writeln!(self.console, "sim: serving MM operations");
        driver.booted(&self.boot_info);
        let dirty_log = driver.wants_written();
        if dirty_log {
            self.cpu.machine_mut().inner_mut().start_dirty_log();
        }
        let mut results: Vec<OpResult> = Vec::new();
        loop {
            self.deliver_trace(driver)?;
            if dirty_log {
                driver.written(&self.cpu.machine_mut().inner_mut().take_written());
            }
            let (spaces, _generation): (Vec<SpaceRecord>, _) = self.mm.space_records(&mut self.cpu);
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
            for op in ops {
                results.push(self.execute(op, driver)?);
            }
        }
    }

    /// Hands the trace events since the last call to `driver`.
    fn deliver_trace(&mut self, driver: &mut dyn Driver) -> Result<(), RunError> {
        let events = self.cpu.machine_mut().sink_mut().take();
        if events.is_empty() {
            return Ok(());
        }
        driver.trace(&self.mem, &events).map_err(RunError::Driver)
    }

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
                let result = panic::catch(|| self.mm.execute(&mut self.cpu, op))?;
                match self.cpu.machine_mut().inner_mut().take_lock_order() {
                    Some(finding) => Err(RunError::LockOrder { cpu: 0, finding }),
                    None => Ok(result),
                }
            }
        }
    }

    /// Hands the frame report of `space` to `driver`: for the kernel the allocated bitmap
    /// first, then the frames the space owns, one chunk each.
    fn frames(&mut self, space: u32, driver: &mut dyn Driver) -> Result<OpResult, RunError> {
        let Some(owned) = self.mm.owned_frames(&mut self.cpu, space) else {
            return Ok(OpResult::error(Status::NoSuchSpace));
        };
        let mut send = |part, words: &[u64]| {
            let chunk = FramesChunk {
                space,
                part,
                first: 0,
                total: words.len() as u64,
                words,
            };
            driver.frames(&self.mem, chunk).map_err(RunError::Driver)
        };
        if space == KERNEL_SPACE {
            let allocated = self.mm.allocated_frames(&mut self.cpu);
            send(FramesPart::Allocated, &allocated)?;
            let shared: Vec<u64> = self
                .mm
                .shared_frames(&mut self.cpu)
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
        self.deliver_trace(driver)?;
        let exported = self.mm.export(&mut self.cpu, space, |export| {
            let records: Vec<RegionRecord> = export.regions.collect();
            (export.cr3, export.total as u64, records)
        });
        let Some((cr3, total, records)) = exported else {
            return Ok(OpResult::error(Status::NoSuchSpace));
        };
        driver
            .snapshot(
                &self.mem,
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
