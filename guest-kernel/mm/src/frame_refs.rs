//! Reference counts of data frames: how many VMObjects hold each one. A fork makes private
//! frames copy-on-write, held by the parent's object and the child's; only counts above one
//! are stored, so a private frame costs nothing.

use crate::PhysicalFrame;
use alloc::collections::BTreeMap;
use shared_mm::abi::FrameRefs;

#[derive(Default)]
pub struct ReferenceCounts {
    /// Frames with more than one reference, and their count.
    shared: BTreeMap<u64, u32>,
}

impl ReferenceCounts {
    /// How many objects hold `frame` (1 for a frame no fork shared).
    pub fn count(&self, frame: PhysicalFrame) -> u32 {
        self.shared.get(&frame.0).copied().unwrap_or(1)
    }

    /// One more object holds `frame`.
    pub fn add(&mut self, frame: PhysicalFrame) {
        *self.shared.entry(frame.0).or_insert(1) += 1;
    }

    /// One object let go of `frame`; `true` when that was the last reference.
    pub fn drop_one(&mut self, frame: PhysicalFrame) -> bool {
        match self.shared.get_mut(&frame.0) {
            None => true,
            Some(count) => {
                *count -= 1;
                if *count == 1 {
                    self.shared.remove(&frame.0);
                }
                false
            }
        }
    }

    /// Every frame held more than once, in frame order.
    pub fn shared(&self) -> impl Iterator<Item = FrameRefs> + '_ {
        self.shared
            .iter()
            .map(|(&frame, &refs)| FrameRefs { frame, refs })
    }
}
