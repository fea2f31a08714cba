//! Everything that can go wrong in the VMM, as one enum: what only the KVM backend and the CLI
//! can hit, and the errors of the crates below, wrapped. Each has the exit code the README
//! gives it.
#![forbid(unsafe_code)]

use bounded_io::excerpt::path as shown;
use mm_driver::driver::DriverError;
use mm_driver::protocol_error::ProtocolError;
use mm_driver::RunError;
use mm_fuzz::error::FuzzError;
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
    /// A guest on either backend could not boot or finish (the guest failed, or its RAM could
    /// not be laid out, or a driver failed).
    Run(RunError),
    /// The guest exited before it had done the `steps` steps of `work` it was given (`done` of
    /// them came back), or with a nonzero status after them.
    GuestExited {
        status: u32,
        work: &'static str,
        done: usize,
        steps: usize,
    },
    /// The MM self-check ran, and these steps did not give the expected result.
    SelfCheckFailed(Vec<String>),
    /// A scenario file ran, and these steps or agreement checks failed, one line each.
    ScenarioFailed {
        scenario: PathBuf,
        problems: Vec<String>,
    },
    /// The guest's console output could not be written.
    Console(std::io::Error),
    /// An input file is too large, or an output could not be written.
    File(bounded_io::files::FileError),
    /// The timeout's signal handler could not be installed.
    SignalHandler(vmm_sys_util::errno::Error),
    /// A fuzz campaign, replay or shrink could not go on.
    Fuzz(mm_fuzz::error::FuzzError),
    /// The gdb stub failed, or gdb killed the guest.
    Gdb(crate::gdb::GdbError),
}

impl From<RunError> for VmmError {
    /// A run's error, unwrapped where it is one of the VMM's own that the kvm backend passed up
    /// through the seam.
    fn from(e: RunError) -> Self {
        match e {
            RunError::Host(host) => match host.downcast::<VmmError>() {
                Ok(own) => *own,
                Err(other) => VmmError::Run(RunError::Host(other)),
            },
            e => VmmError::Run(e),
        }
    }
}

impl From<VmmError> for RunError {
    /// The kvm backend's error as the seam passes it up: a run error as it is, anything else
    /// of the VMM's own as the backend's host error.
    fn from(e: VmmError) -> Self {
        match e {
            VmmError::Run(e) => e,
            own => RunError::Host(Box::new(own)),
        }
    }
}

impl From<FuzzError> for VmmError {
    /// A fuzz error, unwrapped to the run's error where it is one.
    fn from(e: FuzzError) -> Self {
        match e {
            FuzzError::Run(e) => VmmError::from(e),
            e => VmmError::Fuzz(e),
        }
    }
}

impl From<guest_boot::BootError> for VmmError {
    fn from(e: guest_boot::BootError) -> Self {
        VmmError::Run(RunError::Boot(e))
    }
}

impl From<DriverError> for VmmError {
    fn from(e: DriverError) -> Self {
        VmmError::Run(RunError::Driver(e))
    }
}

impl From<ProtocolError> for VmmError {
    fn from(e: ProtocolError) -> Self {
        VmmError::Run(RunError::GuestProtocol(e))
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
            VmmError::TooManyCpus { requested, max } => write!(
                f,
                "{requested} CPUs: this host's KVM allows at most {max} vCPUs in a VM"
            ),
            VmmError::KvmUnavailable(why) => write!(f, "KVM is not available: {why}"),
            VmmError::Kvm { what, source } => write!(f, "KVM {what} failed: {source}"),
            VmmError::GuestMemory { what, source } => write!(f, "guest memory: {what}: {source}"),
            VmmError::Run(e) => write!(f, "{e}"),
            VmmError::GuestExited {
                status,
                work,
                done,
                steps,
            } => write!(
                f,
                "the guest exited with status {status} after {done} of the {steps} steps of its {work}"
            ),
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
            VmmError::Console(e) => write!(f, "writing the guest console: {e}"),
            VmmError::SignalHandler(e) => {
                write!(f, "cannot install a signal handler: {e}")
            }
            VmmError::File(e) => write!(f, "{e}"),
            VmmError::Fuzz(e) => write!(f, "{e}"),
            VmmError::Gdb(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmmError {}

impl VmmError {
    /// The process exit status the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::Run(e) => run_exit_code(e),
            VmmError::GuestExited { .. } => 103,
            VmmError::Fuzz(e) => exit_code_of(e).unwrap_or(2),
            VmmError::SelfCheckFailed(_) | VmmError::ScenarioFailed { .. } => 1,
            VmmError::Gdb(crate::gdb::GdbError::Killed) => 137,
            _ => 2,
        }
    }
}

/// The exit status the CLI gives `e`, if it is one of the errors the VMM knows: its own, a
/// run's, or a fuzz campaign's.
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    if let Some(e) = e.downcast_ref::<VmmError>() {
        return Some(e.exit_code());
    }
    if let Some(e) = e.downcast_ref::<RunError>() {
        return Some(run_exit_code(e));
    }
    let fuzz = e.downcast_ref::<FuzzError>()?;
    Some(match fuzz {
        FuzzError::Run(e) | FuzzError::FailedBeforeFirstBatch(e) => run_exit_code(e),
        _ => 2,
    })
}

/// The exit status of a run that ended with `e`: the guest's failures have codes of their own
/// (101 to 103, 124), everything else is the host's or its input's (2), but for the VMM's own
/// errors passed up through the seam, which keep theirs.
pub fn run_exit_code(e: &RunError) -> i32 {
    match e {
        RunError::GuestPanic { .. } | RunError::LockOrder { .. } => 101,
        RunError::TripleFault { .. } => 102,
        RunError::GuestHalted { .. } | RunError::GuestProtocol(_) => 103,
        RunError::Driver(e) if e.is_guest_fault() => 103,
        RunError::OnCpu { error, .. } => run_exit_code(error),
        RunError::Timeout { .. } | RunError::CpuOffline { .. } => 124,
        RunError::Host(host) => host
            .downcast_ref::<VmmError>()
            .map_or(2, VmmError::exit_code),
        RunError::Boot(_)
        | RunError::Driver(_)
        | RunError::BatchTooLarge { .. }
        | RunError::BackendUnsupported { .. } => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest failure, as the seam tells it, is what has a guest failure's exit code.
    #[test]
    fn guest_failures_are_the_errors_with_guest_exit_codes() {
        let registers = String::new;
        let errors = [
            RunError::TripleFault {
                registers: registers(),
            },
            RunError::GuestPanic {
                message: String::new(),
                file: String::new(),
                line: 0,
                column: 0,
            },
            RunError::Timeout {
                seconds: 1.0,
                registers: registers(),
            },
            RunError::GuestHalted {
                registers: registers(),
            },
            RunError::CpuOffline {
                cpu: 1,
                seconds: 1.0,
            },
            RunError::OnCpu {
                cpu: 1,
                error: Box::new(RunError::GuestHalted {
                    registers: registers(),
                }),
            },
            RunError::GuestProtocol(ProtocolError::Cpu0Online),
            RunError::Driver(DriverError::NoKernelSnapshot),
            RunError::Driver(DriverError::Coverage("unreadable".into())),
            RunError::BatchTooLarge { ops: 2000 },
            RunError::BackendUnsupported {
                backend: "sim",
                what: "gdb".into(),
            },
            RunError::Host(Box::new(VmmError::Console(std::io::Error::other("full")))),
            RunError::Host(Box::new(VmmError::Gdb(crate::gdb::GdbError::Killed))),
        ];
        for e in &errors {
            let code = run_exit_code(e);
            assert_eq!(
                e.is_guest_failure(),
                matches!(code, 101..=103 | 124),
                "{e}: exit {code}"
            );
        }
    }

    /// The VMM's own errors keep their exit code and message through the seam and back.
    #[test]
    fn the_vmm_s_own_errors_pass_the_seam_unchanged() {
        let killed = VmmError::Gdb(crate::gdb::GdbError::Killed);
        let text = killed.to_string();
        let back = VmmError::from(RunError::from(killed));
        assert_eq!((back.exit_code(), back.to_string()), (137, text));
        let inside = RunError::OnCpu {
            cpu: 1,
            error: Box::new(RunError::from(VmmError::Gdb(crate::gdb::GdbError::Killed))),
        };
        assert_eq!(VmmError::from(inside).exit_code(), 137);
    }
}
