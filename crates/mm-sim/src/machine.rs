//! The simulated machine: `guest_mm::Machine` in-process, over guest RAM in a `GuestMemoryMmap`
//! (so the page walker, the checker and inspect read it as they read a KVM guest's), with one
//! CPU whose TLB and paging-structure caches are maximally stale.

use crate::cpu::{self, CpuState};
use crate::ram::WrittenPages;
use guest_mm::page_directory::PageDirectory;
use guest_mm::{
    FlushRequest, LockOrderViolation, Machine, PhysicalFrame, PteSlot, UserEntry, UserTrap,
    FRAME_SIZE,
};
use shared_mm::smp::CpuSet;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use x86_paging::page_walk::read_entry;

/// RAM and the one simulated CPU.
pub struct SimMachine {
    mem: GuestMemoryMmap,
    cpu: CpuState,
    /// Every page written since boot, so that RAM can be reset for the next guest.
    written: WrittenPages,
    /// The lock-order checker's finding, for the sim to report after the operation.
    lock_order: Option<String>,
}

impl SimMachine {
    /// A CPU on `mem` running on the page tables at `cr3`, with nothing cached.
    pub fn new(mem: GuestMemoryMmap, cr3: u64) -> Self {
        let ram_size = mem.last_addr().0.saturating_add(1);
        SimMachine {
            mem,
            cpu: CpuState::new(cr3),
            written: WrittenPages::new(ram_size),
            lock_order: None,
        }
    }

    /// The lock-order checker's first finding since the last call.
    pub fn take_lock_order(&mut self) -> Option<String> {
        self.lock_order.take()
    }

    /// The pages written since boot.
    pub fn written(&self) -> &WrittenPages {
        &self.written
    }

    /// Keeps a dirty log from now on: every frame written, by the MM's machine calls or by
    /// ring 3, until [`Self::take_written`].
    pub fn start_dirty_log(&mut self) {
        self.written.start_log();
    }

    /// The frames written since the last call (or since the log started), lowest first.
    pub fn take_written(&mut self) -> Vec<u64> {
        self.written.take_log()
    }

    /// The CPU: its CR3 and what it caches.
    pub fn cpu(&self) -> &CpuState {
        &self.cpu
    }

    /// Guest-physical `frame + offset`, checked to stay inside the frame. The MM passing a bad
    /// frame is an MM bug: it panics, and the sim reports a guest panic.
    fn at(frame: PhysicalFrame, offset: usize, len: usize) -> GuestAddress {
        assert!(
            frame.0.is_multiple_of(FRAME_SIZE) && offset + len <= FRAME_SIZE as usize,
            "frame access {:#x}+{offset:#x} ({len} bytes) is not inside one frame",
            frame.0
        );
        GuestAddress(frame.0 + offset as u64)
    }

    fn read(&self, addr: GuestAddress, buf: &mut [u8]) {
        if let Err(e) = self.mem.read_slice(buf, addr) {
            panic!("physical read at {:#x}: {e}", addr.0);
        }
    }

    fn write(&mut self, addr: GuestAddress, bytes: &[u8]) {
        self.written.mark(addr.0, bytes.len());
        if let Err(e) = self.mem.write_slice(bytes, addr) {
            panic!("physical write at {:#x}: {e}", addr.0);
        }
    }
}

impl Machine for SimMachine {
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64 {
        let addr = Self::at(table, 8 * index, 8);
        match read_entry(&self.mem, addr) {
            Ok(entry) => entry.raw(),
            Err(e) => panic!("physical read at {:#x}: {e}", addr.0),
        }
    }

    fn write_pte(&mut self, slot: PteSlot, value: u64) {
        self.write(
            Self::at(slot.table, 8 * slot.index, 8),
            &value.to_le_bytes(),
        );
    }

    fn zero_frame(&mut self, frame: PhysicalFrame) {
        self.write(
            Self::at(frame, 0, FRAME_SIZE as usize),
            &[0; FRAME_SIZE as usize],
        );
    }

    fn copy_frame(&mut self, from: PhysicalFrame, to: PhysicalFrame) {
        let mut bytes = [0; FRAME_SIZE as usize];
        self.read(Self::at(from, 0, bytes.len()), &mut bytes);
        self.write(Self::at(to, 0, bytes.len()), &bytes);
    }

    fn read_frame(&self, frame: PhysicalFrame, offset: usize, buf: &mut [u8]) {
        self.read(Self::at(frame, offset, buf.len()), buf);
    }

    fn write_frame(&mut self, frame: PhysicalFrame, offset: usize, bytes: &[u8]) {
        self.write(Self::at(frame, offset, bytes.len()), bytes);
    }

    fn flush_page(&mut self, va: u64) {
        self.cpu.caches.invlpg(va);
    }

    fn activate(&mut self, directory: &PageDirectory) {
        self.cpu.cr3 = directory.cr3();
        self.cpu.caches.reload();
    }

    fn flush_all(&mut self) {
        self.cpu.caches.reload();
    }

    /// The sim runs one CPU, and a space's other CPUs are never set: nothing to shoot down.
    fn shootdown(&mut self, targets: CpuSet, _request: &FlushRequest) {
        panic!(
            "a shootdown to cpus {:#b} on the one-CPU sim",
            targets.bits()
        );
    }

    fn lock_order_violation(&mut self, violation: &LockOrderViolation) {
        self.lock_order.get_or_insert_with(|| violation.to_string());
    }

    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        cpu::run(&self.mem, &mut self.cpu, &mut self.written, entry)
    }
}
