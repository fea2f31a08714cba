//! VMObject: the memory behind a region. Here: anonymous, demand-zero, private frames.

use crate::PhysicalFrame;
use alloc::collections::BTreeMap;
use core::cell::RefCell;

/// The frames committed to one anonymous region, keyed by the virtual page they back.
/// The page tables mirror this map for pages whose region is accessible; it stays the
/// authority when a `PROT_NONE` protect removes the PTEs but keeps the data.
#[derive(Default)]
pub struct VMObject {
    frames: RefCell<BTreeMap<u64, PhysicalFrame>>,
}

impl VMObject {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frame backing the page at `page`, if it was touched.
    pub fn frame_at(&self, page: u64) -> Option<PhysicalFrame> {
        self.frames.borrow().get(&page).copied()
    }

    pub fn insert(&self, page: u64, frame: PhysicalFrame) {
        let previous = self.frames.borrow_mut().insert(page, frame);
        assert!(previous.is_none(), "page {page:#x} was already backed");
    }

    /// The committed pages in `[first, last]`, in order.
    pub fn pages_in(&self, first: u64, last: u64) -> alloc::vec::Vec<(u64, PhysicalFrame)> {
        self.frames
            .borrow()
            .range(first..=last)
            .map(|(p, f)| (*p, *f))
            .collect()
    }

    /// Drops the pages in `[first, last]` from the object and returns their frames.
    pub fn take_pages(&self, first: u64, last: u64) -> alloc::vec::Vec<PhysicalFrame> {
        let mut frames = self.frames.borrow_mut();
        let pages: alloc::vec::Vec<u64> = frames.range(first..=last).map(|(p, _)| *p).collect();
        pages.iter().filter_map(|p| frames.remove(p)).collect()
    }

    /// Moves the pages at and above `page` into a new object (for splitting a region).
    pub fn split_off(&self, page: u64) -> VMObject {
        VMObject {
            frames: RefCell::new(self.frames.borrow_mut().split_off(&page)),
        }
    }
}
