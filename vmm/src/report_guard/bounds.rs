//! How much a guest's reports can hold, from the RAM it has: every region, every frame record
//! it sends stands for memory the guest itself must hold, so a report larger than its RAM could
//! hold is a lie, and the host never keeps more than that.
#![forbid(unsafe_code)]

use guest_mm::address_space::UserRegion;
use guest_mm::memory_manager::{heap_size, BOOTSTRAP_HEAP};
use shared_mm::boot_info::MAX_GUEST_RAM;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

const PAGE: u64 = 4096;
/// Guest heap counted per owned data frame: its entry in an object's page map (a page and a
/// frame) takes at least 16 bytes, so the bound allows twice what the heap can hold.
const OWNED_RECORD_HEAP: u64 = 8;

/// The bounds of the reports of a guest with a given RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBounds {
    ram_pages: u64,
    heap_bytes: u64,
}

impl ReportBounds {
    /// The bounds for `ram_size` bytes of RAM (at most the largest supported RAM).
    pub fn for_ram(ram_size: u64) -> Self {
        let ram = ram_size.min(MAX_GUEST_RAM);
        ReportBounds {
            ram_pages: ram / PAGE,
            heap_bytes: heap_size(ram) + BOOTSTRAP_HEAP,
        }
    }

    /// The bounds for the guest whose RAM is `mem`.
    pub fn for_memory(mem: &GuestMemoryMmap) -> Self {
        Self::for_ram(mem.last_addr().0.saturating_add(1))
    }

    /// Regions in one tree: each region is a heap object of the guest (`UserRegion`, or
    /// larger), and all of a tree's are alive at once.
    pub fn regions(&self) -> u64 {
        self.heap_bytes / core::mem::size_of::<UserRegion>() as u64
    }

    /// Words of the allocator's bitmap: one bit per page of RAM, in whole 2 MiB blocks.
    pub fn bitmap_words(&self) -> u64 {
        self.ram_pages.div_ceil(512) * 8
    }

    /// Records of frames held more than once: at most one per page of RAM.
    pub fn shared_words(&self) -> u64 {
        self.ram_pages
    }

    /// Owned-frame records of all the live spaces and the kernel together (as the checker keeps
    /// them): a table, heap or trampoline frame has one owner, at most one record per page of
    /// RAM; a data frame's record stands for an entry in an object's page map in the heap.
    pub fn owned_words(&self) -> u64 {
        self.ram_pages + self.heap_bytes / OWNED_RECORD_HEAP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_scale_with_ram() {
        let small = ReportBounds::for_ram(32 << 20);
        assert_eq!(small.bitmap_words(), 128);
        assert_eq!(small.shared_words(), 8192);
        // A 32 MiB guest: a 4 MiB heap and the 1 MiB boot heap.
        assert_eq!(small.owned_words(), 8192 + (5 << 20) / 8);
        assert!(small.regions() < 1 << 16, "{}", small.regions());
        let large = ReportBounds::for_ram(MAX_GUEST_RAM);
        assert_eq!(large.bitmap_words(), (MAX_GUEST_RAM / PAGE) / 64);
        assert!(large.regions() > 64 * small.regions());
        assert_eq!(ReportBounds::for_ram(u64::MAX), large);
    }
}
