//! The guest side of `shared_mm::heartbeat`: one more step of progress, as a store to the
//! counter the host's watchdog reads (a port-I/O exit would cost 8-12 µs here; a store, one
//! emulated instruction).

use super::physmap;
use core::sync::atomic::{AtomicU64, Ordering};
use shared_mm::heartbeat::HEARTBEAT_ADDR;

/// Adds one to the heartbeat counter.
pub fn beat() {
    // SAFETY: HEARTBEAT_ADDR is an 8-byte-aligned word of the low reserved area (checked where
    // it is defined), which the direct map covers and no allocator hands out, so it is valid
    // for the kernel's whole life; every CPU and the host touch it only atomically.
    let counter = unsafe { &*(physmap::virt(HEARTBEAT_ADDR) as *const AtomicU64) };
    counter.fetch_add(1, Ordering::Relaxed);
}
