//! The kernel's GDT and TSS: kernel and user segments, and `rsp0` for traps from ring 3.

use core::arch::asm;
use core::mem::size_of;

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

#[repr(C, align(16))]
struct TrapStack([u8; TRAP_STACK_SIZE]);

/// The stack the CPU switches to on a trap from ring 3.
static mut TRAP_STACK: TrapStack = TrapStack([0; TRAP_STACK_SIZE]);

static mut TSS: TaskStateSegment = TaskStateSegment {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: size_of::<TaskStateSegment>() as u16,
};

/// null, kernel code64, kernel data, user data, user code64, TSS (two slots).
static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0,
    0,
];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Installs the GDT and TSS and reloads every segment register. Call once, at boot.
pub fn init() {
    // SAFETY: runs once on the only CPU before anything else uses the GDT, TSS or trap stack;
    // the statics live forever, so the descriptors the CPU caches stay valid.
    unsafe {
        let stack_top = (&raw const TRAP_STACK) as u64 + TRAP_STACK_SIZE as u64;
        let tss_ptr = &raw mut TSS;
        (*tss_ptr).rsp[0] = stack_top;
        let tss = (&raw const TSS) as u64;
        let limit = (size_of::<TaskStateSegment>() - 1) as u64;
        let gdt_ptr = &raw mut GDT;
        let gdt = &mut *gdt_ptr;
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
            "mov gs, {tmp:x}",
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
