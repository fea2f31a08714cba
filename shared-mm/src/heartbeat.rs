//! The heartbeat: a counter in guest memory that the guest's long loops bump and the host's
//! watchdog reads, so that a slow guest making progress is not taken for a hung one.
#![forbid(unsafe_code)]

use crate::boot_info::{BootInfo, BOOT_INFO_ADDR, MAILBOX_ADDR};

/// Guest-physical address of the heartbeat counter: a little-endian `u64` in the low reserved
/// area, between the boot info and the mailbox, which no allocator hands out. The guest only
/// adds one to it (wrapping), with an ordinary store and no exit; the host only reads it, and
/// takes any change as progress.
pub const HEARTBEAT_ADDR: u64 = 0x3000;

const _: () = {
    assert!(BOOT_INFO_ADDR + BootInfo::ENCODED_SIZE as u64 <= HEARTBEAT_ADDR);
    assert!(HEARTBEAT_ADDR.is_multiple_of(8) && HEARTBEAT_ADDR + 8 <= MAILBOX_ADDR);
};
