//! An AP's host thread: it waits until CPU 0 asks for the other CPUs, then runs its vCPU and
//! serves its hypercalls, in its own mailbox, until the VM ends. It has no driver: its batches
//! come from the rounds CPU 0's thread hands out ([`super::rounds`]), and the flush trace it
//! drains when the buffer is full goes to their queue. Under gdb it parks when the stub holds
//! the guest, and hands its debug exits to the stub ([`super::hold`]).
#![forbid(unsafe_code)]

use super::Cpus;
use crate::error::VmmError;
use crate::gdb::VcpuState;
use crate::hypercall::{self, Next};
use crate::kick::Kick;
use crate::serial::SerialConsole;
use crate::trace;
use crate::vcpu_exit::{self, Exit};
use kvm_ioctls::VcpuFd;
use mm_driver::protocol_error::ProtocolError;
use std::sync::Mutex;
use vm_memory::GuestMemoryMmap;

/// The thread of AP `cpu`.
pub(super) fn run(
    cpu: u32,
    vcpu: &mut VcpuFd,
    cpus: &Cpus,
    mem: &GuestMemoryMmap,
    console: &Mutex<SerialConsole>,
) {
    let ended = match Kick::current_thread() {
        Ok(kick) => {
            cpus.register(cpu, kick);
            if !cpus.wait_for_start() {
                return;
            }
            let served = serve(cpu, vcpu, cpus, mem, console);
            if let Some(hold) = cpus.hold() {
                // A failed CPU's registers, for gdb to see where it failed.
                let last = served.is_err().then(|| VcpuState::read(vcpu).ok());
                hold.leave(cpu, last.flatten());
            }
            served
        }
        Err(e) => Err(e),
    };
    if let Some(outcome) = ended.map_err(|e| cpus.named(cpu, e)).transpose() {
        cpus.end(outcome);
        cpus.kick_cpu0_until_it_stops();
    }
}

/// Runs the vCPU until it ends the VM (`Some` exit status, or an error) or another CPU does
/// (`None`).
fn serve(
    cpu: u32,
    vcpu: &mut VcpuFd,
    cpus: &Cpus,
    mem: &GuestMemoryMmap,
    console: &Mutex<SerialConsole>,
) -> Result<Option<u32>, VmmError> {
    let mut log = console
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sink()
        .clone();
    if let Some(debug) = cpus.hold().and_then(|hold| hold.enter(cpu)) {
        vcpu.set_guest_debug(&debug)
            .map_err(|source| VmmError::Kvm {
                what: "KVM_SET_GUEST_DEBUG",
                source,
            })?;
    }
    loop {
        if let Some(hold) = cpus.hold() {
            hold.park_if_asked(cpu, vcpu, cpus.cpu0_kick())?;
        }
        if cpus.stopped() {
            return Ok(None);
        }
        match vcpu_exit::run(vcpu, console)? {
            Exit::Hypercall => match hypercall::handle(mem, cpu, &mut log, None, cpus.rounds())? {
                Next::Resume => {}
                Next::Exit(status) => return Ok(Some(status)),
                Next::Cpus(call) => {
                    if !cpus.serve(cpu, call, &mut log)? {
                        return Ok(None);
                    }
                }
            },
            Exit::FlushTrace => match cpus.rounds() {
                Some(rounds) => rounds.queue_trace(trace::drain(mem)?),
                None => {
                    return Err(VmmError::from(ProtocolError::MmWorkOffCpu0 {
                        cpu,
                        call: "flush-trace",
                    }))
                }
            },
            Exit::Debug(exit) => match cpus.hold() {
                Some(hold) => hold.report(cpu, vcpu, exit, cpus.cpu0_kick())?,
                None => return Err(vcpu_exit::unexpected_debug(vcpu, exit)),
            },
            Exit::Resume => {}
        }
    }
}
