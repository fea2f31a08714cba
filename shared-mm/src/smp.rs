//! What guest and host agree on about several CPUs: how many there may be, where each CPU's
//! mailbox and stacks live, how a CPU learns its index at entry, and sets of CPUs.
//!
//! CPU 0 (the bootstrap processor) keeps the single-CPU layout: its mailbox at
//! [`MAILBOX_ADDR`], its stacks in the kernel image. Every other CPU (an application processor,
//! AP) gets one block of [`AP_BLOCK_SIZE`] bytes in the AP area just above the low reserved
//! area: its mailbox, its kernel stack and its trap stack. The memory map marks the blocks of
//! the CPUs a VM has reserved, and no others, so a one-CPU guest's RAM is what it always was.
//!
//! At entry every CPU has `rdi` = [`BOOT_INFO_ADDR`](crate::boot_info::BOOT_INFO_ADDR) and
//! `rsi` = its index (0 for CPU 0); an AP also has `rsp` at the top of its kernel stack in the
//! direct map. The APIC id of CPU `i` is `i`.
#![forbid(unsafe_code)]

use crate::boot_info::{KERNEL_PHYS_BASE, LOW_RESERVED_END, MAILBOX_ADDR, MAILBOX_SIZE};

/// Most CPUs a VM may have.
pub const MAX_CPUS: u32 = 8;
/// The interrupt vector the host sends a CPU (an MSI through the in-kernel irqchip) when it
/// has a batch for it, after answering it [`BATCH_WAIT`](crate::abi::BATCH_WAIT).
pub const WORK_VECTOR: u8 = 0xf2;
/// Start of the AP area: the block of CPU 1.
pub const AP_AREA_BASE: u64 = LOW_RESERVED_END;
/// Bytes of one AP's block: mailbox, kernel stack, trap stack.
pub const AP_BLOCK_SIZE: u64 = MAILBOX_SIZE + AP_STACK_SIZE + AP_TRAP_STACK_SIZE;
/// Bytes of an AP's kernel stack (as CPU 0's boot stack).
pub const AP_STACK_SIZE: u64 = 0x10000;
/// Bytes of an AP's trap stack, the TSS `rsp0` a trap from ring 3 switches to.
pub const AP_TRAP_STACK_SIZE: u64 = 0x10000;

// Every AP block of the largest VM lies below the kernel image.
const _: () = assert!(reserved_end(MAX_CPUS) <= KERNEL_PHYS_BASE);

/// The AP block of CPU `cpu` (1 to `MAX_CPUS - 1`).
const fn ap_block(cpu: u32) -> u64 {
    AP_AREA_BASE + (cpu as u64 - 1) * AP_BLOCK_SIZE
}

/// Guest-physical address of CPU `cpu`'s mailbox (`cpu` below [`MAX_CPUS`]).
pub const fn mailbox_addr(cpu: u32) -> u64 {
    if cpu == 0 {
        MAILBOX_ADDR
    } else {
        ap_block(cpu)
    }
}

/// Guest-physical top of AP `cpu`'s kernel stack (`cpu` 1 to `MAX_CPUS - 1`).
pub const fn ap_stack_top(cpu: u32) -> u64 {
    ap_block(cpu) + MAILBOX_SIZE + AP_STACK_SIZE
}

/// Guest-physical top of AP `cpu`'s trap stack (`cpu` 1 to `MAX_CPUS - 1`).
pub const fn ap_trap_stack_top(cpu: u32) -> u64 {
    ap_block(cpu) + AP_BLOCK_SIZE
}

/// End of the low reserved area of a VM with `cpus` CPUs (1 to [`MAX_CPUS`]): the boot
/// structures, and the block of every AP.
pub const fn reserved_end(cpus: u32) -> u64 {
    if cpus <= 1 {
        LOW_RESERVED_END
    } else {
        ap_block(cpus)
    }
}

/// A set of CPUs by index, as a bit mask (bit `i`: CPU `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(u32);

impl CpuSet {
    pub const EMPTY: CpuSet = CpuSet(0);

    /// CPUs `0..cpus`.
    pub const fn first(cpus: u32) -> CpuSet {
        if cpus >= 32 {
            CpuSet(u32::MAX)
        } else {
            CpuSet((1 << cpus) - 1)
        }
    }

    pub const fn from_bits(bits: u32) -> CpuSet {
        CpuSet(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, cpu: u32) -> bool {
        cpu < 32 && self.0 & (1 << cpu) != 0
    }

    /// This set with `cpu` (below 32).
    pub const fn with(self, cpu: u32) -> CpuSet {
        if cpu < 32 {
            CpuSet(self.0 | (1 << cpu))
        } else {
            self
        }
    }

    /// This set without `cpu`.
    pub const fn without(self, cpu: u32) -> CpuSet {
        if cpu < 32 {
            CpuSet(self.0 & !(1 << cpu))
        } else {
            self
        }
    }

    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The CPUs of the set, lowest first (one step per member: the guest runs this in
    /// emulated ring 0, where every instruction counts).
    pub fn iter(self) -> impl Iterator<Item = u32> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            let cpu = bits.trailing_zeros();
            bits &= bits.checked_sub(1)?;
            Some(cpu)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn cpu_0_keeps_the_single_cpu_layout() {
        assert_eq!(mailbox_addr(0), MAILBOX_ADDR);
        assert_eq!(reserved_end(1), LOW_RESERVED_END);
    }

    #[test]
    fn ap_blocks_follow_each_other_and_end_where_the_reserved_area_does() {
        assert_eq!(mailbox_addr(1), AP_AREA_BASE);
        for cpu in 1..MAX_CPUS {
            let block = mailbox_addr(cpu);
            assert_eq!(ap_stack_top(cpu), block + MAILBOX_SIZE + AP_STACK_SIZE);
            assert_eq!(ap_trap_stack_top(cpu), block + AP_BLOCK_SIZE);
            assert_eq!(reserved_end(cpu + 1), ap_trap_stack_top(cpu));
            assert_eq!(
                ap_stack_top(cpu) % 16,
                0,
                "entry stacks are 16-byte aligned"
            );
        }
    }

    #[test]
    fn cpu_sets_hold_what_was_put_in() {
        let all = CpuSet::first(4);
        assert_eq!(all.bits(), 0b1111);
        let others = all.without(0);
        assert_eq!(others.iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((others.len(), others.contains(0)), (3, false));
        assert!(CpuSet::EMPTY.is_empty() && CpuSet::first(0).is_empty());
        assert_eq!(CpuSet::first(32).len(), 32);
        assert!(!all.contains(40) && all.without(40) == all);
        assert_eq!(CpuSet::EMPTY.with(2).with(0).bits(), 0b101);
        assert_eq!(all.with(40), all);
    }
}
