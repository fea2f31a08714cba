//! VMObject: the memory behind a region: anonymous, demand-zero frames, keyed by the virtual
//! page they back. Private memory has an object per region piece, whose frames a fork makes
//! copy-on-write (reference-counted in [`crate::frame_refs`]); shared memory (`map-shared`) has
//! one object that every region of it, in every space, holds a handle to, and its frames stay
//! until the last handle goes.

use crate::hardware::Hardware;
use crate::machine::Machine;
use crate::seeded_bugs::Bug;
use crate::sync::{Lock, LockClass};
use crate::PhysicalFrame;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Committed frames by the virtual page they back.
pub type Pages = BTreeMap<u64, PhysicalFrame>;

/// The frames of one shared object, and its id (the same in every space that maps it). Spaces
/// on several CPUs reach it at once, so its pages have a lock of their own.
pub struct SharedPages {
    id: u64,
    pages: Lock<Pages>,
}

/// The frames committed to one region (or, for shared memory, to every region of an object).
/// The page tables mirror them for pages whose region is accessible; the object stays the
/// authority when a `PROT_NONE` protect removes the PTEs but keeps the data. A private object
/// belongs to one region of one space, and its space's lock guards it.
pub enum VMObject {
    Private(RefCell<Pages>),
    Shared(Arc<SharedPages>),
}

impl Default for VMObject {
    fn default() -> Self {
        VMObject::Private(RefCell::default())
    }
}

impl VMObject {
    /// A new private object.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new shared object named `id`.
    pub fn shared(id: u64) -> Self {
        VMObject::Shared(Arc::new(SharedPages {
            id,
            pages: Lock::new(LockClass::Object, Pages::new()),
        }))
    }

    /// Runs `f` on the pages (a shared object's with its lock held); `f` may allocate and free
    /// through the `Hardware` it is given.
    pub fn with_pages<M: Machine, R>(
        &self,
        hw: &mut Hardware<'_, M>,
        f: impl FnOnce(&mut Pages, &mut Hardware<'_, M>) -> R,
    ) -> R {
        match self {
            VMObject::Private(pages) => f(&mut pages.borrow_mut(), hw),
            VMObject::Shared(shared) => hw.under(&shared.pages, f),
        }
    }

    /// The id of a shared object; `None` for private memory.
    pub fn shared_id(&self) -> Option<u64> {
        match self {
            VMObject::Private(_) => None,
            VMObject::Shared(shared) => Some(shared.id),
        }
    }

    /// The frame backing the page at `page`, if it was touched.
    pub fn frame_at<M: Machine>(
        &self,
        page: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Option<PhysicalFrame> {
        self.with_pages(hw, |pages, _| pages.get(&page).copied())
    }

    pub fn insert<M: Machine>(&self, page: u64, frame: PhysicalFrame, hw: &mut Hardware<'_, M>) {
        let previous = self.with_pages(hw, |pages, _| pages.insert(page, frame));
        assert!(previous.is_none(), "page {page:#x} was already backed");
    }

    /// Puts `frame` behind `page` instead of the frame there (a copy-on-write break).
    pub fn replace<M: Machine>(&self, page: u64, frame: PhysicalFrame, hw: &mut Hardware<'_, M>) {
        self.with_pages(hw, |pages, _| pages.insert(page, frame));
    }

    /// The committed pages in `[first, last]`, in order.
    pub fn pages_in<M: Machine>(
        &self,
        first: u64,
        last: u64,
        hw: &mut Hardware<'_, M>,
    ) -> Vec<(u64, PhysicalFrame)> {
        self.with_pages(hw, |pages, _| {
            pages.range(first..=last).map(|(p, f)| (*p, *f)).collect()
        })
    }

    /// Every committed frame.
    pub fn frames<M: Machine>(&self, hw: &mut Hardware<'_, M>) -> Vec<PhysicalFrame> {
        self.with_pages(hw, |pages, _| pages.values().copied().collect())
    }

    /// Drops the pages in `[first, last]` from a private object and returns their frames. A
    /// shared object keeps them (other regions may map them): it gives them up only as a whole,
    /// in [`VMObject::release`].
    pub fn take_pages(&self, first: u64, last: u64) -> Vec<PhysicalFrame> {
        let VMObject::Private(pages) = self else {
            return Vec::new();
        };
        let mut frames = pages.borrow_mut();
        let pages: Vec<u64> = frames.range(first..=last).map(|(p, _)| *p).collect();
        pages.iter().filter_map(|p| frames.remove(p)).collect()
    }

    /// The object for the pages at and above `page` when a region splits there: a private
    /// object moves them into a new one; a shared object is one object, so both pieces hold it.
    pub fn split_off(&self, page: u64) -> VMObject {
        match self {
            VMObject::Private(pages) => {
                VMObject::Private(RefCell::new(pages.borrow_mut().split_off(&page)))
            }
            VMObject::Shared(shared) => VMObject::Shared(Arc::clone(shared)),
        }
    }

    /// The child's object after a fork: for private memory a copy holding the same frames
    /// (each now referenced once more: copy-on-write); for shared memory the same object. With
    /// `privatize`, shared memory is copied like private memory (a seeded bug).
    pub fn fork<M: Machine>(&self, privatize: bool, hw: &mut Hardware<'_, M>) -> VMObject {
        match self {
            VMObject::Shared(shared) if !privatize => VMObject::Shared(Arc::clone(shared)),
            _ => {
                let pages = self.with_pages(hw, |pages, _| pages.clone());
                for &frame in pages.values() {
                    hw.frames(|f, _| f.refs.add(frame));
                    hw.machine().progress();
                }
                VMObject::Private(RefCell::new(pages))
            }
        }
    }

    /// Lets go of a region's handle for good: a private object releases every frame it still
    /// holds; a shared object does so only if this was its last handle.
    pub fn release<M: Machine>(self, hw: &mut Hardware<'_, M>) {
        let pages = match self {
            VMObject::Private(pages) => pages.into_inner(),
            VMObject::Shared(shared) => match Arc::try_unwrap(shared) {
                Ok(last) if hw.bugs.has(Bug::LockOrder) => return last.release_frames_first(hw),
                Ok(last) => last.pages.into_inner(),
                Err(_) => return,
            },
        };
        for frame in pages.into_values() {
            hw.release_frame(frame);
        }
    }
}

impl SharedPages {
    /// Seeded bug (`bug-lock-order`): releases the last handle's frames with the frame
    /// allocator's lock taken first and the object's inside it, against the documented order
    /// that a fault on shared memory follows (object, then frames).
    fn release_frames_first<M: Machine>(self, hw: &mut Hardware<'_, M>) {
        let pages = &self.pages;
        hw.frames(|frames, cpu| {
            pages.with(cpu, |pages, cpu| {
                for frame in core::mem::take(pages).into_values() {
                    frames.release(frame, &mut cpu.machine);
                }
            })
        });
    }
}
