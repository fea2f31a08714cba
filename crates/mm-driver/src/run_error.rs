//! Why a guest could not boot or finish, whichever backend ran it: the guest failed (panicked,
//! triple-faulted, hung, halted, broke the protocol), or the host could not lay it out, serve
//! it or run it. Drivers above the seam tell the two apart with
//! [`RunError::is_guest_failure`]: a fuzzer's finding, or a setup problem.
#![forbid(unsafe_code)]

use crate::driver::DriverError;
use crate::protocol_error::ProtocolError;
use guest_boot::BootError;
use std::fmt;

/// Why a guest could not boot or finish.
#[derive(Debug)]
pub enum RunError {
    /// Guest RAM could not be laid out for the boot (bad image, RAM size or CPU count).
    Boot(BootError),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); carries a register dump.
    TripleFault { registers: String },
    /// The guest reported a panic (on sim: the MM library panicked).
    GuestPanic {
        message: String,
        file: String,
        line: u64,
        column: u64,
    },
    /// The guest MM's lock-order checker found two paths taking two locks in opposite orders
    /// (they can deadlock each other); `finding` names both locks and both paths.
    LockOrder { cpu: u32, finding: String },
    /// The guest made no progress for `--timeout` seconds: no hypercall, and no heartbeat from
    /// a long loop (a hang, or a guest that never exits).
    Timeout { seconds: f64, registers: String },
    /// The guest halted without an exit hypercall (with several CPUs, where the in-kernel
    /// irqchip keeps a halted CPU in KVM: CPU 0 was halted with interrupts off when `--timeout`
    /// ran out).
    GuestHalted { registers: String },
    /// A CPU that was started did not report in within `--timeout` seconds.
    CpuOffline { cpu: u32, seconds: f64 },
    /// What went wrong on one CPU of a VM with several.
    OnCpu { cpu: u32, error: Box<RunError> },
    /// The guest did something the host cannot serve (unknown hypercall, bad mailbox contents,
    /// failed VM entry, internal KVM error).
    GuestProtocol(ProtocolError),
    /// The host-side driver of the guest's work failed, mostly because the guest broke the
    /// protocol.
    Driver(DriverError),
    /// A host driver built a batch larger than the ABI allows (a bug of the driver).
    BatchTooLarge { ops: usize },
    /// The chosen backend cannot do what was asked.
    BackendUnsupported { backend: &'static str, what: String },
    /// The backend's own machinery failed (KVM calls, the console, signal handlers, a
    /// debugger): its error, which the program that linked the backend knows how to report.
    Host(Box<dyn std::error::Error + Send + Sync>),
}

impl RunError {
    /// Whether the guest failed (panicked, triple-faulted, hung, halted or broke the protocol),
    /// as opposed to the host or its input.
    pub fn is_guest_failure(&self) -> bool {
        match self {
            RunError::GuestPanic { .. }
            | RunError::LockOrder { .. }
            | RunError::TripleFault { .. }
            | RunError::Timeout { .. }
            | RunError::GuestHalted { .. }
            | RunError::CpuOffline { .. }
            | RunError::GuestProtocol(_) => true,
            RunError::Driver(e) => e.is_guest_fault(),
            RunError::OnCpu { error, .. } => error.is_guest_failure(),
            RunError::Boot(_)
            | RunError::BatchTooLarge { .. }
            | RunError::BackendUnsupported { .. }
            | RunError::Host(_) => false,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Boot(e) => write!(f, "{e}"),
            RunError::TripleFault { registers } => {
                write!(
                    f,
                    "guest triple-faulted (shutdown exit); vCPU state:\n{registers}"
                )
            }
            RunError::GuestPanic {
                message,
                file,
                line,
                column,
            } => {
                write!(f, "guest panicked at {file}:{line}:{column}: {message}")
            }
            RunError::LockOrder { cpu, finding } => {
                write!(f, "lock-order: the guest MM on cpu {cpu} found: {finding}")
            }
            RunError::Timeout { seconds, registers } => write!(
                f,
                "guest did not exit within {seconds} s of its last sign of progress (a hypercall, or a heartbeat \
                 from a long loop; raise --timeout, or 0 for none); \
                 vCPU state:\n{registers}"
            ),
            RunError::GuestHalted { registers } => {
                write!(
                    f,
                    "guest halted without an exit hypercall; vCPU state:\n{registers}"
                )
            }
            RunError::CpuOffline { cpu, seconds } => write!(
                f,
                "cpu {cpu} did not report in within {seconds} s of being started (raise --timeout)"
            ),
            RunError::OnCpu { cpu, error } => write!(f, "on cpu {cpu}: {error}"),
            RunError::GuestProtocol(why) => write!(f, "guest protocol error: {why}"),
            RunError::Driver(why) => write!(f, "{why}"),
            RunError::BatchTooLarge { ops } => write!(
                f,
                "a driver built a batch of {ops} ops; the ABI allows {}",
                shared_mm::abi::MAX_BATCH
            ),
            RunError::BackendUnsupported { backend, what } => {
                write!(f, "the {backend} backend does not support {what}")
            }
            RunError::Host(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<BootError> for RunError {
    fn from(e: BootError) -> Self {
        RunError::Boot(e)
    }
}

impl From<DriverError> for RunError {
    fn from(e: DriverError) -> Self {
        RunError::Driver(e)
    }
}

impl From<ProtocolError> for RunError {
    fn from(e: ProtocolError) -> Self {
        RunError::GuestProtocol(e)
    }
}
