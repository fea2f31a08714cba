//! The machine and its physical frames together: what every MM operation allocates from and
//! writes to.

use crate::frame_allocator::FrameAllocator;
use crate::machine::Machine;
use crate::{MmError, PhysicalFrame};

/// A [`Machine`] and the frame allocator over its RAM.
pub struct Hardware<M> {
    pub machine: M,
    pub frames: FrameAllocator,
}

impl<M: Machine> Hardware<M> {
    /// A free frame, zeroed.
    pub fn zeroed_frame(&mut self) -> Result<PhysicalFrame, MmError> {
        let frame = self.frames.allocate()?;
        self.machine.zero_frame(frame);
        Ok(frame)
    }

    /// Gives `frame` back to the allocator and tells the machine. Freeing a frame that is not
    /// allocated is an MM bug, and panics.
    pub fn free_frame(&mut self, frame: PhysicalFrame) {
        if self.frames.free(frame).is_err() {
            panic!("frame {:#x} freed but not allocated", frame.0);
        }
        self.machine.frame_freed(frame);
    }
}
