//! The machine and its physical frames together: what every MM operation allocates from and
//! writes to, with the reference counts of data frames and the ids of shared objects.

use crate::frame_allocator::FrameAllocator;
use crate::frame_refs::ReferenceCounts;
use crate::machine::Machine;
use crate::{MmError, PhysicalFrame, FRAME_SIZE};

/// A [`Machine`] and the frame allocator over its RAM.
pub struct Hardware<M> {
    pub machine: M,
    pub frames: FrameAllocator,
    /// How many VMObjects hold each data frame.
    pub refs: ReferenceCounts,
    /// The id the next shared object gets.
    next_object: u64,
}

impl<M: Machine> Hardware<M> {
    pub fn new(machine: M, frames: FrameAllocator) -> Self {
        Hardware {
            machine,
            frames,
            refs: ReferenceCounts::default(),
            next_object: 1,
        }
    }

    /// A fresh id for a shared object (never 0).
    pub fn new_object_id(&mut self) -> u64 {
        let id = self.next_object;
        self.next_object += 1;
        id
    }

    /// A free frame, as it is (the machine hears of it before anything writes it).
    pub fn frame(&mut self) -> Result<PhysicalFrame, MmError> {
        let frame = self.frames.allocate()?;
        self.machine.frame_allocated(frame, FRAME_SIZE);
        Ok(frame)
    }

    /// A free 2 MiB block of frames, as it is (the machine hears of it first).
    pub fn block_2m(&mut self) -> Result<PhysicalFrame, MmError> {
        let block = self.frames.allocate_2m()?;
        self.machine.frame_allocated(block, 512 * FRAME_SIZE);
        Ok(block)
    }

    /// A free frame, zeroed. Zeroing is the slow part of a long populate: each frame is a
    /// step of [`Machine::progress`].
    pub fn zeroed_frame(&mut self) -> Result<PhysicalFrame, MmError> {
        let frame = self.frame()?;
        self.machine.zero_frame(frame);
        self.machine.progress();
        Ok(frame)
    }

    /// Gives `frame` back to the allocator and tells the machine. Freeing a frame that is not
    /// allocated is an MM bug, and panics. Each frame is a step of [`Machine::progress`]
    /// (destroying a large space frees many).
    pub fn free_frame(&mut self, frame: PhysicalFrame) {
        if self.frames.free(frame).is_err() {
            panic!("frame {:#x} freed but not allocated", frame.0);
        }
        self.machine.frame_freed(frame);
        self.machine.progress();
    }

    /// Drops one reference to the data frame `frame`, and frees it if that was the last.
    pub fn release_frame(&mut self, frame: PhysicalFrame) {
        if self.refs.drop_one(frame) {
            self.free_frame(frame);
        }
    }
}
