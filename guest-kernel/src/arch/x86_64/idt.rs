//! The IDT (one, shared by every CPU), the exception and interrupt entry stubs, and the trip to
//! ring 3 and back.
//!
//! A trap from ring 3 never resumes user code directly: its state is recorded and control goes
//! back to the kernel code that entered user mode (see [`enter_user`]), which decides what to do
//! (resolve a demand fault and re-enter, or report the outcome). Traps in ring 0 are kernel bugs
//! and panic. An IPI is served and resumes whatever it interrupted; the host's work interrupt
//! marks this CPU's work; a spurious interrupt just returns. Every CPU enters ring 3: the kernel
//! stack pointer to return to and the last user trap live in its per-CPU area.

use super::apic::{self, EOI_MSR, IPI_VECTOR, SPURIOUS_VECTOR, WAKE_VECTOR};
use super::gdt::{KERNEL_CS, USER_CS, USER_DS};
use super::percpu::{self, RESUME_RSP_OFFSET};
use super::registers::read_cr2;
use core::arch::{asm, global_asm};
use core::mem::size_of;
use guest_mm::machine::VECTOR_BREAKPOINT;
use guest_mm::{UserEntry, UserTrap};
use shared_mm::smp::WORK_VECTOR;

/// Registers saved by the entry stubs, in stack order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    ".global trap_common",
    "trap_common:",
    "    push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "    push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "    mov rdi, rsp",
    "    cld",
    "    call {dispatch}",
    "    test rax, rax",
    "    jnz {back_to_kernel}",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "    pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "    add rsp, 16",
    "    iretq",
    dispatch = sym trap_dispatch,
    back_to_kernel = sym user_exit_to_kernel,
);

// The 32 exception entry stubs (a dummy error code where the CPU pushes none, then the
// vector) and a table of their addresses.
global_asm!(
    ".section .rodata",
    ".balign 8",
    ".global TRAP_STUBS",
    "TRAP_STUBS:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad trap_stub_\\n",
    ".endr",
    ".text",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "trap_stub_\\n:",
    "  .if \\n == 8 || \\n == 10 || \\n == 11 || \\n == 12 || \\n == 13 || \\n == 14 || \\n == 17 || \\n == 21 || \\n == 29 || \\n == 30",
    "  .else",
    "    push 0",
    "  .endif",
    "    push \\n",
    "    jmp trap_common",
    ".endr",
);

// The interrupt stubs, as short as they can be: each guest instruction in ring 0 costs
// thousands of host cycles here. The IPI's saves only the registers a C call may clobber (nine:
// with the CPU's five-word frame that keeps the stack 16-byte aligned at the call) and calls
// `ipi_handler`. The wake-up's only signals the end of the interrupt: waking the `hlt` was its
// whole job. The spurious interrupt's needs no EOI and has nothing to do.
global_asm!(
    ".global interrupt_stub_ipi",
    "interrupt_stub_ipi:",
    "    push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "    push r8", "push r9", "push r10", "push r11",
    "    cld",
    "    call {handler}",
    "    pop r11", "pop r10", "pop r9", "pop r8",
    "    pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "    iretq",
    ".global interrupt_stub_work",
    "interrupt_stub_work:",
    "    push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "    push r8", "push r9", "push r10", "push r11",
    "    cld",
    "    call {work}",
    "    pop r11", "pop r10", "pop r9", "pop r8",
    "    pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "    iretq",
    ".global interrupt_stub_wake",
    "interrupt_stub_wake:",
    "    push rax", "push rcx", "push rdx",
    "    mov ecx, {eoi}",
    "    xor eax, eax",
    "    xor edx, edx",
    "    wrmsr",
    "    pop rdx", "pop rcx", "pop rax",
    "    iretq",
    ".global interrupt_stub_spurious",
    "interrupt_stub_spurious:",
    "    iretq",
    handler = sym ipi_handler,
    work = sym work_handler,
    eoi = const EOI_MSR,
);

/// The IPI: runs the cross calls waiting for this CPU, then ends the interrupt.
extern "C" fn ipi_handler() {
    crate::smp::cross_call::serve();
    apic::end_of_interrupt();
}

/// The host's work interrupt: this CPU has a batch waiting.
extern "C" fn work_handler() {
    percpu::work_arrived();
    apic::end_of_interrupt();
}

extern "C" {
    static TRAP_STUBS: [u64; 32];
    fn interrupt_stub_ipi();
    fn interrupt_stub_work();
    fn interrupt_stub_wake();
    fn interrupt_stub_spurious();
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Every vector's gate; the ones without a handler are not present.
static mut IDT: [[u64; 2]; 256] = [[0; 2]; 256];

/// An interrupt gate to `handler` with the kernel code selector; `dpl` 3 lets ring 3 raise it
/// with `int` (only #BP: int3 checks the gate's DPL).
fn gate(handler: u64, dpl: u64) -> [u64; 2] {
    let type_attr = 0x8e | (dpl << 5);
    [
        (handler & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | (type_attr << 40)
            | (((handler >> 16) & 0xffff) << 48),
        handler >> 32,
    ]
}

/// Fills the IDT: the exceptions, the two IPIs and the spurious vector. Call once, on CPU 0, after
/// its GDT and before any other CPU starts; then [`load`] it.
pub fn init() {
    // SAFETY: runs once, on CPU 0 with interrupts off before the other CPUs start, and nothing
    // else refers to the IDT static, so the `&mut` to it is unique. `TRAP_STUBS` is the
    // 32-entry table the `global_asm!` above defines, one entry per vector; the two interrupt
    // stubs are defined there too.
    unsafe {
        let idt_ptr = &raw mut IDT;
        let idt = &mut *idt_ptr;
        for (vector, handler) in TRAP_STUBS.iter().enumerate() {
            let dpl = u64::from(vector == VECTOR_BREAKPOINT as usize) * 3;
            idt[vector] = gate(*handler, dpl);
        }
        idt[IPI_VECTOR as usize] = gate(interrupt_stub_ipi as *const () as u64, 0);
        idt[WAKE_VECTOR as usize] = gate(interrupt_stub_wake as *const () as u64, 0);
        idt[WORK_VECTOR as usize] = gate(interrupt_stub_work as *const () as u64, 0);
        idt[SPURIOUS_VECTOR as usize] = gate(interrupt_stub_spurious as *const () as u64, 0);
    }
    load();
}

/// Loads the IDT [`init`] filled on this CPU. Call after this CPU's GDT.
pub fn load() {
    let pointer = DescriptorPointer {
        limit: (size_of::<[[u64; 2]; 256]>() - 1) as u16,
        base: (&raw const IDT) as u64,
    };
    // SAFETY: the IDT lives forever and `init` filled it before this CPU got here (CPU 0 calls
    // it first; the others start after it): every present gate points at a stub with the kernel
    // code selector of this CPU's GDT (`gdt::init` ran), so `lidt` installs a table it can use.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(nostack)) }
}

/// Called by `trap_common` with the saved frame; returns nonzero to go back to the kernel code
/// that entered user mode instead of resuming the interrupted context.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) -> u64 {
    if frame.cs & 3 == 3 {
        let trap = UserTrap {
            vector: frame.vector,
            error_code: frame.error_code,
            fault_address: read_cr2(),
            rip: frame.rip,
            rax: frame.rax,
        };
        percpu::set_last_user_trap(&trap);
        return 1;
    }
    panic!(
        "kernel exception {} (error code {:#x}) at rip {:#x}, cr2 {:#x}, rsp {:#x}",
        frame.vector,
        frame.error_code,
        frame.rip,
        read_cr2(),
        frame.rsp
    );
}

global_asm!(
    ".global enter_user_asm",
    "enter_user_asm:",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    mov gs:[{resume}], rsp",
    "    push {user_ds}",
    "    push 0",
    "    push 0x2",
    "    push {user_cs}",
    "    push qword ptr [rdi]",
    "    mov rsi, [rdi + 16]",
    "    mov rdi, [rdi + 8]",
    "    xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx", "xor ebp, ebp",
    "    xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
    "    xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
    "    iretq",
    ".global user_exit_to_kernel",
    "user_exit_to_kernel:",
    "    mov rsp, gs:[{resume}]",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    ret",
    user_ds = const USER_DS as u64,
    user_cs = const USER_CS as u64,
    resume = const RESUME_RSP_OFFSET,
);

extern "C" {
    fn enter_user_asm(entry: *const UserEntry);
    fn user_exit_to_kernel() -> !;
}

/// Runs ring-3 code at `entry.rip` (interrupts off, no stack) until its first trap, and returns
/// that trap. The code's page must be user-executable in the current address space.
pub fn enter_user(entry: &UserEntry) -> UserTrap {
    // SAFETY: enter_user_asm saves the callee-saved registers and the stack pointer, drops to
    // ring 3 with iretq, and comes back here through user_exit_to_kernel with the same registers
    // and stack, so from Rust's point of view this is an ordinary call that clobbers the
    // caller-saved registers (all of which the C ABI already treats as clobbered). The stack
    // pointer goes to this CPU's per-CPU area (GS), which ring 3 cannot change (the kernel never
    // enables FSGSBASE, and the user code loads no segment).
    unsafe { enter_user_asm(entry) };
    // `trap_dispatch` recorded it on the way back, on this CPU.
    percpu::last_user_trap()
}
