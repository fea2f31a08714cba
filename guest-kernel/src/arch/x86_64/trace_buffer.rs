//! The flush-trace buffer in guest memory (the guest side of `shared_mm::trace`): records are
//! appended after the header's count; when the buffer is full the host is rung to drain it.

use super::{physmap, port::outb};
use guest_mm::trace::{TraceEvent, TraceSink};
use shared_mm::trace::{
    TRACE_ADDR, TRACE_CAPACITY, TRACE_HEADER_SIZE, TRACE_PORT, TRACE_RECORD_SIZE, TRACE_SIZE,
};

/// The buffer at `TRACE_ADDR`.
pub struct TraceBuffer {
    buf: &'static mut [u8],
}

impl TraceBuffer {
    /// Takes the buffer at its fixed physical address.
    ///
    /// # Safety
    /// Only one `TraceBuffer` may exist.
    pub unsafe fn take() -> TraceBuffer {
        // SAFETY: the VMM marks the trace area reserved in the memory map, so no allocator hands
        // it out; the caller guarantees exclusive use on the guest side (the host writes only
        // the count, while the guest is stopped in an exit).
        let buf = unsafe { physmap::slice_mut(TRACE_ADDR, TRACE_SIZE as usize) };
        TraceBuffer { buf }
    }

    /// Records held now; the host sets it back to 0 whenever it drains.
    fn count(&self) -> usize {
        let head = self.buf.as_ptr().cast::<u64>();
        // SAFETY: the buffer starts page-aligned and is longer than 8 bytes. Volatile: the host
        // changes the count during exits.
        unsafe { core::ptr::read_volatile(head) as usize }
    }

    fn set_count(&mut self, count: usize) {
        let head = self.buf.as_mut_ptr().cast::<u64>();
        // SAFETY: as in `count`.
        unsafe { core::ptr::write_volatile(head, count as u64) }
    }
}

impl TraceSink for TraceBuffer {
    fn record(&mut self, event: TraceEvent) {
        let mut count = self.count();
        if count >= TRACE_CAPACITY {
            outb(TRACE_PORT, 0);
            count = self.count();
            assert!(
                count < TRACE_CAPACITY,
                "the host did not drain the flush trace"
            );
        }
        let at = TRACE_HEADER_SIZE + count * TRACE_RECORD_SIZE;
        event
            .encode(&mut self.buf[at..at + TRACE_RECORD_SIZE])
            .expect("a record fits its slot");
        self.set_count(count + 1);
    }
}
