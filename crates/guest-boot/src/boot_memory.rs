//! Guest RAM as both backends boot it: the kernel ELF loaded at its physical addresses, the
//! boot info with its memory map, the entry GDT and the boot page tables.
#![forbid(unsafe_code)]

use crate::boot_tables;
use crate::error::BootError;
use crate::gdt::ENTRY_GDT;
use crate::loader::{self, KernelInRam, LoadedKernel};
use shared_mm::boot_info::{
    BootInfo, GuestCommand, MemoryKind, MemoryRegion, BOOT_FLAG_TRACE, BOOT_GDT_ADDR,
    BOOT_INFO_ADDR, MAILBOX_ADDR, MAILBOX_SIZE, MAX_GUEST_RAM, MAX_MEMORY_REGIONS, MIN_GUEST_RAM,
};
use shared_mm::smp::{reserved_end, MAX_CPUS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// What a boot lays out: the kernel image in RAM of a size, for a number of CPUs, and what
/// the boot info tells the guest.
#[derive(Clone, Copy, Debug)]
pub struct BootSpec<'a> {
    /// The kernel ELF image.
    pub kernel: &'a [u8],
    /// Guest RAM in bytes.
    pub memory: u64,
    /// CPUs (1 to [`MAX_CPUS`]): the low reserved area grows by one block per AP.
    pub cpus: u32,
    /// Seed for the guest's randomized placement.
    pub random_seed: u64,
    /// What the guest does after boot.
    pub command: GuestCommand,
    /// Whether the MM writes the flush trace.
    pub trace: bool,
}

/// Guest RAM ready to boot.
pub struct BootMemory {
    pub mem: GuestMemoryMmap,
    /// Where the kernel image went.
    pub kernel: LoadedKernel,
    /// What the guest is told at entry (also written at `BOOT_INFO_ADDR`).
    pub info: BootInfo,
    /// The boot PML4.
    pub cr3: u64,
}

fn check_memory_size(size: u64) -> Result<(), BootError> {
    let bad = |reason: String| {
        Err(BootError::BadMemorySize {
            requested: size,
            reason,
        })
    };
    if size < MIN_GUEST_RAM {
        return bad(format!(
            "the guest needs at least {} MiB",
            MIN_GUEST_RAM >> 20
        ));
    }
    if size > MAX_GUEST_RAM {
        return bad(format!("at most {} GiB is supported", MAX_GUEST_RAM >> 30));
    }
    if !size.is_multiple_of(2 << 20) {
        return bad("it must be a multiple of 2 MiB".into());
    }
    Ok(())
}

/// Checks the CPU count, the RAM size and the kernel image, before anything is allocated.
pub fn check(spec: &BootSpec<'_>) -> Result<(), BootError> {
    if !(1..=MAX_CPUS).contains(&spec.cpus) {
        return Err(BootError::BadCpuCount {
            requested: spec.cpus,
        });
    }
    check_memory_size(spec.memory)?;
    loader::check_elf(spec.kernel, spec.memory).map(|_| ())
}

/// The memory map of `ram_size` bytes of RAM holding `kernel`, for a VM of `cpus` CPUs (the
/// low reserved area grows by one block per AP).
fn memory_map(
    ram_size: u64,
    kernel: &LoadedKernel,
    cpus: u32,
) -> ([MemoryRegion; MAX_MEMORY_REGIONS], usize) {
    let mut regions = [BootInfo::EMPTY_REGION; MAX_MEMORY_REGIONS];
    let kernel_end = kernel.phys_end.next_multiple_of(0x1000);
    let low_end = reserved_end(cpus);
    let layout = [
        (0, low_end, MemoryKind::Reserved),
        (low_end, kernel.phys_start - low_end, MemoryKind::Usable),
        (
            kernel.phys_start,
            kernel_end - kernel.phys_start,
            MemoryKind::Reserved,
        ),
        (kernel_end, ram_size - kernel_end, MemoryKind::Usable),
    ];
    let mut n = 0;
    for (base, size, kind) in layout {
        if size > 0 {
            regions[n] = MemoryRegion { base, size, kind };
            n += 1;
        }
    }
    (regions, n)
}

/// About how many frames the guest MM can hand out after a boot of `spec`: the usable RAM of
/// the memory map, less the kernel heap and a few frames for the kernel's own tables. `None`
/// when the kernel image cannot be read.
pub fn available_frames(spec: &BootSpec<'_>) -> Option<usize> {
    let (start, end) = loader::check_elf(spec.kernel, spec.memory).ok()?;
    let kernel = LoadedKernel {
        entry: 0,
        phys_start: start,
        phys_end: end,
    };
    let (regions, n) = memory_map(spec.memory, &kernel, spec.cpus);
    let usable: u64 = regions[..n]
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .map(|r| r.size / 4096)
        .sum();
    let heap = guest_mm::memory_manager::heap_size(spec.memory) / 4096;
    let kernel_tables = 8;
    usize::try_from(usable.saturating_sub(heap + kernel_tables)).ok()
}

/// Allocates guest RAM and writes everything the guest finds there at entry.
pub fn prepare(spec: &BootSpec<'_>) -> Result<BootMemory, BootError> {
    check(spec)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), spec.memory as usize)])
        .map_err(|source| BootError::GuestMemoryAlloc {
            mib: spec.memory >> 20,
            source,
        })?;
    let kernel = loader::load_kernel(&mem, spec.kernel, spec.memory)?;
    write_boot_data(spec, mem, kernel)
}

/// RAM a guest booted on and wrote nothing else into since (or whose other writes were undone):
/// its kernel image as laid out, and the boot data of its RAM size.
pub struct UsedRam {
    pub mem: GuestMemoryMmap,
    pub kernel: LoadedKernel,
    pub in_ram: KernelInRam,
}

/// [`prepare`] on `used` where it holds this kernel laid out the same way and is of this RAM
/// size: the kernel is left in place and the boot data written over the old (the same boot
/// tables, a boot info that may differ only in fields that are always written). No `used`, or
/// any other, gets fresh RAM. Returns what the kernel left in RAM too.
pub fn prepare_on(
    spec: &BootSpec<'_>,
    used: Option<UsedRam>,
) -> Result<(BootMemory, KernelInRam), BootError> {
    check(spec)?;
    let layout = loader::layout(spec.kernel, spec.memory)?;
    let reusable = used.filter(|used| {
        used.in_ram.matches(spec.kernel, &layout)
            && used.mem.last_addr().0.checked_add(1) == Some(spec.memory)
    });
    match reusable {
        Some(used) => Ok((write_boot_data(spec, used.mem, used.kernel)?, used.in_ram)),
        None => {
            let in_ram = KernelInRam::of(spec.kernel, layout);
            Ok((prepare(spec)?, in_ram))
        }
    }
}

/// Writes the boot info, the entry GDT and the boot page tables into `mem`, which holds
/// `kernel`.
fn write_boot_data(
    spec: &BootSpec<'_>,
    mem: GuestMemoryMmap,
    kernel: LoadedKernel,
) -> Result<BootMemory, BootError> {
    let (regions, region_count) = memory_map(spec.memory, &kernel, spec.cpus);
    let info = BootInfo {
        ram_size: spec.memory,
        mailbox_addr: MAILBOX_ADDR,
        mailbox_size: MAILBOX_SIZE,
        kernel_phys_start: kernel.phys_start,
        kernel_phys_end: kernel.phys_end,
        random_seed: spec.random_seed,
        command: spec.command as u64,
        flags: if spec.trace { BOOT_FLAG_TRACE } else { 0 },
        cpu_count: spec.cpus.into(),
        region_count,
        regions,
    };
    let mut encoded = [0u8; BootInfo::ENCODED_SIZE];
    info.encode(&mut encoded).expect("buffer is ENCODED_SIZE");
    let write = |data: &[u8], addr: u64| {
        mem.write_slice(data, GuestAddress(addr))
            .map_err(BootError::BootData)
    };
    write(&encoded, BOOT_INFO_ADDR)?;
    let gdt: Vec<u8> = ENTRY_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(&gdt, BOOT_GDT_ADDR)?;
    let cr3 =
        boot_tables::build_boot_page_tables(&mem, spec.memory, kernel.phys_start, kernel.phys_end)
            .map_err(BootError::BootTables)?;
    Ok(BootMemory {
        mem,
        kernel,
        info,
        cr3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_checked() {
        assert!(check_memory_size(256 << 20).is_ok());
        assert!(check_memory_size(1 << 20).is_err());
        assert!(check_memory_size(1 << 50).is_err());
        assert!(check_memory_size((256 << 20) + 4096).is_err());
    }

    #[test]
    fn memory_map_reserves_boot_area_and_kernel() {
        let kernel = LoadedKernel {
            entry: 0,
            phys_start: 0x20_0000,
            phys_end: 0x28_0800,
        };
        for cpus in 1..=MAX_CPUS {
            let (regions, n) = memory_map(64 << 20, &kernel, cpus);
            let map = &regions[..n];
            assert_eq!(map.iter().map(|r| r.size).sum::<u64>(), 64 << 20);
            assert_eq!(
                map[0],
                MemoryRegion {
                    base: 0,
                    size: reserved_end(cpus),
                    kind: MemoryKind::Reserved
                }
            );
            assert_eq!(
                map[2],
                MemoryRegion {
                    base: 0x20_0000,
                    size: 0x8_1000,
                    kind: MemoryKind::Reserved
                }
            );
            assert!(map.windows(2).all(|w| w[0].base + w[0].size == w[1].base));
        }
        let (one_cpu, _) = memory_map(64 << 20, &kernel, 1);
        assert_eq!(one_cpu[0].size, shared_mm::boot_info::LOW_RESERVED_END);
    }

    #[test]
    fn cpu_counts_are_checked() {
        for cpus in [0, MAX_CPUS + 1] {
            let spec = BootSpec {
                kernel: guest_image::EMBEDDED_KERNEL,
                memory: 256 << 20,
                cpus,
                random_seed: 0,
                command: GuestCommand::Serve,
                trace: true,
            };
            let err = check(&spec).expect_err("out of range");
            assert!(matches!(err, BootError::BadCpuCount { .. }), "{err}");
        }
    }
}
