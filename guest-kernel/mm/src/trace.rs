//! The flush trace, MM side: a [`Machine`] wrapper that reports every call changing what a TLB
//! may hold (PTE writes with their old value, flushes, activations, frees, entries to ring 3,
//! shootdowns sent and served), and every frame allocation (for the host's frame-provenance
//! rule), to a [`TraceSink`], with the CPU that made it, then performs it. The guest's sink is
//! the buffer in guest memory that the host drains; the host's simulated machine collects the
//! same records in-process.

use crate::lock_order::LockOrderViolation;
use crate::machine::{Machine, PteSlot, UserEntry, UserTrap};
use crate::page_directory::PageDirectory;
use crate::shootdown::FlushRequest;
use crate::sync::LockClass;
use crate::PhysicalFrame;
use shared_mm::smp::CpuSet;
pub use shared_mm::trace::{TraceEvent, TraceRecord};

/// Where trace records go, in order. With several CPUs, one sink takes every CPU's records in
/// the order they happened (the guest's buffer has a lock).
pub trait TraceSink {
    fn record(&mut self, record: TraceRecord);
}

/// `M` with every TLB-relevant call recorded to `S` first (when tracing is on).
pub struct Traced<M, S> {
    inner: M,
    sink: S,
    on: bool,
    cpu: u32,
}

impl<M: Machine, S: TraceSink> Traced<M, S> {
    /// `inner`, the machine of CPU `cpu`, traced to `sink` when `on`.
    pub fn new(inner: M, sink: S, on: bool, cpu: u32) -> Self {
        Traced {
            inner,
            sink,
            on,
            cpu,
        }
    }

    pub fn inner(&self) -> &M {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    fn record(&mut self, event: TraceEvent) {
        if self.on {
            let cpu = self.cpu;
            self.sink.record(TraceRecord { cpu, event });
        }
    }
}

impl<M: Machine, S: TraceSink> Machine for Traced<M, S> {
    fn read_pte(&self, table: PhysicalFrame, index: usize) -> u64 {
        self.inner.read_pte(table, index)
    }

    fn write_pte(&mut self, slot: PteSlot, value: u64) {
        if self.on {
            let old = self.inner.read_pte(slot.table, slot.index);
            self.record(TraceEvent::PteWrite {
                directory: slot.directory.0,
                va: slot.va,
                level: slot.level as u8,
                old,
                new: value,
            });
        }
        self.inner.write_pte(slot, value)
    }

    fn zero_frame(&mut self, frame: PhysicalFrame) {
        self.inner.zero_frame(frame)
    }

    fn copy_frame(&mut self, from: PhysicalFrame, to: PhysicalFrame) {
        self.inner.copy_frame(from, to)
    }

    fn read_frame(&self, frame: PhysicalFrame, offset: usize, buf: &mut [u8]) {
        self.inner.read_frame(frame, offset, buf)
    }

    fn write_frame(&mut self, frame: PhysicalFrame, offset: usize, bytes: &[u8]) {
        self.inner.write_frame(frame, offset, bytes)
    }

    fn flush_page(&mut self, va: u64) {
        self.record(TraceEvent::Flush { va });
        self.inner.flush_page(va)
    }

    fn activate(&mut self, directory: &PageDirectory) {
        self.record(TraceEvent::Activate {
            directory: directory.cr3(),
        });
        self.inner.activate(directory)
    }

    fn flush_all(&mut self) {
        self.record(TraceEvent::FlushAll);
        self.inner.flush_all()
    }

    fn shootdown(&mut self, targets: CpuSet, request: &FlushRequest) {
        self.record(TraceEvent::ShootdownRequest {
            directory: request.directory().0,
            targets,
            scope: request.scope(),
        });
        self.inner.shootdown(targets, request)
    }

    fn shootdown_served(&mut self, sender: u32) {
        self.record(TraceEvent::ShootdownAck { sender });
        self.inner.shootdown_served(sender)
    }

    fn lock_acquiring(&mut self, class: LockClass) {
        self.inner.lock_acquiring(class)
    }

    fn lock_contended(&mut self, class: LockClass) {
        self.inner.lock_contended(class)
    }

    fn lock_released(&mut self, class: LockClass) {
        self.inner.lock_released(class)
    }

    fn lock_order_violation(&mut self, violation: &LockOrderViolation) {
        self.inner.lock_order_violation(violation)
    }

    fn enter_user(&mut self, entry: &UserEntry) -> UserTrap {
        self.record(TraceEvent::EnterUser);
        self.inner.enter_user(entry)
    }

    fn frame_freed(&mut self, frame: PhysicalFrame) {
        self.record(TraceEvent::FrameFreed { frame: frame.0 });
        self.inner.frame_freed(frame)
    }

    fn frame_allocated(&mut self, frame: PhysicalFrame, size: u64) {
        self.record(TraceEvent::FrameAllocated {
            frame: frame.0,
            size,
        });
        self.inner.frame_allocated(frame, size)
    }

    fn progress(&self) {
        self.inner.progress()
    }
}
