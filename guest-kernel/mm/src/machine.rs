//! The machine seam: the one trait through which the MM touches hardware, and the ring-3 trap
//! record it returns.

use crate::lock_order::LockOrderViolation;
use crate::page_directory::PageDirectory;
use crate::shootdown::FlushRequest;
use crate::sync::LockClass;
use crate::PhysicalFrame;
use shared_mm::pte::PageLevel;
use shared_mm::smp::CpuSet;

/// Which page-table entry a write goes to, and which translation that entry serves (the
/// directory and virtual address let a machine trace what the TLB may hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteSlot {
    /// The root (PML4) of the directory the table belongs to.
    pub directory: PhysicalFrame,
    /// The table holding the entry.
    pub table: PhysicalFrame,
    /// The entry's index in the table, below 512.
    pub index: usize,
    /// The table's level.
    pub level: PageLevel,
    /// The first (canonical) virtual address the entry maps.
    pub va: u64,
}

/// Where user mode starts and what it is given (the layout the guest's entry stub reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct UserEntry {
    pub rip: u64,
    pub rdi: u64,
    pub rsi: u64,
}

/// How a stay in ring 3 ended: the first exception it raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserTrap {
    pub vector: u64,
    pub error_code: u64,
    /// CR2 at the trap (meaningful for page faults).
    pub fault_address: u64,
    pub rip: u64,
    pub rax: u64,
}

/// Exception vectors a ring-3 access can end with.
pub const VECTOR_INVALID_OPCODE: u64 = 6;
pub const VECTOR_BREAKPOINT: u64 = 3;
pub const VECTOR_GENERAL_PROTECTION: u64 = 13;
pub const VECTOR_PAGE_FAULT: u64 = 14;

/// Page-fault error code bits (Intel SDM Vol. 3A, 4.7).
pub const PF_PRESENT: u64 = 1 << 0;
pub const PF_WRITE: u64 = 1 << 1;
pub const PF_USER: u64 = 1 << 2;
pub const PF_RESERVED: u64 = 1 << 3;
pub const PF_FETCH: u64 = 1 << 4;

/// Every raw access the MM makes, on one CPU (each CPU has its own machine). Frames are 4 KiB
/// physical frames the MM got from its frame allocator (or the boot tables it was given);
/// offsets and lengths stay inside one frame.
///
/// Every call that touches state other CPUs see (a PTE write, a flush, an activation, a lock
/// hook, a shootdown, a frame freed) is a point where a simulated machine may switch CPUs.
pub trait Machine {
    /// Entry `index` (below 512) of the page table in `table`.
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64;
    /// Writes the entry at `slot`. The caller flushes whatever the old value may have cached.
    fn write_pte(&mut self, slot: PteSlot, value: u64);
    /// Fills `frame` with zeros.
    fn zero_frame(&mut self, frame: PhysicalFrame);
    /// Copies all of `from` into `to`.
    fn copy_frame(&mut self, from: PhysicalFrame, to: PhysicalFrame);
    /// Reads `buf.len()` bytes of `frame` from `offset`.
    fn read_frame(&self, frame: PhysicalFrame, offset: usize, buf: &mut [u8]);
    /// Writes `bytes` into `frame` at `offset`.
    fn write_frame(&mut self, frame: PhysicalFrame, offset: usize, bytes: &[u8]);
    /// Drops every cached translation of the page at `va` in the active directory (`invlpg`).
    fn flush_page(&mut self, va: u64);
    /// Makes `directory` the active one (a CR3 load, which flushes every non-global entry).
    fn activate(&mut self, directory: &PageDirectory);
    /// Drops every non-global cached translation: a CR3 reload of the active directory.
    fn flush_all(&mut self);
    /// Sends one round of shootdown IPIs: every CPU of `targets` (never this one) runs
    /// `request` ([`MemoryManager::serve_shootdown`](crate::MemoryManager::serve_shootdown))
    /// and acknowledges it; returns only once each has. A CPU waiting here takes interrupts
    /// (and on x86_64 halts), so the shootdowns sent to it meanwhile are served.
    fn shootdown(&mut self, targets: CpuSet, request: &FlushRequest);
    /// This CPU ran the shootdown `sender` asked for; the acknowledgement goes out next.
    /// Nothing to do on hardware; a tracing machine notes it.
    fn shootdown_served(&mut self, _sender: u32) {}
    /// Before the first try at a lock of `class`.
    fn lock_acquiring(&mut self, _class: LockClass) {}
    /// A try at a lock of `class` failed; the CPU tries again after this returns. It must let
    /// shootdowns in (the holder may be waiting for this CPU's acknowledgement).
    fn lock_contended(&mut self, _class: LockClass) {
        core::hint::spin_loop()
    }
    /// A lock of `class` was released.
    fn lock_released(&mut self, _class: LockClass) {}
    /// The lock-order checker found two paths taking two locks in opposite orders: a finding
    /// for the host (never a hang or a bare panic). The MM goes on taking the lock when this
    /// returns.
    fn lock_order_violation(&mut self, violation: &LockOrderViolation);
    /// Runs ring-3 code from `entry` in the active directory until its first exception.
    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap;
    /// `frame` went back to the allocator. Nothing to do on hardware; a tracing machine notes it.
    fn frame_freed(&mut self, _frame: PhysicalFrame) {}
    /// `size` bytes at `frame` (a frame, or a 2 MiB block) were just taken from the allocator,
    /// before the MM writes to them. Nothing to do on hardware; a tracing machine notes it, so
    /// a frame that is not usable RAM is named before zeroing it can crash the kernel.
    fn frame_allocated(&mut self, _frame: PhysicalFrame, _size: u64) {}
    /// A long loop did one more step of work (a frame zeroed, freed or shared, a page's entry
    /// rewritten, a stretch of a frame scan): the guest is slow, not stuck. The host's watchdog
    /// counts time since the last sign of progress, so this must cost no exit (on x86_64 it
    /// bumps a counter in memory the host reads). Nothing to do on a machine without one.
    fn progress(&self) {}
}
