//! Guest RAM as both backends boot it: the kernel ELF loaded at its physical addresses, the
//! boot info with its memory map, the entry GDT and the boot page tables.
#![forbid(unsafe_code)]

use crate::arch::{gdt::ENTRY_GDT, paging};
use crate::error::VmmError;
use crate::loader::{self, KernelInRam, LoadedKernel};
use crate::vm::VmConfig;
use shared_mm::boot_info::{
    BootInfo, MemoryKind, MemoryRegion, BOOT_FLAG_TRACE, BOOT_GDT_ADDR, BOOT_INFO_ADDR,
    MAILBOX_ADDR, MAILBOX_SIZE, MAX_GUEST_RAM, MAX_MEMORY_REGIONS, MIN_GUEST_RAM,
};
use shared_mm::smp::{reserved_end, MAX_CPUS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

pub(crate) fn check_memory_size(size: u64) -> Result<(), VmmError> {
    let bad = |reason: String| {
        Err(VmmError::BadMemorySize {
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
pub fn check(config: &VmConfig) -> Result<(), VmmError> {
    if !(1..=MAX_CPUS).contains(&config.cpus) {
        return Err(VmmError::BadCpuCount {
            requested: config.cpus,
        });
    }
    check_memory_size(config.memory)?;
    loader::check_elf(&config.kernel, config.memory).map(|_| ())
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

/// About how many frames the guest MM can hand out after boot with `config`: the usable RAM of
/// the memory map, less the kernel heap and a few frames for the kernel's own tables. `None`
/// when the kernel image cannot be read.
pub fn available_frames(config: &VmConfig) -> Option<usize> {
    let (start, end) = loader::check_elf(&config.kernel, config.memory).ok()?;
    let kernel = LoadedKernel {
        entry: 0,
        phys_start: start,
        phys_end: end,
    };
    let (regions, n) = memory_map(config.memory, &kernel, config.cpus);
    let usable: u64 = regions[..n]
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .map(|r| r.size / 4096)
        .sum();
    let heap = guest_mm::memory_manager::heap_size(config.memory) / 4096;
    let kernel_tables = 8;
    usize::try_from(usable.saturating_sub(heap + kernel_tables)).ok()
}

/// Allocates guest RAM and writes everything the guest finds there at entry.
pub fn prepare(config: &VmConfig) -> Result<BootMemory, VmmError> {
    check(config)?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), config.memory as usize)])
        .map_err(|source| VmmError::GuestMemoryAlloc {
            mib: config.memory >> 20,
            source,
        })?;
    let kernel = loader::load_kernel(&mem, &config.kernel, config.memory)?;
    write_boot_data(config, mem, kernel)
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
    config: &VmConfig,
    used: Option<UsedRam>,
) -> Result<(BootMemory, KernelInRam), VmmError> {
    check(config)?;
    let layout = loader::layout(&config.kernel, config.memory)?;
    let reusable = used.filter(|used| {
        used.in_ram.matches(&config.kernel, &layout)
            && used.mem.last_addr().0.checked_add(1) == Some(config.memory)
    });
    match reusable {
        Some(used) => Ok((write_boot_data(config, used.mem, used.kernel)?, used.in_ram)),
        None => {
            let in_ram = KernelInRam::of(&config.kernel, layout);
            Ok((prepare(config)?, in_ram))
        }
    }
}

/// Writes the boot info, the entry GDT and the boot page tables into `mem`, which holds
/// `kernel`.
fn write_boot_data(
    config: &VmConfig,
    mem: GuestMemoryMmap,
    kernel: LoadedKernel,
) -> Result<BootMemory, VmmError> {
    let (regions, region_count) = memory_map(config.memory, &kernel, config.cpus);
    let info = BootInfo {
        ram_size: config.memory,
        mailbox_addr: MAILBOX_ADDR,
        mailbox_size: MAILBOX_SIZE,
        kernel_phys_start: kernel.phys_start,
        kernel_phys_end: kernel.phys_end,
        random_seed: config.random_seed,
        command: config.command as u64,
        flags: if config.trace { BOOT_FLAG_TRACE } else { 0 },
        cpu_count: config.cpus.into(),
        region_count,
        regions,
    };
    let mut encoded = [0u8; BootInfo::ENCODED_SIZE];
    info.encode(&mut encoded).expect("buffer is ENCODED_SIZE");
    let write = |data: &[u8], addr: u64| {
        mem.write_slice(data, GuestAddress(addr))
            .map_err(|source| VmmError::GuestMemory {
                what: "writing the boot data",
                source,
            })
    };
    write(&encoded, BOOT_INFO_ADDR)?;
    let gdt: Vec<u8> = ENTRY_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(&gdt, BOOT_GDT_ADDR)?;
    let cr3 =
        paging::build_boot_page_tables(&mem, config.memory, kernel.phys_start, kernel.phys_end)
            .map_err(VmmError::BootTables)?;
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
        assert!(check_memory_size(crate::vm::DEFAULT_MEMORY).is_ok());
        assert!(check_memory_size(1 << 20).is_err());
        assert!(check_memory_size(1 << 50).is_err());
        assert!(check_memory_size(crate::vm::DEFAULT_MEMORY + 4096).is_err());
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
            let config = VmConfig {
                cpus,
                ..VmConfig::default()
            };
            let err = check(&config).expect_err("out of range");
            assert!(matches!(err, VmmError::BadCpuCount { .. }), "{err}");
        }
    }
}
