//! A small machine for the library's unit tests: RAM in a `Vec`, a page walker with no TLB, and
//! a ring 3 that runs only the trampoline's load and store (like Linux's `tools/testing/vma`,
//! the MM is compiled on the host against this one substitute). Several CPUs (host threads, or
//! one thread taking turns) share its RAM and a bus that carries shootdowns between them.

use crate::lock_order::LockOrderViolation;
use crate::machine::{
    Machine, PteSlot, UserEntry, UserTrap, PF_FETCH, PF_PRESENT, PF_USER, PF_WRITE,
    VECTOR_BREAKPOINT, VECTOR_PAGE_FAULT,
};
use crate::page_directory::PageDirectory;
use crate::shootdown::FlushRequest;
use crate::sync::LockClass;
use crate::{MemoryManager, PhysicalFrame, FRAME_SIZE};
use shared_mm::abi::USER_TRAMPOLINE;
use shared_mm::boot_info::{
    BootInfo, GuestCommand, MemoryKind, MemoryRegion, BOOT_PML4_ADDR, KERNEL_PHYS_BASE,
    LOW_RESERVED_END, MAILBOX_ADDR, MAILBOX_SIZE,
};
use shared_mm::pte::{PageLevel, PageTableEntry, PageTableFlags};
use shared_mm::smp::{CpuSet, MAX_CPUS};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// RAM the tests run with.
pub const TEST_RAM: u64 = 32 << 20;
/// The fake kernel image's end (it starts at `KERNEL_PHYS_BASE`).
const KERNEL_END: u64 = KERNEL_PHYS_BASE + (1 << 20);

/// Something the MM asked of the machine, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Flush(u64),
    Activate(u64),
    Freed(u64),
    FlushAll,
    /// A shootdown sent to these CPUs.
    Shootdown(CpuSet, Box<FlushRequest>),
    /// A shootdown from this CPU served.
    Served(u32),
}

/// What the test machines of one MM share: RAM, and the shootdowns in flight.
pub struct Bus {
    ram: Mutex<Vec<u8>>,
    /// Shootdowns each CPU has yet to serve, with their senders.
    pending: [Mutex<Vec<(u32, FlushRequest)>>; MAX_CPUS as usize],
    /// Acknowledgements each sender waits for.
    outstanding: [AtomicU32; MAX_CPUS as usize],
    /// The MM whose shootdowns the targets serve (set once it is up, for threaded tests).
    mm: OnceLock<Arc<MemoryManager<TestMachine>>>,
}

pub struct TestMachine {
    bus: Arc<Bus>,
    cpu: u32,
    cr3: u64,
    pub events: Vec<Event>,
    /// Steps of progress reported so far.
    pub progress: core::cell::Cell<u64>,
    /// Lock-order findings reported.
    pub violations: Vec<LockOrderViolation>,
    /// Runs at the first release of a space lock after ring 3 is next entered.
    after_user_release: Option<Box<dyn FnOnce() + Send>>,
    user_ran: bool,
    /// Every user data access faults, not-present, whatever the tables say: a resolved fault
    /// that never sticks.
    pub faults_forever: bool,
}

/// A boot memory map like the VMM's: the low area and the kernel reserved, the rest usable.
pub fn boot_info() -> BootInfo {
    let mut regions = [BootInfo::EMPTY_REGION; 16];
    let layout = [
        (0, LOW_RESERVED_END, MemoryKind::Reserved),
        (
            LOW_RESERVED_END,
            KERNEL_PHYS_BASE - LOW_RESERVED_END,
            MemoryKind::Usable,
        ),
        (
            KERNEL_PHYS_BASE,
            KERNEL_END - KERNEL_PHYS_BASE,
            MemoryKind::Reserved,
        ),
        (KERNEL_END, TEST_RAM - KERNEL_END, MemoryKind::Usable),
    ];
    for (slot, (base, size, kind)) in regions.iter_mut().zip(layout) {
        *slot = MemoryRegion { base, size, kind };
    }
    BootInfo {
        ram_size: TEST_RAM,
        mailbox_addr: MAILBOX_ADDR,
        mailbox_size: MAILBOX_SIZE,
        kernel_phys_start: KERNEL_PHYS_BASE,
        kernel_phys_end: KERNEL_END,
        random_seed: 0x5eed,
        command: GuestCommand::Serve as u64,
        flags: 0,
        cpu_count: 1,
        region_count: layout.len(),
        regions,
    }
}

/// The (empty) boot PML4 the tests hand to `MemoryManager::init`.
pub const BOOT_PML4: PhysicalFrame = PhysicalFrame(BOOT_PML4_ADDR);

impl TestMachine {
    /// CPU 0 of a new machine.
    pub fn new() -> Self {
        let bus = Bus {
            ram: Mutex::new(vec![0; TEST_RAM as usize]),
            pending: Default::default(),
            outstanding: Default::default(),
            mm: OnceLock::new(),
        };
        TestMachine {
            bus: Arc::new(bus),
            cpu: 0,
            cr3: BOOT_PML4_ADDR,
            events: Vec::new(),
            progress: core::cell::Cell::new(0),
            violations: Vec::new(),
            after_user_release: None,
            user_ran: false,
            faults_forever: false,
        }
    }

    /// CPU `cpu` of the same machine: same RAM, same bus.
    pub fn sibling(&self, cpu: u32) -> Self {
        TestMachine {
            bus: Arc::clone(&self.bus),
            cpu,
            cr3: BOOT_PML4_ADDR,
            events: Vec::new(),
            progress: core::cell::Cell::new(0),
            violations: Vec::new(),
            after_user_release: None,
            user_ran: false,
            faults_forever: false,
        }
    }

    /// Makes shootdowns wait for their acknowledgements, served through `mm` by each target
    /// CPU at its next lock contention, wait or [`TestMachine::serve`] (host threads, one per
    /// CPU). Without it a shootdown only queues the request, and a test serves it by hand.
    pub fn attach(&self, mm: Arc<MemoryManager<TestMachine>>) {
        assert!(self.bus.mm.set(mm).is_ok(), "attached once");
    }

    /// Serves every shootdown sent to this CPU so far, through `mm`.
    pub fn serve_with(&mut self, mm: &MemoryManager<TestMachine>) {
        let pending = core::mem::take(&mut *lock(&self.bus.pending[self.cpu as usize]));
        for (sender, request) in pending {
            mm.serve_shootdown(self, self.cpu, sender, &request);
            self.bus.outstanding[sender as usize].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Serves every shootdown sent to this CPU, through the attached MM.
    pub fn serve(&mut self) {
        if let Some(mm) = self.bus.mm.get().cloned() {
            self.serve_with(&mm);
        }
    }

    /// Runs `meanwhile` at the first release of a space lock after ring 3 is next entered:
    /// what another CPU does between a fault's two looks at its space, if it looks twice.
    pub fn after_user_release(&mut self, meanwhile: Box<dyn FnOnce() + Send>) {
        self.after_user_release = Some(meanwhile);
        self.user_ran = false;
    }

    fn ram(&self) -> MutexGuard<'_, Vec<u8>> {
        lock(&self.bus.ram)
    }

    fn at(frame: PhysicalFrame, offset: usize, len: usize) -> core::ops::Range<usize> {
        assert!(frame.0.is_multiple_of(FRAME_SIZE) && offset + len <= FRAME_SIZE as usize);
        let start = frame.0 as usize + offset;
        start..start + len
    }

    fn read_u64(&self, phys: u64) -> u64 {
        let at = phys as usize;
        u64::from_le_bytes(self.ram()[at..at + 8].try_into().expect("8 bytes"))
    }

    /// The physical address `va` maps to for a ring-3 `write`/`fetch`, or the page fault's
    /// error code. 4 KiB leaves only (user pages are never huge).
    fn translate(&self, va: u64, write: bool, fetch: bool) -> Result<u64, u64> {
        let access = PF_USER | (u64::from(write) * PF_WRITE) | (u64::from(fetch) * PF_FETCH);
        let mut table = self.cr3;
        let (mut user, mut writable, mut nx) = (true, true, false);
        for level in PageLevel::ALL {
            let entry = PageTableEntry::from_raw(self.read_u64(table + 8 * level.index(va) as u64));
            if !entry.contains(PageTableFlags::PRESENT) {
                return Err(access);
            }
            user &= entry.contains(PageTableFlags::USER);
            writable &= entry.contains(PageTableFlags::WRITABLE);
            nx |= entry.contains(PageTableFlags::NO_EXECUTE);
            table = entry.frame();
        }
        if !user || (write && !writable) || (fetch && nx) {
            return Err(PF_PRESENT | access);
        }
        Ok(table + (va & (FRAME_SIZE - 1)))
    }

    fn page_fault(address: u64, error_code: u64) -> UserTrap {
        UserTrap {
            vector: VECTOR_PAGE_FAULT,
            error_code,
            fault_address: address,
            ..UserTrap::default()
        }
    }
}

impl Machine for TestMachine {
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64 {
        self.read_u64(table.0 + 8 * index as u64)
    }

    fn write_pte(&mut self, slot: PteSlot, value: u64) {
        let at = Self::at(slot.table, 8 * slot.index, 8);
        self.ram()[at].copy_from_slice(&value.to_le_bytes());
    }

    fn zero_frame(&mut self, frame: PhysicalFrame) {
        self.ram()[Self::at(frame, 0, FRAME_SIZE as usize)].fill(0);
    }

    fn copy_frame(&mut self, from: PhysicalFrame, to: PhysicalFrame) {
        let from = Self::at(from, 0, FRAME_SIZE as usize);
        self.ram().copy_within(from, to.0 as usize);
    }

    fn read_frame(&self, frame: PhysicalFrame, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.ram()[Self::at(frame, offset, buf.len())]);
    }

    fn write_frame(&mut self, frame: PhysicalFrame, offset: usize, bytes: &[u8]) {
        self.ram()[Self::at(frame, offset, bytes.len())].copy_from_slice(bytes);
    }

    fn flush_page(&mut self, va: u64) {
        self.events.push(Event::Flush(va));
    }

    fn activate(&mut self, directory: &PageDirectory) {
        self.cr3 = directory.cr3();
        self.events.push(Event::Activate(self.cr3));
    }

    /// Runs the trampoline's load (offset 0) or store-and-load (offset 8) on an aligned u64.
    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        self.user_ran = true;
        if let Err(code) = self.translate(entry.rip, false, true) {
            return Self::page_fault(entry.rip, code);
        }
        let store = match entry.rip {
            USER_TRAMPOLINE => false,
            rip if rip == USER_TRAMPOLINE + 8 => true,
            rip => panic!("the test machine runs only the trampoline, not {rip:#x}"),
        };
        assert!(
            entry.rdi.is_multiple_of(8),
            "the test machine loads aligned words only"
        );
        if self.faults_forever {
            return Self::page_fault(entry.rdi, PF_USER | (u64::from(store) * PF_WRITE));
        }
        let phys = match self.translate(entry.rdi, store, false) {
            Ok(phys) => phys as usize,
            Err(code) => return Self::page_fault(entry.rdi, code),
        };
        if store {
            self.ram()[phys..phys + 8].copy_from_slice(&entry.rsi.to_le_bytes());
        }
        UserTrap {
            vector: VECTOR_BREAKPOINT,
            rip: entry.rip + if store { 7 } else { 4 },
            rax: self.read_u64(phys as u64),
            ..UserTrap::default()
        }
    }

    fn frame_freed(&mut self, frame: PhysicalFrame) {
        self.events.push(Event::Freed(frame.0));
    }

    fn flush_all(&mut self) {
        self.events.push(Event::FlushAll);
    }

    /// Queues `request` for each target; with an MM attached, serves this CPU's own shootdowns
    /// while it waits for every acknowledgement (as a halted CPU takes IPIs).
    fn shootdown(&mut self, targets: CpuSet, request: &FlushRequest) {
        self.events
            .push(Event::Shootdown(targets, Box::new(*request)));
        let me = self.cpu as usize;
        for target in targets.iter() {
            self.bus.outstanding[me].fetch_add(1, Ordering::AcqRel);
            lock(&self.bus.pending[target as usize]).push((self.cpu, *request));
        }
        if self.bus.mm.get().is_none() {
            return;
        }
        while self.bus.outstanding[me].load(Ordering::Acquire) != 0 {
            self.serve();
            std::thread::yield_now();
        }
    }

    fn shootdown_served(&mut self, sender: u32) {
        self.events.push(Event::Served(sender));
    }

    fn lock_contended(&mut self, _class: LockClass) {
        self.serve();
        std::thread::yield_now();
    }

    fn lock_released(&mut self, class: LockClass) {
        if class == LockClass::Space && self.user_ran {
            if let Some(meanwhile) = self.after_user_release.take() {
                meanwhile();
            }
        }
    }

    fn lock_order_violation(&mut self, violation: &LockOrderViolation) {
        self.violations.push(*violation);
    }

    fn progress(&self) {
        self.progress.set(self.progress.get() + 1);
    }
}

/// `mutex`, locked (a test that panicked while holding it already failed).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
