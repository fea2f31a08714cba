//! The physical frame allocator: a bitmap over the usable RAM in the boot memory map.

use super::{MmError, PhysicalFrame};
use shared_mm::boot_info::{BootInfo, MemoryKind, MAX_GUEST_RAM};

const FRAME_SIZE: u64 = 4096;
const MAX_FRAMES: usize = (MAX_GUEST_RAM / FRAME_SIZE) as usize;
const WORDS: usize = MAX_FRAMES / 64;

/// One bit per frame: set = free. Frames outside usable memory are never set, so they can
/// never be handed out.
pub struct FrameAllocator {
    free: [u64; WORDS],
    /// No free frame lies below this word: searches start here, so the lowest free frame is
    /// handed out first and a freed frame is reused at once (which makes use-after-free bugs
    /// show up quickly instead of after a wrap-around).
    hint: usize,
    free_count: usize,
}

/// Freeing a frame that is not allocated (a double free or a stray address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAllocated(pub PhysicalFrame);

impl FrameAllocator {
    pub const fn empty() -> Self {
        FrameAllocator {
            free: [0; WORDS],
            hint: 0,
            free_count: 0,
        }
    }

    /// Marks every whole usable frame of the memory map free: whole bitmap words at once, and
    /// bit masks only at the two ends of each range.
    pub fn init(&mut self, info: &BootInfo) {
        for region in info.memory_map() {
            if region.kind != MemoryKind::Usable {
                continue;
            }
            let first = region.base.div_ceil(FRAME_SIZE);
            let end = ((region.base + region.size) / FRAME_SIZE).min(MAX_FRAMES as u64);
            if first < end {
                self.mark_free(first as usize, end as usize);
            }
        }
    }

    /// Sets the bits of frames `[first, end)`.
    fn mark_free(&mut self, first: usize, end: usize) {
        let (first_word, last_word) = (first / 64, (end - 1) / 64);
        let head = u64::MAX << (first % 64);
        let tail = u64::MAX >> (63 - (end - 1) % 64);
        if first_word == last_word {
            self.set_bits(first_word, head & tail);
            return;
        }
        self.set_bits(first_word, head);
        for w in first_word + 1..last_word {
            self.set_bits(w, u64::MAX);
        }
        self.set_bits(last_word, tail);
    }

    fn set_bits(&mut self, word: usize, mask: u64) {
        self.free_count += (mask & !self.free[word]).count_ones() as usize;
        self.free[word] |= mask;
    }

    /// Takes 512 free frames forming one 2 MiB-aligned block, for a huge mapping.
    pub fn allocate_2m(&mut self) -> Result<PhysicalFrame, MmError> {
        const WORDS_PER_BLOCK: usize = 512 / 64;
        for block in (0..WORDS).step_by(WORDS_PER_BLOCK) {
            let words = &mut self.free[block..block + WORDS_PER_BLOCK];
            if words.iter().all(|&w| w == u64::MAX) {
                words.fill(0);
                self.free_count -= 512;
                return Ok(PhysicalFrame(block as u64 * 64 * FRAME_SIZE));
            }
        }
        Err(MmError::OutOfFrames)
    }

    /// Takes one free frame (its contents are whatever it held).
    pub fn allocate(&mut self) -> Result<PhysicalFrame, MmError> {
        for w in self.hint..WORDS {
            if self.free[w] != 0 {
                let b = self.free[w].trailing_zeros() as u64;
                self.free[w] &= !(1 << b);
                self.free_count -= 1;
                self.hint = w;
                return Ok(PhysicalFrame((w as u64 * 64 + b) * FRAME_SIZE));
            }
        }
        Err(MmError::OutOfFrames)
    }

    /// Returns `frame` to the pool. Freeing a frame twice is refused.
    pub fn free(&mut self, frame: PhysicalFrame) -> Result<(), NotAllocated> {
        let index = frame.0 / FRAME_SIZE;
        if !frame.0.is_multiple_of(FRAME_SIZE) || index as usize >= MAX_FRAMES {
            return Err(NotAllocated(frame));
        }
        let (w, b) = (index as usize / 64, index % 64);
        if self.free[w] & (1 << b) != 0 {
            return Err(NotAllocated(frame));
        }
        self.free[w] |= 1 << b;
        self.free_count += 1;
        self.hint = self.hint.min(w);
        Ok(())
    }

    pub fn free_count(&self) -> usize {
        self.free_count
    }
}
