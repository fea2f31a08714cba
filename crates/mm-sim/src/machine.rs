//! The simulated machine: `guest_mm::Machine` in-process, over guest RAM in a `GuestMemoryMmap`
//! (so the page walker, the checker and inspect read it as they read a KVM guest's). Each
//! simulated CPU has a machine of its own, a handle on the [`Board`] they share: RAM, each
//! CPU's registers and maximally stale TLB, and with several CPUs the scheduler, for which
//! every call where CPUs interact is a preemption point.

use crate::cpu::{self, CpuState};
use crate::ram::WrittenPages;
use crate::scheduler::{Scheduler, Wait};
use crate::switch;
use guest_mm::page_directory::PageDirectory;
use guest_mm::{
    FlushRequest, LockClass, LockOrderViolation, Machine, PhysicalFrame, PteSlot, UserEntry,
    UserTrap, FRAME_SIZE,
};
use shared_mm::smp::CpuSet;
use std::cell::{Ref, RefCell};
use std::rc::Rc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use x86_paging::page_walk::read_entry;

/// What every simulated CPU shares: RAM, each CPU's state, and the scheduler.
pub struct Board {
    mem: GuestMemoryMmap,
    cpus: Vec<RefCell<CpuState>>,
    /// Every page written since boot, so that RAM can be reset for the next guest.
    written: RefCell<WrittenPages>,
    /// The lock-order checker's first finding, with its CPU, for the sim to report.
    lock_order: RefCell<Option<(u32, String)>>,
    /// With several CPUs, who runs when; `None` with one.
    pub sched: Option<RefCell<Scheduler>>,
}

impl Board {
    /// `cpus` CPUs on `mem`, each on the page tables at `cr3` with nothing cached, scheduled by
    /// `sched` (with several).
    pub fn new(mem: GuestMemoryMmap, cr3: u64, cpus: u32, sched: Option<Scheduler>) -> Self {
        let ram_size = mem.last_addr().0.saturating_add(1);
        Board {
            mem,
            cpus: (0..cpus)
                .map(|_| RefCell::new(CpuState::new(cr3)))
                .collect(),
            written: RefCell::new(WrittenPages::new(ram_size)),
            lock_order: RefCell::new(None),
            sched: sched.map(RefCell::new),
        }
    }

    /// The lock-order checker's first finding since the last call, with its CPU.
    pub fn take_lock_order(&self) -> Option<(u32, String)> {
        self.lock_order.borrow_mut().take()
    }

    /// The pages written since boot.
    pub fn written(&self) -> Ref<'_, WrittenPages> {
        self.written.borrow()
    }

    /// Keeps a dirty log from now on: every frame written, by the MM's machine calls or by
    /// ring 3 on any CPU, until [`Self::take_written`].
    pub fn start_dirty_log(&self) {
        self.written.borrow_mut().start_log();
    }

    /// The frames written since the last call (or since the log started), lowest first.
    pub fn take_written(&self) -> Vec<u64> {
        self.written.borrow_mut().take_log()
    }

    /// CPU `cpu`: its CR3 and what it caches.
    pub fn cpu(&self, cpu: u32) -> Ref<'_, CpuState> {
        self.cpus[cpu as usize].borrow()
    }
}

/// One simulated CPU's machine.
pub struct SimMachine {
    cpu: u32,
    board: Rc<Board>,
}

impl SimMachine {
    /// CPU `cpu`'s machine on `board`.
    pub fn new(cpu: u32, board: Rc<Board>) -> Self {
        SimMachine { cpu, board }
    }

    pub fn board(&self) -> &Board {
        &self.board
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
        if let Err(e) = self.board.mem.read_slice(buf, addr) {
            panic!("physical read at {:#x}: {e}", addr.0);
        }
    }

    fn write(&mut self, addr: GuestAddress, bytes: &[u8]) {
        self.board.written.borrow_mut().mark(addr.0, bytes.len());
        if let Err(e) = self.board.mem.write_slice(bytes, addr) {
            panic!("physical write at {:#x}: {e}", addr.0);
        }
    }

    fn state(&self) -> std::cell::RefMut<'_, CpuState> {
        self.board.cpus[self.cpu as usize].borrow_mut()
    }

    /// Runs `f` on the scheduler if this CPU's coroutine is the one running (not when the
    /// scheduler's loop serves this CPU, nor with one CPU).
    fn scheduled<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> Option<R> {
        let sched = self.board.sched.as_ref()?;
        let mut sched = sched.borrow_mut();
        (sched.running == Some(self.cpu)).then(|| f(&mut sched))
    }

    /// A preemption point: the scheduler may run another CPU first.
    fn point(&self) {
        if self.scheduled(|s| s.point(self.cpu)) == Some(true) {
            switch::suspend();
        }
    }

    /// A preemption point where this CPU waits for `wait` (set up by `enter`): it runs again
    /// once that happens.
    fn wait(&self, enter: impl FnOnce(&mut Scheduler)) -> bool {
        let waiting = self.scheduled(|s| {
            s.point(self.cpu);
            enter(s);
        });
        if waiting.is_some() {
            switch::suspend();
        }
        waiting.is_some()
    }
}

impl Machine for SimMachine {
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64 {
        let addr = Self::at(table, 8 * index, 8);
        match read_entry(&self.board.mem, addr) {
            Ok(entry) => entry.raw(),
            Err(e) => panic!("physical read at {:#x}: {e}", addr.0),
        }
    }

    fn write_pte(&mut self, slot: PteSlot, value: u64) {
        self.point();
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
        self.point();
        self.state().caches.invlpg(va);
    }

    fn activate(&mut self, directory: &PageDirectory) {
        self.point();
        let mut state = self.state();
        state.cr3 = directory.cr3();
        state.caches.reload();
    }

    fn flush_all(&mut self) {
        self.point();
        self.state().caches.reload();
    }

    /// Queues `request` for each target and waits until the scheduler's loop has served it on
    /// every one (at its next preemption point, or at once if it waits or is idle).
    fn shootdown(&mut self, targets: CpuSet, request: &FlushRequest) {
        let cpu = self.cpu;
        if !self.wait(|s| s.send(cpu, targets.iter(), request)) {
            panic!(
                "cpu {cpu} sends a shootdown to cpus {:#b} outside a simulated CPU's work",
                targets.bits()
            );
        }
    }

    fn lock_acquiring(&mut self, class: LockClass) {
        self.scheduled(|s| s.cpus[self.cpu as usize].wanted = Some(class));
        self.point();
    }

    fn lock_contended(&mut self, class: LockClass) {
        let cpu = self.cpu;
        if !self.wait(|s| s.wait(cpu, Wait::Lock(class))) {
            core::hint::spin_loop();
        }
    }

    fn lock_acquired(&mut self, class: LockClass) {
        self.scheduled(|s| {
            let run = &mut s.cpus[self.cpu as usize];
            run.wanted = None;
            run.held.push(class);
        });
    }

    fn lock_released(&mut self, class: LockClass) {
        self.scheduled(|s| {
            let held = &mut s.cpus[self.cpu as usize].held;
            if let Some(at) = held.iter().rposition(|c| *c == class) {
                held.remove(at);
            }
            s.released(class);
        });
        self.point();
    }

    fn lock_order_violation(&mut self, violation: &LockOrderViolation) {
        self.board
            .lock_order
            .borrow_mut()
            .get_or_insert_with(|| (self.cpu, violation.to_string()));
    }

    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        self.point();
        let mut state = self.board.cpus[self.cpu as usize].borrow_mut();
        let mut written = self.board.written.borrow_mut();
        cpu::run(&self.board.mem, &mut state, &mut written, entry)
    }

    fn frame_freed(&mut self, _frame: PhysicalFrame) {
        self.point();
    }

    fn frame_allocated(&mut self, _frame: PhysicalFrame, _size: u64) {
        self.point();
    }
}
