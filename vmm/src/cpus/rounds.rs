//! MM work in rounds, with several CPUs: every CPU asks for batches over its own mailbox, and
//! the driver hands out rounds of up to one batch per CPU, run at the same time. A round ends
//! when every CPU of it has returned its results; the driver (CPU 0's thread: it is not `Send`)
//! then sees them with every CPU quiescent, so the checker runs between rounds, and hands out
//! the next. A CPU with no batch yet is told to wait: it halts in the guest (so it still serves
//! shootdowns) until the host sends it the work interrupt, an MSI through the in-kernel
//! irqchip, and asks again.
//!
//! The flush trace is shared by every CPU. It is drained when a CPU rings the trace port
//! (holding the guest's trace lock, so nobody appends meanwhile) into a host queue, and at the
//! end of each round (everyone quiescent); the driver gets the queue first, in order.
#![forbid(unsafe_code)]

use crate::error::VmmError;
use crate::trace;
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use mm_driver::driver::{CpuBatch, Driver, DriverError};
use mm_driver::protocol_error::ProtocolError;
use shared_mm::abi::{Op, OpResult, SpaceRecord};
use shared_mm::smp::{CpuSet, WORK_VECTOR};
use shared_mm::trace::TraceRecord;
use std::sync::{Mutex, MutexGuard};
use vm_memory::GuestMemoryMmap;

/// The x86 MSI address window; the destination APIC id goes in bits 12-19.
const MSI_ADDRESS: u32 = 0xfee0_0000;

/// What a CPU that asked for work is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Batch(Vec<Op>),
    /// No batch for it yet: halt until the work interrupt.
    Wait,
    /// No more work.
    Done,
}

/// One CPU's report with its request for work.
pub struct Report {
    pub cpu: u32,
    pub results: Vec<OpResult>,
    pub spaces: Vec<SpaceRecord>,
    /// The guest's space-table generation the list is as of.
    pub generation: u64,
}

#[derive(Default)]
struct State {
    /// CPUs whose batch of the current round was handed out and not yet returned.
    running: CpuSet,
    /// The results of the current round so far, by CPU.
    results: Vec<(u32, Vec<OpResult>)>,
    /// The latest list of live spaces any CPU reported, and its generation.
    spaces: Option<(u64, Vec<SpaceRecord>)>,
    /// Batches of the current round not yet picked up, by CPU.
    ready: Vec<Option<Vec<Op>>>,
    done: bool,
}

/// The rounds of one VM's run.
pub struct Rounds<'v> {
    count: u32,
    vm: &'v VmFd,
    state: Mutex<State>,
    /// Trace records drained when a CPU found the buffer full, not yet given to the driver.
    trace: Mutex<Vec<TraceRecord>>,
}

impl<'v> Rounds<'v> {
    /// The rounds of a VM of `count` CPUs, whose in-kernel irqchip `vm` has.
    pub fn new(count: u32, vm: &'v VmFd) -> Self {
        Rounds {
            count,
            vm,
            state: Mutex::new(State {
                ready: vec![None; count as usize],
                ..State::default()
            }),
            trace: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// CPU `report.cpu` returns its results and asks for work. Returns what to tell it (CPU 0
    /// may get the next round's batch at once: it hands rounds out), and whether the round just
    /// ended (another CPU must then wake CPU 0 to hand the next one out).
    pub fn report(
        &self,
        report: Report,
        mem: &GuestMemoryMmap,
        driver: Option<&mut dyn Driver>,
    ) -> Result<(Answer, bool), VmmError> {
        let Report {
            cpu,
            results,
            spaces,
            generation,
        } = report;
        let ended = {
            let mut state = self.lock();
            if state.running.contains(cpu) && state.ready[cpu as usize].is_none() {
                state.running = state.running.without(cpu);
                state.results.push((cpu, results));
            } else if !results.is_empty() {
                return Err(VmmError::from(ProtocolError::UnaskedResults { cpu }));
            }
            if state.spaces.as_ref().is_none_or(|(g, _)| generation >= *g) {
                state.spaces = Some((generation, spaces));
            }
            state.running.is_empty() && !state.done
        };
        if let (true, Some(driver)) = (ended, driver) {
            self.next_round(mem, driver)?;
            self.wake(self.lock().running.without(cpu))?;
            return Ok((self.answer(cpu), false));
        }
        Ok((self.answer(cpu), ended))
    }

    /// The batch waiting for `cpu`, or what it should do without one.
    fn answer(&self, cpu: u32) -> Answer {
        let mut state = self.lock();
        match state.ready[cpu as usize].take() {
            Some(ops) => Answer::Batch(ops),
            None if state.done => Answer::Done,
            None => Answer::Wait,
        }
    }

    /// Asks `driver` for the next round, every CPU being quiescent: hands it the trace first,
    /// then the last round's results.
    fn next_round(&self, mem: &GuestMemoryMmap, driver: &mut dyn Driver) -> Result<(), VmmError> {
        self.deliver_trace(mem, driver)?;
        let (mut results, spaces) = {
            let mut state = self.lock();
            let spaces = state
                .spaces
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            (std::mem::take(&mut state.results), spaces)
        };
        results.sort_by_key(|(cpu, _)| *cpu);
        let round = driver
            .next_round(mem, &results, &spaces)
            .map_err(VmmError::from)?;
        let mut state = self.lock();
        match round {
            None => state.done = true,
            Some(batches) => {
                check_round(&batches, self.count).map_err(VmmError::from)?;
                for CpuBatch { cpu, ops } in batches {
                    state.running = state.running.with(cpu);
                    state.ready[cpu as usize] = Some(ops);
                }
            }
        }
        Ok(())
    }

    /// Records drained when a CPU found the trace buffer full.
    pub fn queue_trace(&self, records: Vec<TraceRecord>) {
        let mut queue = self.trace.lock().unwrap_or_else(|e| e.into_inner());
        queue.extend(records);
    }

    /// Gives `driver` the trace so far: the queue, then the buffer. Only while every other CPU
    /// is quiescent (between rounds, or in a round of CPU 0 alone: its snapshots).
    pub fn deliver_trace(
        &self,
        mem: &GuestMemoryMmap,
        driver: &mut dyn Driver,
    ) -> Result<(), VmmError> {
        let mut records =
            std::mem::take(&mut *self.trace.lock().unwrap_or_else(|e| e.into_inner()));
        records.extend(trace::drain(mem)?);
        if records.is_empty() {
            return Ok(());
        }
        driver.trace(mem, &records).map_err(VmmError::from)
    }

    /// Sends the work interrupt to every CPU of `cpus` (APIC id = index).
    pub fn wake(&self, cpus: CpuSet) -> Result<(), VmmError> {
        for cpu in cpus.iter() {
            let msi = kvm_msi {
                address_lo: MSI_ADDRESS | (cpu << 12),
                data: u32::from(WORK_VECTOR),
                ..kvm_msi::default()
            };
            self.vm.signal_msi(msi).map_err(|source| VmmError::Kvm {
                what: "KVM_SIGNAL_MSI",
                source,
            })?;
        }
        Ok(())
    }
}

/// Whether a VM of `count` CPUs can run `round`: each CPU exists and has one batch, and
/// snapshots and frame reports come only from CPU 0, alone in its round (the others must be
/// quiescent while it exports).
pub fn check_round(round: &[CpuBatch], count: u32) -> Result<(), DriverError> {
    let mut seen = CpuSet::EMPTY;
    for batch in round {
        if batch.cpu >= count || seen.contains(batch.cpu) {
            let why = format!("a second batch for cpu {}, or no such cpu", batch.cpu);
            return Err(DriverError::BadRound(why));
        }
        seen = seen.with(batch.cpu);
        let reports = batch
            .ops
            .iter()
            .any(|op| matches!(op, Op::Snapshot { .. } | Op::Frames { .. }));
        if reports && (batch.cpu != 0 || round.len() > 1) {
            let why = format!("cpu {} reports beside other batches", batch.cpu);
            return Err(DriverError::BadRound(why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(cpu: u32, ops: Vec<Op>) -> CpuBatch {
        CpuBatch { cpu, ops }
    }

    #[test]
    fn a_round_has_a_batch_per_cpu_at_most_and_reports_alone_on_cpu_0() {
        let touch = Op::TouchRead { space: 1, addr: 0 };
        let snapshot = Op::Snapshot { space: 1 };
        assert_eq!(
            check_round(&[batch(0, vec![touch]), batch(1, vec![touch])], 2),
            Ok(())
        );
        assert_eq!(check_round(&[batch(0, vec![snapshot])], 2), Ok(()));
        for bad in [
            vec![batch(2, vec![touch])],
            vec![batch(1, vec![touch]), batch(1, vec![touch])],
            vec![batch(1, vec![snapshot])],
            vec![batch(0, vec![snapshot]), batch(1, vec![touch])],
        ] {
            assert!(check_round(&bad, 2).is_err(), "{bad:?}");
        }
    }
}
