//! Each CPU's GDT and TSS: kernel and user segments, and `rsp0` for traps from ring 3 (a TSS
//! descriptor is marked busy once loaded, so no two CPUs share one).

use super::physmap;
use core::arch::asm;
use core::mem::size_of;
use shared_mm::smp::{ap_trap_stack_top, MAX_CPUS};

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;

/// 64-bit TSS (Intel SDM Vol. 3A, 8.7).
#[repr(C, packed(4))]
struct TaskStateSegment {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

const TRAP_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(4096))]
struct TrapStack([u8; TRAP_STACK_SIZE]);

/// The stack CPU 0 switches to on a trap from ring 3 (the others' are in their AP blocks). The
/// linker script puts it last in the image.
#[link_section = ".bss.zz_trap_stack"]
static mut TRAP_STACK: TrapStack = TrapStack([0; TRAP_STACK_SIZE]);

/// Each CPU's TSS, by CPU index.
static mut TSS: [TaskStateSegment; MAX_CPUS as usize] = [const {
    TaskStateSegment {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: size_of::<TaskStateSegment>() as u16,
    }
}; MAX_CPUS as usize];

/// Each CPU's GDT, by CPU index: null, kernel code64, kernel data, user data, user code64,
/// TSS (two slots).
static mut GDT: [[u64; 7]; MAX_CPUS as usize] = [[
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0,
    0,
]; MAX_CPUS as usize];

/// The top of CPU `cpu`'s trap stack.
fn trap_stack_top(cpu: usize) -> u64 {
    if cpu == 0 {
        (&raw const TRAP_STACK) as u64 + TRAP_STACK_SIZE as u64
    } else {
        physmap::virt(ap_trap_stack_top(cpu as u32))
    }
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Installs the GDT and TSS of `cpu`, the CPU this runs on, and reloads every segment
/// register but GS (whose base points at the per-CPU area). Call once per CPU, at its boot.
pub fn init(cpu: u32) {
    let cpu = cpu as usize;
    assert!(cpu < MAX_CPUS as usize, "cpu {cpu} has no GDT");
    // SAFETY: each CPU runs this once, for its own index, before anything uses its GDT, TSS or
    // trap stack, so the `&mut` to its slots is unique (other CPUs touch only theirs); the
    // statics live forever, so the descriptors the CPU caches stay valid. An AP's trap stack is
    // its AP block's, which the memory map reserves and the direct map covers.
    unsafe {
        let tss_ptr = &raw mut TSS;
        let tss_slot = &mut (*tss_ptr)[cpu];
        tss_slot.rsp[0] = trap_stack_top(cpu);
        let tss = core::ptr::from_ref(tss_slot) as u64;
        let limit = (size_of::<TaskStateSegment>() - 1) as u64;
        let gdt_ptr = &raw mut GDT;
        let gdt = &mut (*gdt_ptr)[cpu];
        gdt[5] = limit | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56);
        gdt[6] = tss >> 32;
        let pointer = DescriptorPointer {
            limit: (size_of::<[u64; 7]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        asm!(
            "lgdt [{ptr}]",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "xor {tmp:e}, {tmp:e}",
            "mov fs, {tmp:x}",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            ptr = in(reg) &pointer,
            ds = in(reg) KERNEL_DS as u64,
            cs = in(reg) KERNEL_CS as u64,
            tss = in(reg) TSS_SELECTOR as u64,
            tmp = out(reg) _,
        );
    }
}
