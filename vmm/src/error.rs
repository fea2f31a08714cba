//! Everything that can go wrong while setting up or running a guest, as one enum.
#![forbid(unsafe_code)]

pub use crate::protocol_error::ProtocolError;
use bounded_io::excerpt::path as shown;
use std::fmt;
use std::path::PathBuf;

/// Why the VMM could not boot or finish a guest.
#[derive(Debug)]
pub enum VmmError {
    /// The kernel file given with `--kernel` could not be read.
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Guest RAM could not be laid out for the boot (bad image, RAM size or CPU count).
    Boot(guest_boot::BootError),
    /// More CPUs than this host's KVM allows in one VM.
    TooManyCpus { requested: u32, max: usize },
    /// /dev/kvm is missing or not usable.
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be read or written.
    GuestMemory {
        /// What the VMM was doing ("reading the mailbox").
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); carries a register dump.
    TripleFault { registers: String },
    /// The guest reported a panic.
    GuestPanic {
        message: String,
        file: String,
        line: u64,
        column: u64,
    },
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
    OnCpu { cpu: u32, error: Box<VmmError> },
    /// The guest exited before it had done the `steps` steps of `work` it was given (`done` of
    /// them came back), or with a nonzero status after them.
    GuestExited {
        status: u32,
        work: &'static str,
        done: usize,
        steps: usize,
    },
    /// The guest did something the VMM cannot serve (unknown hypercall, bad mailbox contents,
    /// failed VM entry, internal KVM error).
    GuestProtocol(ProtocolError),
    /// The MM self-check ran, and these steps did not give the expected result.
    SelfCheckFailed(Vec<String>),
    /// A scenario file ran, and these steps or agreement checks failed, one line each.
    ScenarioFailed {
        scenario: PathBuf,
        problems: Vec<String>,
    },
    /// The host-side driver of the guest's work failed, mostly because the guest broke the
    /// protocol.
    Driver(crate::driver::DriverError),
    /// The guest's console output could not be written.
    Console(std::io::Error),
    /// An output file could not be written.
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A host driver built a batch larger than the ABI allows (a bug of the driver).
    BatchTooLarge { ops: usize },
    /// An input file is too large, or an output could not be written.
    File(bounded_io::files::FileError),
    /// The timeout's signal handler could not be installed.
    SignalHandler(vmm_sys_util::errno::Error),
    /// A fuzz job's thread panicked.
    JobPanicked,
    /// The guest failed before it asked for its first batch of work.
    FailedBeforeFirstBatch(Box<VmmError>),
    /// The chosen backend cannot do what was asked.
    BackendUnsupported { backend: &'static str, what: String },
    /// The gdb stub failed, or gdb killed the guest.
    Gdb(crate::gdb::GdbError),
}

impl From<guest_boot::BootError> for VmmError {
    fn from(e: guest_boot::BootError) -> Self {
        VmmError::Boot(e)
    }
}

impl From<crate::gdb::GdbError> for VmmError {
    fn from(e: crate::gdb::GdbError) -> Self {
        VmmError::Gdb(e)
    }
}

impl fmt::Display for VmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmError::KernelUnreadable { path, source } => {
                write!(f, "cannot read kernel {}: {source}", shown(path))
            }
            VmmError::Boot(e) => write!(f, "{e}"),
            VmmError::TooManyCpus { requested, max } => write!(
                f,
                "{requested} CPUs: this host's KVM allows at most {max} vCPUs in a VM"
            ),
            VmmError::KvmUnavailable(why) => write!(f, "KVM is not available: {why}"),
            VmmError::Kvm { what, source } => write!(f, "KVM {what} failed: {source}"),
            VmmError::GuestMemory { what, source } => write!(f, "guest memory: {what}: {source}"),
            VmmError::TripleFault { registers } => {
                write!(
                    f,
                    "guest triple-faulted (shutdown exit); vCPU state:\n{registers}"
                )
            }
            VmmError::GuestPanic {
                message,
                file,
                line,
                column,
            } => {
                write!(f, "guest panicked at {file}:{line}:{column}: {message}")
            }
            VmmError::Timeout { seconds, registers } => write!(
                f,
                "guest did not exit within {seconds} s of its last sign of progress (a hypercall, or a heartbeat \
                 from a long loop; raise --timeout, or 0 for none); \
                 vCPU state:\n{registers}"
            ),
            VmmError::GuestHalted { registers } => {
                write!(
                    f,
                    "guest halted without an exit hypercall; vCPU state:\n{registers}"
                )
            }
            VmmError::CpuOffline { cpu, seconds } => write!(
                f,
                "cpu {cpu} did not report in within {seconds} s of being started (raise --timeout)"
            ),
            VmmError::OnCpu { cpu, error } => write!(f, "on cpu {cpu}: {error}"),
            VmmError::GuestExited {
                status,
                work,
                done,
                steps,
            } => write!(
                f,
                "the guest exited with status {status} after {done} of the {steps} steps of its {work}"
            ),
            VmmError::GuestProtocol(why) => write!(f, "guest protocol error: {why}"),
            VmmError::SelfCheckFailed(failures) => {
                write!(f, "MM self-check failed in {} step(s):", failures.len())?;
                failures.iter().try_for_each(|line| write!(f, "\n  {line}"))
            }
            VmmError::ScenarioFailed { scenario, problems } => {
                write!(
                    f,
                    "scenario {} failed in {} place(s):",
                    scenario.display(),
                    problems.len()
                )?;
                problems.iter().try_for_each(|line| write!(f, "\n  {line}"))
            }
            VmmError::Driver(why) => write!(f, "{why}"),
            VmmError::Console(e) => write!(f, "writing the guest console: {e}"),
            VmmError::Output { path, source } => {
                write!(f, "cannot write {}: {source}", shown(path))
            }
            VmmError::BatchTooLarge { ops } => write!(
                f,
                "a driver built a batch of {ops} ops; the ABI allows {}",
                shared_mm::abi::MAX_BATCH
            ),
            VmmError::SignalHandler(e) => {
                write!(f, "cannot install a signal handler: {e}")
            }
            VmmError::JobPanicked => f.write_str("a fuzz job panicked"),
            VmmError::File(e) => write!(f, "{e}"),
            VmmError::FailedBeforeFirstBatch(e) => {
                write!(f, "the guest failed before its first batch of work: {e}")
            }
            VmmError::BackendUnsupported { backend, what } => {
                write!(f, "the {backend} backend does not support {what}")
            }
            VmmError::Gdb(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmmError {}

impl VmmError {
    /// Whether the guest failed (panicked, triple-faulted, hung, halted or broke the protocol),
    /// as opposed to the host or its input: the exit codes the README gives guest failures.
    pub fn is_guest_failure(&self) -> bool {
        matches!(self.exit_code(), 101..=103 | 124)
    }

    /// The process exit status the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::GuestPanic { .. } => 101,
            VmmError::TripleFault { .. } => 102,
            VmmError::GuestHalted { .. }
            | VmmError::GuestExited { .. }
            | VmmError::GuestProtocol(_) => 103,
            VmmError::Driver(e) if e.is_guest_fault() => 103,
            VmmError::FailedBeforeFirstBatch(e) | VmmError::OnCpu { error: e, .. } => e.exit_code(),
            VmmError::Timeout { .. } | VmmError::CpuOffline { .. } => 124,
            VmmError::SelfCheckFailed(_) | VmmError::ScenarioFailed { .. } => 1,
            VmmError::Gdb(crate::gdb::GdbError::Killed) => 137,
            _ => 2,
        }
    }
}
