//! The guest kernel: boots from the VMM's 64-bit entry, reports the CPU, starts the other CPUs
//! (if any), brings up its memory manager and serves the host's MM operations. Its memory
//! manager: `docs/memory-manager.md`; the hypercalls and the memory layout: `docs/abi.md`.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;
mod agent;
mod arch;
mod bench;
mod cpu_info;
mod heap;
mod hostile;
mod hypercall;
mod smp;

use agent::{Mm, MmCpu};
use arch::x86_64::machine;
use arch::x86_64::trace_buffer::TraceBuffer;
use core::panic::PanicInfo;
use guest_mm::{Cpu, MemoryManager, PhysicalFrame, SeededBugs};
use hypercall::Mailbox;
use shared_mm::boot_info::{
    BootInfo, GuestCommand, BOOT_FLAG_TRACE, BOOT_INFO_ADDR, EARLY_EXIT_STATUS,
};

// Every CPU enters here with `rdi` = the boot info and `rsi` = its index. CPU 0 takes the boot
// stack; the VMM gave every other CPU a stack of its own (`shared_mm::smp`).
core::arch::global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "    test rsi, rsi",
    "    jnz 1f",
    "    lea rsp, [rip + {stack} + {stack_size}]",
    "1:",
    "    xor ebp, ebp",
    "    call {kmain}",
    "    ud2",
    stack = sym BOOT_STACK,
    stack_size = const BOOT_STACK_SIZE,
    kmain = sym kmain,
);

const BOOT_STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; BOOT_STACK_SIZE]);

/// The stack `_start` runs `kmain` on, on CPU 0.
static mut BOOT_STACK: Stack = Stack([0; BOOT_STACK_SIZE]);

extern "C" fn kmain(boot_info_phys: u64, cpu: u64) -> ! {
    arch::x86_64::percpu::init(cpu);
    let cpu = arch::x86_64::percpu::current();
    // SAFETY: this is CPU `cpu`, and kmain is the only user of its mailbox.
    let mut mailbox = unsafe { Mailbox::take(cpu) };
    let boot_info = read_boot_info(boot_info_phys);
    if cpu != 0 {
        smp::ap_main(cpu, mailbox, &boot_info)
    }
    println!("guest-kernel: booted, {} MiB RAM", boot_info.ram_size >> 20);
    cpu_info::report();
    arch::x86_64::gdt::init(0);
    arch::x86_64::idt::init();
    let command = GuestCommand::from_u64(boot_info.command);
    if boot_info.cpu_count > 1 {
        if let Err(e) = smp::start_others(&mut mailbox, boot_info.cpu_count as u32) {
            panic!("starting the other CPUs: hypercall failed: {e:?}");
        }
    } else if let Some(
        GuestCommand::ApPanic | GuestCommand::ApTripleFault | GuestCommand::ApSilent,
    ) = command
    {
        panic!("{command:?} needs a second CPU");
    }
    match command {
        Some(
            GuestCommand::Serve
            | GuestCommand::ApPanic
            | GuestCommand::ApTripleFault
            | GuestCommand::ApSilent,
        ) => {
            let (mm, mut cpu) = bring_up_mm(&boot_info);
            serve(&mut mailbox, mm, &mut cpu)
        }
        Some(GuestCommand::AliasTables) => {
            let (mm, mut cpu) = bring_up_mm(&boot_info);
            hostile::alias_tables(mm, &mut cpu);
            serve(&mut mailbox, mm, &mut cpu)
        }
        Some(GuestCommand::HugeCount) => {
            hostile::huge_count(&mut mailbox);
            panic!("the host accepted a batch announcing 2^60 space records")
        }
        Some(GuestCommand::Bench) => {
            if let Err(e) = bench::run(&mut mailbox) {
                panic!("bench: hypercall failed: {e:?}");
            }
            mailbox.exit(0)
        }
        Some(GuestCommand::Panic) => panic!("panic requested by the host"),
        Some(GuestCommand::ExitEarly) => mailbox.exit(EARLY_EXIT_STATUS),
        Some(GuestCommand::Hang) => loop {
            core::hint::spin_loop()
        },
        Some(GuestCommand::TripleFault) => arch::x86_64::triple_fault(),
        None => panic!("unknown boot command {}", boot_info.command),
    }
}

/// The boot info the VMM wrote at `phys` (which must be `BOOT_INFO_ADDR`).
fn read_boot_info(phys: u64) -> BootInfo {
    if phys != BOOT_INFO_ADDR {
        panic!("boot info at {phys:#x}, expected {BOOT_INFO_ADDR:#x}");
    }
    // SAFETY: `phys` is BOOT_INFO_ADDR (checked above): a page of RAM the VMM wrote the boot
    // info into before any CPU started and marked reserved, so no allocator hands it out and
    // nothing writes it while `raw` lives.
    let raw = unsafe { arch::x86_64::physmap::slice(phys, BootInfo::ENCODED_SIZE) };
    match BootInfo::decode(raw) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    }
}

/// Brings up the memory manager on this CPU (CPU 0), gives the heap its backing, and lets the
/// other CPUs (waiting for it) join.
fn bring_up_mm(boot_info: &BootInfo) -> (&'static Mm, MmCpu) {
    heap::HEAP.init_bootstrap();
    let boot_pml4 = PhysicalFrame(arch::x86_64::registers::read_cr3());
    let bugs = SeededBugs::compiled();
    // SAFETY: this runs once, from kmain on CPU 0, before any CPU traces.
    unsafe { TraceBuffer::init(boot_info.flags & BOOT_FLAG_TRACE != 0) };
    let mut cpu = Cpu::new(0, machine::traced(0));
    let (mm, heap) = match MemoryManager::init(boot_info, boot_pml4, &mut cpu, bugs) {
        Ok(ready) => ready,
        Err(e) => panic!("memory manager init failed: {e:?}"),
    };
    // SAFETY: the MM just mapped the heap range writable in the kernel half; its kmalloc region
    // keeps the range reserved for good, and nothing else uses it.
    unsafe { heap::HEAP.add_kmalloc(heap.base().get(), heap.size() as usize) };
    println!(
        "guest-kernel: memory manager up: {} kernel regions, {} free frames",
        mm.kernel_tree(&mut cpu, |tree| tree.len()),
        mm.free_frames(&mut cpu)
    );
    let mm: &'static Mm = alloc::boxed::Box::leak(alloc::boxed::Box::new(mm));
    agent::MM.call_once(|| mm);
    smp::mm_ready(boot_info.cpu_count as u32);
    (mm, cpu)
}

/// Serves the host's MM operations on CPU 0 until it has no more, then exits 0.
fn serve(mailbox: &mut Mailbox, mm: &Mm, cpu: &mut MmCpu) -> ! {
    let _ = mailbox.log("guest-kernel: serving MM operations");
    if let Err(e) = agent::serve(mailbox, mm, cpu) {
        panic!("agent loop: hypercall failed: {e:?}");
    }
    mailbox.exit(0)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let message = hypercall::BoundedText::<512>::format(format_args!("{}", info.message()));
    let text = message.as_str();
    let (file, line, col) = info
        .location()
        .map(|l| (l.file(), l.line(), l.column()))
        .unwrap_or(("<unknown>", 0, 0));
    // SAFETY: normal execution has stopped on this CPU; the panic path takes its mailbox over
    // for good (the host names the CPU whose mailbox the panic arrives in).
    unsafe { Mailbox::take(arch::x86_64::percpu::current()) }.panic(file, line, col, text)
}
