//! The physical frame allocator: a bitmap over the usable RAM in the boot memory map.

use crate::seeded_bugs::{Bug, SeededBugs};
use crate::{MmError, PhysicalFrame, FRAME_SIZE};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use shared_mm::boot_info::{BootInfo, MemoryKind, MAX_GUEST_RAM};

/// Frames in a 2 MiB block.
const FRAMES_PER_2M: usize = 512;
/// Bitmap words in a 2 MiB block.
const WORDS_PER_BLOCK: usize = FRAMES_PER_2M / 64;

/// One bit per frame: set = free. Frames outside usable memory are never set, so they can
/// never be handed out.
pub struct FrameAllocator {
    /// One word per 64 frames of RAM.
    free: Box<[u64]>,
    /// Which frames the memory map makes usable at all: `[first, end)` frame ranges, a handful
    /// (a second bitmap would double what the allocator takes from the small boot heap, 512 KiB
    /// at the largest supported RAM).
    usable: Vec<(usize, usize)>,
    /// The highest usable frame (for the seeded end-of-RAM bug).
    last_usable: Option<PhysicalFrame>,
    bugs: SeededBugs,
    /// No free frame lies below this word: searches start here, so the lowest free frame is
    /// handed out first and a freed frame is reused at once (which makes use-after-free bugs
    /// show up quickly instead of after a wrap-around).
    hint: usize,
    /// No whole free 2 MiB block lies below this block: the heap's blocks, taken one after
    /// another at boot (512 at the largest RAM), are found without scanning the ones before.
    block_hint: usize,
    free_count: usize,
}

/// Clears the bits of frames `[first, end)` in `words`: whole words at once, masks at the ends.
fn clear_frames(words: &mut [u64], first: usize, end: usize) {
    let end = end.min(words.len() * 64);
    if first >= end {
        return;
    }
    let (first_word, last_word) = (first / 64, (end - 1) / 64);
    let head = u64::MAX << (first % 64);
    let tail = u64::MAX >> (63 - (end - 1) % 64);
    if first_word == last_word {
        words[first_word] &= !(head & tail);
        return;
    }
    words[first_word] &= !head;
    words[first_word + 1..last_word].fill(0);
    words[last_word] &= !tail;
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
            usable: Vec::new(),
            last_usable: None,
            bugs,
            hint: 0,
            block_hint: 0,
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
                allocator.usable.push((first as usize, end as usize));
                allocator.last_usable = Some(PhysicalFrame((end - 1) * FRAME_SIZE));
            }
        }
        allocator
    }

    /// The allocated frames as bitmap words (bit set: handed out and not freed), frame 0 first:
    /// every frame not free, then the frames outside the usable ranges cleared. Both are plain
    /// loops over whole words (guest code runs emulated on this host, and the report is sent at
    /// every check).
    pub fn allocated_words(&self) -> impl Iterator<Item = u64> + '_ {
        let mut words: Vec<u64> = self.free.iter().map(|f| !f).collect();
        let mut next = 0;
        for &(first, end) in &self.usable {
            clear_frames(&mut words, next, first);
            next = end;
        }
        let frames = words.len() * 64;
        clear_frames(&mut words, next, frames);
        words.into_iter()
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
        let blocks = self.free.chunks_exact_mut(WORDS_PER_BLOCK).enumerate();
        for (block, words) in blocks.skip(self.block_hint) {
            if words.iter().all(|&w| w == u64::MAX) {
                words.fill(0);
                self.free_count -= FRAMES_PER_2M;
                self.block_hint = block + 1;
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
        self.block_hint = self.block_hint.min(w / WORDS_PER_BLOCK);
        Ok(())
    }

    /// Frames free now.
    pub fn free_count(&self) -> usize {
        self.free_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_machine::{boot_info, TEST_RAM};

    /// Frames with their bit set in `words`.
    fn set_frames(words: impl Iterator<Item = u64>) -> Vec<u64> {
        words
            .enumerate()
            .flat_map(|(w, word)| {
                (0..64)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| w as u64 * 64 + b)
            })
            .collect()
    }

    #[test]
    fn the_allocated_report_names_exactly_the_frames_handed_out() {
        let mut frames = FrameAllocator::new(&boot_info(), SeededBugs::NONE);
        assert_eq!(
            frames.allocated_words().count() as u64,
            TEST_RAM / FRAME_SIZE / 64
        );
        assert!(
            set_frames(frames.allocated_words()).is_empty(),
            "reserved frames are not allocated"
        );
        let one = frames.allocate().unwrap();
        let block = frames.allocate_2m().unwrap();
        let next_block = frames.allocate_2m().unwrap();
        assert_eq!(
            next_block.0,
            block.0 + 512 * FRAME_SIZE,
            "the next block, found from the hint"
        );
        let mut expected = vec![one.0 / FRAME_SIZE];
        expected.extend((0..1024).map(|i| block.0 / FRAME_SIZE + i));
        assert_eq!(set_frames(frames.allocated_words()), expected);
        frames.free(PhysicalFrame(block.0 + FRAME_SIZE)).unwrap();
        // A block with a frame freed is not whole, so not handed out again.
        assert_ne!(frames.allocate_2m().unwrap(), block);
        frames.free(one).unwrap();
        assert!(!set_frames(frames.allocated_words()).contains(&(one.0 / FRAME_SIZE)));
    }

    #[test]
    fn clearing_frames_masks_partial_words_and_fills_whole_ones() {
        let mut words = [u64::MAX; 4];
        clear_frames(&mut words, 3, 3);
        assert_eq!(words, [u64::MAX; 4]);
        clear_frames(&mut words, 60, 200);
        assert_eq!(words, [(1 << 60) - 1, 0, 0, !((1 << 8) - 1)]);
        clear_frames(&mut words, 250, 1000);
        assert_eq!(words[3], !((1 << 8) - 1) & ((1 << 58) - 1));
    }
}
