//! The boot-info block the VMM hands the guest: guest-physical layout, memory map and mailbox location.
#![forbid(unsafe_code)]

use crate::wire::{Reader, Writer};

/// Guest-physical address of the GDT the VMM builds for 64-bit entry.
pub const BOOT_GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the encoded [`BootInfo`]; its address is also passed in `rdi`.
pub const BOOT_INFO_ADDR: u64 = 0x2000;
/// Guest-physical address of the hypercall mailbox.
pub const MAILBOX_ADDR: u64 = 0x10000;
/// Size of the hypercall mailbox in bytes (16 pages).
pub const MAILBOX_SIZE: u64 = 0x10000;
/// Guest-physical address of the boot PML4; the boot page tables follow it.
pub const BOOT_PML4_ADDR: u64 = 0x20000;
/// End of the low reserved area (GDT, boot info, mailbox, boot page tables, flush trace).
pub const LOW_RESERVED_END: u64 = 0x50000;
/// Guest-physical address the kernel image is linked to load at.
pub const KERNEL_PHYS_BASE: u64 = 0x20_0000;
/// Virtual base of the direct map of all guest RAM (PML4 slot 256).
pub const PHYSMAP_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Virtual base of the kernel image window: `KERNEL_VIRT_BASE + p` maps physical `p` for the first 1 GiB.
pub const KERNEL_VIRT_BASE: u64 = 0xFFFF_FFFF_8000_0000;
/// Largest guest RAM the boot page tables can direct-map.
pub const MAX_GUEST_RAM: u64 = 16 << 30;
/// Smallest guest RAM the kernel can run in.
pub const MIN_GUEST_RAM: u64 = 16 << 20;
/// Identifies a valid boot-info block ("MMBOOT01").
pub const BOOT_INFO_MAGIC: u64 = 0x3130_544F_4F42_4D4D;
/// Capacity of the memory map.
pub const MAX_MEMORY_REGIONS: usize = 16;

// The guest-physical layout must not overlap itself; checked when the crate compiles.
const _: () = {
    assert!(BOOT_INFO_ADDR + BootInfo::ENCODED_SIZE as u64 <= MAILBOX_ADDR);
    assert!(MAILBOX_ADDR + MAILBOX_SIZE <= BOOT_PML4_ADDR);
    assert!(BOOT_PML4_ADDR < crate::trace::TRACE_ADDR);
    assert!(crate::trace::TRACE_ADDR + crate::trace::TRACE_SIZE <= LOW_RESERVED_END);
    assert!(LOW_RESERVED_END <= KERNEL_PHYS_BASE);
};

/// [`BootInfo::flags`] bit: the guest writes the flush trace.
pub const BOOT_FLAG_TRACE: u64 = 1;

/// What the guest does after boot; the VMM chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCommand {
    /// Run the agent loop: fetch MM operation batches from the host until it says done.
    Serve = 0,
    /// Panic on purpose (tests the VMM's panic report).
    Panic = 1,
    /// Spin forever without exiting (tests the VMM's timeout).
    Hang = 2,
    /// Fault with no usable IDT, so the CPU shuts down (tests the triple-fault report).
    TripleFault = 3,
    /// Time the exits: raw port-I/O exits, then `Ping` hypercalls, between marker `Batch`
    /// hypercalls, then exit 0 (drives the `system` bench).
    Bench = 4,
    /// Attack the host's page walker: bring up the MM, create space 1, point every user-half
    /// PML4 entry of it at the PML4 itself (512^4 leaves if walked to the end), then serve.
    AliasTables = 5,
    /// Attack the host's decoder: a `Batch` hypercall announcing 2^60 space records.
    HugeCount = 6,
    /// The last CPU panics after it reports in (tests the report naming an AP; needs 2 CPUs).
    ApPanic = 7,
    /// The last CPU triple-faults after it reports in (needs 2 CPUs).
    ApTripleFault = 8,
    /// The last CPU halts with interrupts off instead of reporting in (tests the report of a
    /// CPU that never comes online; needs 2 CPUs).
    ApSilent = 9,
    /// Exit with status [`EARLY_EXIT_STATUS`] before asking for any work (tests that the VMM
    /// names the status).
    ExitEarly = 10,
}

/// The status [`GuestCommand::ExitEarly`] exits with.
pub const EARLY_EXIT_STATUS: u32 = 7;

impl GuestCommand {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => GuestCommand::Serve,
            1 => GuestCommand::Panic,
            2 => GuestCommand::Hang,
            3 => GuestCommand::TripleFault,
            4 => GuestCommand::Bench,
            5 => GuestCommand::AliasTables,
            6 => GuestCommand::HugeCount,
            7 => GuestCommand::ApPanic,
            8 => GuestCommand::ApTripleFault,
            9 => GuestCommand::ApSilent,
            10 => GuestCommand::ExitEarly,
            _ => return None,
        })
    }
}

/// What a physical memory range may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM the frame allocator may hand out.
    Usable = 1,
    /// Boot structures, mailbox or the kernel image: never handed out.
    Reserved = 2,
}

/// One physical range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// Everything the guest learns from the VMM at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub ram_size: u64,
    pub mailbox_addr: u64,
    pub mailbox_size: u64,
    pub kernel_phys_start: u64,
    pub kernel_phys_end: u64,
    /// Seed for the guest's randomized placement, chosen by the host.
    pub random_seed: u64,
    /// What the guest should do after boot (a [`GuestCommand`] value).
    pub command: u64,
    /// `BOOT_FLAG_*` bits.
    pub flags: u64,
    /// CPUs the VM has (1 to [`MAX_CPUS`](crate::smp::MAX_CPUS)); CPU 0 starts the others.
    pub cpu_count: u64,
    pub region_count: usize,
    pub regions: [MemoryRegion; MAX_MEMORY_REGIONS],
}

/// Why a boot-info block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    Truncated,
    BadMagic,
    TooManyRegions,
    BadMemoryKind,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BootInfoError::Truncated => "boot info is truncated",
            BootInfoError::BadMagic => "boot info has a bad magic number",
            BootInfoError::TooManyRegions => "boot info lists too many memory regions",
            BootInfoError::BadMemoryKind => "boot info has an unknown memory kind",
        })
    }
}

impl BootInfo {
    /// Encoded size in bytes.
    pub const ENCODED_SIZE: usize = 10 * 8 + 8 + MAX_MEMORY_REGIONS * 24;

    pub const EMPTY_REGION: MemoryRegion = MemoryRegion {
        base: 0,
        size: 0,
        kind: MemoryKind::Reserved,
    };

    /// The valid part of the memory map.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count.min(MAX_MEMORY_REGIONS)]
    }

    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        w.put_u64(BOOT_INFO_MAGIC);
        w.put_u64(self.ram_size);
        w.put_u64(self.mailbox_addr);
        w.put_u64(self.mailbox_size);
        w.put_u64(self.kernel_phys_start);
        w.put_u64(self.kernel_phys_end);
        w.put_u64(self.random_seed);
        w.put_u64(self.command);
        w.put_u64(self.flags);
        w.put_u64(self.cpu_count);
        w.put_u64(self.region_count as u64);
        for r in &self.regions {
            w.put_u64(r.base);
            w.put_u64(r.size);
            w.put_u64(r.kind as u64);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<BootInfo, BootInfoError> {
        let mut r = Reader::new(buf);
        let mut next = || r.u64().ok_or(BootInfoError::Truncated);
        if next()? != BOOT_INFO_MAGIC {
            return Err(BootInfoError::BadMagic);
        }
        let mut info = BootInfo {
            ram_size: next()?,
            mailbox_addr: next()?,
            mailbox_size: next()?,
            kernel_phys_start: next()?,
            kernel_phys_end: next()?,
            random_seed: next()?,
            command: next()?,
            flags: next()?,
            cpu_count: next()?,
            region_count: 0,
            regions: [Self::EMPTY_REGION; MAX_MEMORY_REGIONS],
        };
        let count = next()?;
        if count > MAX_MEMORY_REGIONS as u64 {
            return Err(BootInfoError::TooManyRegions);
        }
        info.region_count = count as usize;
        for slot in info.regions.iter_mut() {
            let (base, size, kind) = (next()?, next()?, next()?);
            let kind = match kind {
                1 => MemoryKind::Usable,
                2 => MemoryKind::Reserved,
                _ => return Err(BootInfoError::BadMemoryKind),
            };
            *slot = MemoryRegion { base, size, kind };
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_round_trips() {
        let mut info = BootInfo {
            ram_size: 64 << 20,
            mailbox_addr: MAILBOX_ADDR,
            mailbox_size: MAILBOX_SIZE,
            kernel_phys_start: KERNEL_PHYS_BASE,
            kernel_phys_end: KERNEL_PHYS_BASE + 0x5000,
            random_seed: 7,
            command: GuestCommand::Serve as u64,
            flags: BOOT_FLAG_TRACE,
            cpu_count: 2,
            region_count: 2,
            regions: [BootInfo::EMPTY_REGION; MAX_MEMORY_REGIONS],
        };
        info.regions[0] = MemoryRegion {
            base: 0,
            size: LOW_RESERVED_END,
            kind: MemoryKind::Reserved,
        };
        info.regions[1] = MemoryRegion {
            base: LOW_RESERVED_END,
            size: 1 << 20,
            kind: MemoryKind::Usable,
        };
        let mut buf = [0u8; BootInfo::ENCODED_SIZE];
        assert_eq!(info.encode(&mut buf), Some(BootInfo::ENCODED_SIZE));
        assert_eq!(BootInfo::decode(&buf), Ok(info));
        assert_eq!(info.memory_map().len(), 2);
    }

    #[test]
    fn boot_info_rejects_garbage() {
        assert_eq!(BootInfo::decode(&[0u8; 4]), Err(BootInfoError::Truncated));
        assert_eq!(
            BootInfo::decode(&[0u8; BootInfo::ENCODED_SIZE]),
            Err(BootInfoError::BadMagic)
        );
    }
}
