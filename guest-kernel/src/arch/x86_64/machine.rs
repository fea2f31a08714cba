//! The real machine under the MM library: `guest_mm::Machine` on x86_64 instructions, one per
//! CPU.

use super::heartbeat;
use super::idt::enter_user;
use super::physmap;
use super::registers::{invlpg, read_cr3, write_cr3};
use crate::smp::{cross_call, shootdown};
use guest_mm::page_directory::PageDirectory;
use guest_mm::{
    FlushRequest, LockClass, LockOrderViolation, Machine, PhysicalFrame, PteSlot, UserEntry,
    UserTrap,
};
use shared_mm::smp::CpuSet;

/// This CPU, its page tables through the direct map, and ring 3.
pub struct X86Machine;

/// The machine the MM runs on: this CPU, with the flush trace written to guest memory.
pub type TracedMachine = guest_mm::trace::Traced<X86Machine, super::trace_buffer::TraceBuffer>;

/// CPU `cpu`'s machine, traced if the host asked for the trace.
pub fn traced(cpu: u32) -> TracedMachine {
    use super::trace_buffer::TraceBuffer;
    TracedMachine::new(X86Machine, TraceBuffer, TraceBuffer::tracing(), cpu)
}

impl Machine for X86Machine {
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64 {
        physmap::read_entry(table.0, index)
    }

    fn write_pte(&mut self, slot: PteSlot, value: u64) {
        physmap::write_entry(slot.table.0, slot.index, value)
    }

    fn zero_frame(&mut self, frame: PhysicalFrame) {
        physmap::zero_frame(frame.0)
    }

    fn copy_frame(&mut self, from: PhysicalFrame, to: PhysicalFrame) {
        physmap::copy_frame(from.0, to.0)
    }

    fn read_frame(&self, frame: PhysicalFrame, offset: usize, buf: &mut [u8]) {
        physmap::read_bytes(frame.0, offset, buf)
    }

    fn write_frame(&mut self, frame: PhysicalFrame, offset: usize, bytes: &[u8]) {
        physmap::write_bytes(frame.0, offset, bytes)
    }

    fn flush_page(&mut self, va: u64) {
        invlpg(va)
    }

    fn activate(&mut self, directory: &PageDirectory) {
        // SAFETY: a PageDirectory is only made by `new_kernel` (from the boot tables' kernel
        // half) or `new_user` (from the kernel directory's), so its kernel half maps the kernel
        // image, its stacks and the direct map, which is all the kernel touches next.
        unsafe { write_cr3(directory.cr3()) }
    }

    fn flush_all(&mut self) {
        // SAFETY: reloading the tables that are loaded changes no mapping; it only drops the
        // non-global TLB entries.
        unsafe { write_cr3(read_cr3()) }
    }

    fn shootdown(&mut self, targets: CpuSet, request: &FlushRequest) {
        shootdown::post(request);
        cross_call::call(targets, cross_call::Request::Shootdown);
    }

    /// Spins with interrupts on for one `pause`: the lock's holder may be waiting for this
    /// CPU's acknowledgement of a shootdown.
    fn lock_contended(&mut self, _class: LockClass) {
        // SAFETY: `sti` takes effect after `pause`, so pending interrupts are taken between
        // `pause` and `cli`; their handlers (IPIs: shootdowns served with no MM lock; the host's
        // work interrupt) return here, and `cli` restores the kernel's interrupts-off state.
        unsafe { core::arch::asm!("sti", "pause", "cli", options(nostack)) }
    }

    fn lock_order_violation(&mut self, violation: &LockOrderViolation) {
        crate::hypercall::report_lock_order(violation)
    }

    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        enter_user(entry)
    }

    fn progress(&self) {
        heartbeat::beat()
    }
}
