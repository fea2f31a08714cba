//! Why guest RAM could not be laid out for a boot: a bad kernel image, RAM size or CPU count,
//! or RAM that could not be allocated or written.
#![forbid(unsafe_code)]

use crate::boot_tables::BootTablesError;
use std::fmt;

/// Why a guest could not be laid out in RAM, before anything of it runs.
#[derive(Debug)]
pub enum BootError {
    /// The kernel image is not a 64-bit little-endian x86_64 ELF executable.
    NotElf(String),
    /// The ELF headers point past the end of the file.
    TruncatedElf(String),
    /// The ELF entry point lies in no loadable segment's bytes from the file: the guest would
    /// start on zeroes or unmapped memory.
    EntryOutsideSegments { entry: u64 },
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
    /// A CPU count outside 1 to `MAX_CPUS`.
    BadCpuCount { requested: u32 },
    /// Guest RAM could not be allocated.
    GuestMemoryAlloc {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// The boot data could not be written into guest RAM.
    BootData(vm_memory::GuestMemoryError),
    /// The boot page tables could not be built.
    BootTables(BootTablesError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NotElf(why) => {
                write!(f, "kernel image is not an x86_64 ELF executable: {why}")
            }
            BootError::TruncatedElf(why) => write!(f, "kernel ELF is truncated: {why}"),
            BootError::EntryOutsideSegments { entry } => write!(
                f,
                "kernel ELF entry point {entry:#x} lies outside every loadable segment's file bytes"
            ),
            BootError::SegmentOutsideRam {
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
            BootError::Load(e) => write!(f, "cannot load kernel: {e}"),
            BootError::BadMemorySize {
                requested: u64::MAX,
                reason,
            } => {
                write!(f, "bad guest memory size (2^64 bytes or more): {reason}")
            }
            BootError::BadMemorySize { requested, reason } => {
                write!(f, "bad guest memory size {requested} bytes: {reason}")
            }
            BootError::BadCpuCount { requested } => write!(
                f,
                "bad CPU count {requested}: a VM has 1 to {} CPUs",
                shared_mm::smp::MAX_CPUS
            ),
            BootError::GuestMemoryAlloc { mib, source } => {
                write!(f, "cannot allocate {mib} MiB of guest RAM: {source}")
            }
            BootError::BootData(source) => {
                write!(f, "guest memory: writing the boot data: {source}")
            }
            BootError::BootTables(e) => write!(f, "boot page tables: {e}"),
        }
    }
}

impl std::error::Error for BootError {}
