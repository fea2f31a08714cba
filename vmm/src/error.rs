//! Everything that can go wrong while setting up or running a guest, as one enum.

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
    /// The kernel image is not a 64-bit little-endian x86_64 ELF executable.
    NotElf(String),
    /// The ELF headers point past the end of the file.
    TruncatedElf(String),
    /// An ELF segment would land outside guest RAM or on the VMM's boot structures.
    SegmentOutsideRam {
        paddr: u64,
        memsz: u64,
        ram_size: u64,
        allowed_start: u64,
    },
    /// linux-loader refused the image.
    Load(linux_loader::loader::Error),
    /// The requested guest memory size in bytes (`u64::MAX` when it does not fit in 64 bits)
    /// is below the minimum, above the maximum, or not a multiple of 2 MiB.
    BadMemorySize { requested: u64, reason: String },
    /// /dev/kvm is missing or not usable.
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated or accessed.
    GuestMemory(String),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); carries a register dump.
    TripleFault { registers: String },
    /// The guest reported a panic.
    GuestPanic {
        message: String,
        file: String,
        line: u64,
        column: u64,
    },
    /// The guest made no hypercall for `--timeout` seconds (a hang, or a guest that never exits).
    Timeout { seconds: f64, registers: String },
    /// The guest halted without an exit hypercall.
    GuestHalted { registers: String },
    /// The guest did something the VMM cannot serve (unknown hypercall, bad mailbox contents,
    /// failed VM entry, internal KVM error).
    GuestProtocol(String),
    /// The MM self-check ran, and these steps did not give the expected result.
    SelfCheckFailed(Vec<String>),
    /// The host-side driver of the guest's work failed.
    Driver(String),
    /// The chosen backend cannot do what was asked.
    BackendUnsupported { backend: &'static str, what: String },
    /// The gdb stub failed, or gdb killed the guest.
    Gdb(crate::gdb::GdbError),
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
                write!(f, "cannot read kernel {}: {source}", path.display())
            }
            VmmError::NotElf(why) => {
                write!(f, "kernel image is not an x86_64 ELF executable: {why}")
            }
            VmmError::TruncatedElf(why) => write!(f, "kernel ELF is truncated: {why}"),
            VmmError::SegmentOutsideRam {
                paddr,
                memsz,
                ram_size,
                allowed_start,
            } => {
                if paddr < allowed_start {
                    write!(
                        f,
                        "kernel ELF segment at physical {paddr:#x} lies below {allowed_start:#x}, \
                         on the VMM's boot structures (GDT, boot info, mailbox, page tables); \
                         link the kernel at {allowed_start:#x} or above"
                    )
                } else {
                    write!(
                        f,
                        "kernel ELF segment at physical {paddr:#x} (size {memsz:#x}) runs past the end \
                         of guest RAM at {ram_size:#x}; raise --memory or relink the kernel"
                    )
                }
            }
            VmmError::Load(e) => write!(f, "cannot load kernel: {e}"),
            VmmError::BadMemorySize {
                requested: u64::MAX,
                reason,
            } => {
                write!(f, "bad guest memory size (2^64 bytes or more): {reason}")
            }
            VmmError::BadMemorySize { requested, reason } => {
                write!(f, "bad guest memory size {requested} bytes: {reason}")
            }
            VmmError::KvmUnavailable(why) => write!(f, "KVM is not available: {why}"),
            VmmError::Kvm { what, source } => write!(f, "KVM {what} failed: {source}"),
            VmmError::GuestMemory(why) => write!(f, "guest memory: {why}"),
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
                "guest did not exit within {seconds} s of its last hypercall (raise --timeout, or 0 for none); \
                 vCPU state:\n{registers}"
            ),
            VmmError::GuestHalted { registers } => {
                write!(
                    f,
                    "guest halted without an exit hypercall; vCPU state:\n{registers}"
                )
            }
            VmmError::GuestProtocol(why) => write!(f, "guest protocol error: {why}"),
            VmmError::SelfCheckFailed(failures) => {
                write!(f, "MM self-check failed in {} step(s):", failures.len())?;
                failures.iter().try_for_each(|line| write!(f, "\n  {line}"))
            }
            VmmError::Driver(why) => write!(f, "{why}"),
            VmmError::BackendUnsupported { backend, what } => {
                write!(f, "the {backend} backend does not support {what}")
            }
            VmmError::Gdb(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmmError {}

impl VmmError {
    /// The process exit status the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::GuestPanic { .. } => 101,
            VmmError::TripleFault { .. } => 102,
            VmmError::GuestHalted { .. } | VmmError::GuestProtocol(_) => 103,
            VmmError::Timeout { .. } => 124,
            VmmError::SelfCheckFailed(_) => 1,
            VmmError::Gdb(crate::gdb::GdbError::Killed) => 137,
            _ => 2,
        }
    }
}
