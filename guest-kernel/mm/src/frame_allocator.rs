//! The physical frame allocator: a bitmap over the usable RAM in the boot memory map.

use crate::seeded_bugs::{Bug, SeededBugs};
use crate::{MmError, PhysicalFrame, FRAME_SIZE};
use alloc::boxed::Box;
use alloc::vec;
use shared_mm::boot_info::{BootInfo, MemoryKind, MAX_GUEST_RAM};

/// Frames in a 2 MiB block.
const FRAMES_PER_2M: usize = 512;

/// One bit per frame: set = free. Frames outside usable memory are never set, so they can
/// never be handed out.
pub struct FrameAllocator {
    /// One word per 64 frames of RAM.
    free: Box<[u64]>,
    /// Which frames the memory map makes usable at all.
    usable: Box<[u64]>,
    /// The highest usable frame (for the seeded end-of-RAM bug).
    last_usable: Option<PhysicalFrame>,
    bugs: SeededBugs,
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
    /// Marks every whole usable frame of the memory map free: whole bitmap words at once, and
    /// bit masks only at the two ends of each range. The bitmap covers `info.ram_size`, rounded
    /// up to 2 MiB blocks (at most the largest supported RAM).
    pub fn new(info: &BootInfo, bugs: SeededBugs) -> Self {
        let ram = info.ram_size.min(MAX_GUEST_RAM);
        let frames = (ram / FRAME_SIZE).next_multiple_of(FRAMES_PER_2M as u64) as usize;
        let mut allocator = FrameAllocator {
            free: vec![0; frames / 64].into_boxed_slice(),
            usable: Box::default(),
            last_usable: None,
            bugs,
            hint: 0,
            free_count: 0,
        };
        for region in info.memory_map() {
            if region.kind != MemoryKind::Usable {
                continue;
            }
            let mut first = region.base.div_ceil(FRAME_SIZE);
            let after_kernel = info.kernel_phys_end.next_multiple_of(FRAME_SIZE);
            if bugs.has(Bug::KernelEndOffByOne) && region.base == after_kernel {
                // Seeded bug: the first frame after the image, from its last byte.
                first = info.kernel_phys_end.saturating_sub(1) / FRAME_SIZE;
            }
            let end = (region.base.saturating_add(region.size) / FRAME_SIZE).min(frames as u64);
            if first < end {
                allocator.mark_free(first as usize, end as usize);
                allocator.last_usable = Some(PhysicalFrame((end - 1) * FRAME_SIZE));
            }
        }
        allocator.usable = allocator.free.clone();
        allocator
    }

    /// The allocated frames as bitmap words (bit set: handed out and not freed), frame 0 first.
    pub fn allocated_words(&self) -> impl Iterator<Item = u64> + '_ {
        self.usable
            .iter()
            .zip(self.free.iter())
            .map(|(u, f)| u & !f)
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
        const WORDS_PER_BLOCK: usize = FRAMES_PER_2M / 64;
        for (block, words) in self.free.chunks_exact_mut(WORDS_PER_BLOCK).enumerate() {
            if words.iter().all(|&w| w == u64::MAX) {
                words.fill(0);
                self.free_count -= FRAMES_PER_2M;
                let first_frame = (block * FRAMES_PER_2M) as u64;
                return Ok(PhysicalFrame(first_frame * FRAME_SIZE));
            }
        }
        Err(MmError::OutOfFrames)
    }

    /// Takes one free frame (its contents are whatever it held).
    pub fn allocate(&mut self) -> Result<PhysicalFrame, MmError> {
        for w in self.hint..self.free.len() {
            if self.free[w] != 0 {
                let b = self.free[w].trailing_zeros() as u64;
                let frame = PhysicalFrame((w as u64 * 64 + b) * FRAME_SIZE);
                if self.bugs.has(Bug::DoubleAllocEndOfRam) && Some(frame) == self.last_usable {
                    return Ok(frame); // Seeded bug: the last frame stays free.
                }
                self.free[w] &= !(1 << b);
                self.free_count -= 1;
                self.hint = w;
                return Ok(frame);
            }
        }
        Err(MmError::OutOfFrames)
    }

    /// Returns `frame` to the pool. Freeing a frame twice, or one outside RAM, is refused.
    pub fn free(&mut self, frame: PhysicalFrame) -> Result<(), NotAllocated> {
        let index = frame.0 / FRAME_SIZE;
        if !frame.0.is_multiple_of(FRAME_SIZE) || index / 64 >= self.free.len() as u64 {
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

    /// Frames free now.
    pub fn free_count(&self) -> usize {
        self.free_count
    }
}
