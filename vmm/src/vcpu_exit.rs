//! One KVM_RUN of one vCPU, and the exits every vCPU serves alike: the serial console, the
//! ports the VMM ignores, and the ends no CPU comes back from (a halt, a triple fault, a failed
//! entry). What is left, the loop that ran the vCPU serves: the CPU 0 loop in [`crate::vm`] and
//! the AP loop in [`crate::cpus`].
#![forbid(unsafe_code)]

use crate::arch::regs;
use crate::error::VmmError;
use crate::serial::{SerialConsole, COM1_BASE, COM1_LEN};
use kvm_bindings::kvm_debug_exit_arch;
use kvm_ioctls::{VcpuExit, VcpuFd};
use mm_driver::protocol_error::ProtocolError;
use mm_driver::RunError;
use shared_mm::abi::HYPERCALL_PORT;
use shared_mm::trace::TRACE_PORT;
use std::sync::Mutex;

/// An exit for the vCPU's own loop to serve.
#[derive(Debug)]
pub enum Exit {
    /// The hypercall doorbell: a call is waiting in the CPU's mailbox.
    Hypercall,
    /// The flush-trace doorbell: the trace buffer is full.
    FlushTrace,
    /// A breakpoint, watchpoint or single step.
    Debug(kvm_debug_exit_arch),
    /// Nothing left to do (an exit served here, or KVM_RUN interrupted by a signal): look at why
    /// the loop might stop, then run again.
    Resume,
}

/// How a vCPU ended, decided while its exit still borrows it.
enum End {
    Halted,
    Shutdown,
    Internal,
    Unexpected(String),
}

/// Runs `vcpu` until its next exit and serves it if every vCPU serves it alike.
pub fn run(vcpu: &mut VcpuFd, console: &Mutex<SerialConsole>) -> Result<Exit, VmmError> {
    let end = match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Ok(Exit::Resume),
        Err(source) => {
            return Err(VmmError::Kvm {
                what: "KVM_RUN",
                source,
            })
        }
        Ok(VcpuExit::IoOut(HYPERCALL_PORT, _)) => return Ok(Exit::Hypercall),
        Ok(VcpuExit::IoOut(TRACE_PORT, _)) => return Ok(Exit::FlushTrace),
        Ok(VcpuExit::IoOut(port, data)) => {
            if let Some(offset) = com1_offset(port) {
                let value = data.first().copied().unwrap_or(0);
                lock(console)
                    .write(offset, value)
                    .map_err(VmmError::Console)?;
            }
            return Ok(Exit::Resume);
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            let value = com1_offset(port).map_or(0xff, |offset| lock(console).read(offset));
            data.fill(value);
            return Ok(Exit::Resume);
        }
        Ok(VcpuExit::Debug(exit)) => return Ok(Exit::Debug(exit)),
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            return Err(VmmError::from(ProtocolError::EntryFailed { reason, cpu }))
        }
        Ok(VcpuExit::Hlt) => End::Halted,
        Ok(VcpuExit::Shutdown) => End::Shutdown,
        Ok(VcpuExit::InternalError) => End::Internal,
        Ok(other) => End::Unexpected(format!("{other:?}")),
    };
    let registers = regs::dump(vcpu);
    Err(match end {
        End::Halted => RunError::GuestHalted { registers }.into(),
        End::Shutdown => RunError::TripleFault { registers }.into(),
        End::Internal => ProtocolError::KvmInternalError { registers }.into(),
        End::Unexpected(exit) => unexpected(exit, registers),
    })
}

/// A debug exit on a vCPU no debugger watches.
pub fn unexpected_debug(vcpu: &VcpuFd, exit: kvm_debug_exit_arch) -> VmmError {
    unexpected(format!("Debug({exit:?})"), regs::dump(vcpu))
}

fn unexpected(exit: String, registers: String) -> VmmError {
    VmmError::from(ProtocolError::UnexpectedExit { exit, registers })
}

/// The register offset of COM1 that `port` names, if it is one.
fn com1_offset(port: u16) -> Option<u8> {
    (COM1_BASE..COM1_BASE + COM1_LEN)
        .contains(&port)
        .then(|| (port - COM1_BASE) as u8)
}

/// The console, also after a vCPU thread panicked holding it (its state is a UART's registers
/// and a capture buffer, whole after any write).
fn lock(console: &Mutex<SerialConsole>) -> std::sync::MutexGuard<'_, SerialConsole> {
    console.lock().unwrap_or_else(|e| e.into_inner())
}
