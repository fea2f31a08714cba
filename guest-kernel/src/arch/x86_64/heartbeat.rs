//! The guest side of `shared_mm::heartbeat`: one more step of progress, as a store to the
//! counter the host's watchdog reads (a port-I/O exit would cost 8-12 µs here; a store, one
//! emulated instruction).

use super::physmap;
use shared_mm::heartbeat::HEARTBEAT_ADDR;

/// Adds one to the heartbeat counter.
pub fn beat() {
    let counter = physmap::virt(HEARTBEAT_ADDR) as *mut u64;
    // SAFETY: HEARTBEAT_ADDR is an 8-byte-aligned word of the low reserved area (checked where
    // it is defined), which the direct map covers and no allocator hands out; this CPU is its
    // only writer. Volatile: the host reads it while the guest runs.
    unsafe { core::ptr::write_volatile(counter, core::ptr::read_volatile(counter).wrapping_add(1)) }
}
