//! The real machine under the MM library: `guest_mm::Machine` on x86_64 instructions.

use super::heartbeat;
use super::idt::enter_user;
use super::physmap;
use super::registers::{invlpg, write_cr3};
use guest_mm::page_directory::PageDirectory;
use guest_mm::{Machine, PhysicalFrame, PteSlot, UserEntry, UserTrap};

/// This CPU, its page tables through the direct map, and ring 3.
pub struct X86Machine;

/// The machine the MM runs on: this CPU, with the flush trace written to guest memory.
pub type TracedMachine = guest_mm::trace::Traced<X86Machine, super::trace_buffer::TraceBuffer>;

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

    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        enter_user(entry)
    }

    fn progress(&self) {
        heartbeat::beat()
    }
}
