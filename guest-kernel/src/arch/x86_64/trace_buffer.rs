//! The flush-trace buffer in guest memory (the guest side of `shared_mm::trace`), shared by
//! every CPU: records are appended after the header's count under one lock (a leaf: nothing
//! else is taken while it is held, and it is held with interrupts off), so their order is an
//! order in which the events happened. When the buffer is full, the CPU holding the lock rings
//! the host to drain it.

use super::{physmap, port::outb};
use core::sync::atomic::{AtomicBool, Ordering};
use guest_mm::trace::{TraceRecord, TraceSink};
use shared_mm::trace::{
    TRACE_ADDR, TRACE_CAPACITY, TRACE_HEADER_SIZE, TRACE_PORT, TRACE_RECORD_SIZE, TRACE_SIZE,
};
use spin::mutex::SpinMutex;

/// The buffer at `TRACE_ADDR`, once [`TraceBuffer::init`] took it.
static BUFFER: SpinMutex<Option<&'static mut [u8]>> = SpinMutex::new(None);

/// Whether the MM traces (the host's boot flag).
static TRACING: AtomicBool = AtomicBool::new(false);

/// A CPU's way into the shared buffer.
pub struct TraceBuffer;

impl TraceBuffer {
    /// Takes the buffer at its fixed physical address for every CPU; records go to it when
    /// `tracing`.
    ///
    /// # Safety
    /// Call once, before any CPU traces.
    pub unsafe fn init(tracing: bool) {
        // SAFETY: the VMM marks the trace area reserved in the memory map, so no allocator hands
        // it out; the caller guarantees this runs once, so this is the only slice over it on the
        // guest side (the host writes only the count, while every appending CPU is stopped in an
        // exit or the guest is quiescent).
        let buf = unsafe { physmap::slice_mut(TRACE_ADDR, TRACE_SIZE as usize) };
        *BUFFER.lock() = Some(buf);
        TRACING.store(tracing, Ordering::Release);
    }

    /// Whether the MM traces.
    pub fn tracing() -> bool {
        TRACING.load(Ordering::Acquire)
    }
}

/// Records held now; the host sets it back to 0 whenever it drains.
fn count(buf: &[u8]) -> usize {
    let head = buf.as_ptr().cast::<u64>();
    // SAFETY: the buffer starts page-aligned and is longer than 8 bytes. Volatile: the host
    // changes the count during exits.
    unsafe { core::ptr::read_volatile(head) as usize }
}

fn set_count(buf: &mut [u8], count: usize) {
    let head = buf.as_mut_ptr().cast::<u64>();
    // SAFETY: as in `count`.
    unsafe { core::ptr::write_volatile(head, count as u64) }
}

impl TraceSink for TraceBuffer {
    fn record(&mut self, record: TraceRecord) {
        let mut guard = BUFFER.lock();
        let Some(buf) = guard.as_mut() else {
            panic!("the flush trace is written before it was set up");
        };
        let mut count = count(buf);
        if count >= TRACE_CAPACITY {
            outb(TRACE_PORT, 0);
            count = self::count(buf);
            assert!(
                count < TRACE_CAPACITY,
                "the host did not drain the flush trace"
            );
        }
        let at = TRACE_HEADER_SIZE + count * TRACE_RECORD_SIZE;
        record
            .encode(&mut buf[at..at + TRACE_RECORD_SIZE])
            .expect("a record fits its slot");
        set_count(buf, count + 1);
    }
}
