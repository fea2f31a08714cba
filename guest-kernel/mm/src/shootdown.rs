//! TLB shootdown: who may cache a space's translations, what an operation asks the other CPUs
//! to flush, and what it may free only once they have.
//!
//! Each AddressSpace keeps the CPUs that loaded its directory (`cpus`); a CPU joins when it
//! activates the space and stays when it goes idle or runs non-space work with the tables still
//! loaded (lazy TLB). It leaves when it loads another directory: the CR3 load flushed it, and
//! the next shootdown of the space drops it from the set instead of sending it an IPI (every
//! CPU's loaded directory is in [`CpuTable`]; a CPU joins a space only under that space's lock,
//! which the sender holds, so the set cannot grow meanwhile).
//!
//! An operation that downgrades or removes translations (unmap, protect, a copy-on-write
//! break, fork's write-protect, destroy) flushes each page locally as it changes it and adds
//! it to one [`FlushRequest`]; at its end, still under the space's lock, one IPI round sends the
//! request to every other CPU of the set and waits for every acknowledgement; only then are
//! the frames and page tables it took out freed ([`Gather`], Linux's `mmu_gather`).

use crate::vmobject::VMObject;
use crate::PhysicalFrame;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use shared_mm::smp::MAX_CPUS;
pub use shared_mm::trace::FlushScope;

/// Pages a shootdown lists one by one; past this it flushes everything (Linux's
/// `tlb_single_page_flush_ceiling` is 33).
pub const MAX_FLUSH_PAGES: usize = 32;

/// What a shootdown asks each target to drop: some pages of one directory, all of it, or all of
/// it for good (the directory is being destroyed: a target with it loaded loads the kernel's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushRequest {
    directory: PhysicalFrame,
    pages: [u64; MAX_FLUSH_PAGES],
    /// Pages listed; meaningful for [`FlushScope::Pages`] only.
    len: usize,
    scope: FlushScope,
}

impl FlushRequest {
    /// An empty request for pages of `directory`.
    pub fn pages(directory: PhysicalFrame) -> Self {
        FlushRequest {
            directory,
            pages: [0; MAX_FLUSH_PAGES],
            len: 0,
            scope: FlushScope::Pages(0),
        }
    }

    /// A request to flush everything of `directory`, which is being destroyed.
    pub fn destroy(directory: PhysicalFrame) -> Self {
        FlushRequest {
            scope: FlushScope::Destroy,
            ..Self::pages(directory)
        }
    }

    /// The request a target rebuilds from what its sender wrote: `None` if `scope` and `pages`
    /// disagree.
    pub fn from_parts(directory: PhysicalFrame, scope: FlushScope, pages: &[u64]) -> Option<Self> {
        let mut request = Self::pages(directory);
        match scope {
            FlushScope::Pages(n) if n as usize == pages.len() && pages.len() <= MAX_FLUSH_PAGES => {
                pages.iter().for_each(|&page| request.add(page));
            }
            FlushScope::All | FlushScope::Destroy if pages.is_empty() => request.scope = scope,
            _ => return None,
        }
        Some(request)
    }

    /// Adds `page`; past [`MAX_FLUSH_PAGES`] the request becomes a full flush.
    pub fn add(&mut self, page: u64) {
        if let FlushScope::Pages(_) = self.scope {
            if self.pages[..self.len].contains(&page) {
                return;
            }
            if self.len == MAX_FLUSH_PAGES {
                self.scope = FlushScope::All;
                return;
            }
            self.pages[self.len] = page;
            self.len += 1;
            self.scope = FlushScope::Pages(self.len as u32);
        }
    }

    pub fn directory(&self) -> PhysicalFrame {
        self.directory
    }

    pub fn scope(&self) -> FlushScope {
        self.scope
    }

    /// The pages a [`FlushScope::Pages`] request lists (none for the others).
    pub fn listed(&self) -> &[u64] {
        match self.scope {
            FlushScope::Pages(_) => &self.pages[..self.len],
            FlushScope::All | FlushScope::Destroy => &[],
        }
    }
}

/// What every CPU has loaded and runs, readable by all (a shootdown's sender, a target's
/// handler, the host's views).
pub struct CpuTable {
    /// The root of the directory each CPU has in CR3 (0 before its first activation).
    loaded: [AtomicU64; MAX_CPUS as usize],
    /// The space each CPU runs an operation in now (0: none). Only the seeded
    /// `bug-shootdown-misses-lazy` keeps and reads it: a CPU in a space's set that runs nothing
    /// there is lazy.
    running: [AtomicU32; MAX_CPUS as usize],
}

impl Default for CpuTable {
    fn default() -> Self {
        CpuTable {
            loaded: [const { AtomicU64::new(0) }; MAX_CPUS as usize],
            running: [const { AtomicU32::new(0) }; MAX_CPUS as usize],
        }
    }
}

impl CpuTable {
    /// The directory root CPU `cpu` has loaded.
    pub fn loaded(&self, cpu: u32) -> u64 {
        self.loaded[cpu as usize].load(Ordering::Acquire)
    }

    /// CPU `cpu` (the caller) just loaded `root` into CR3: a store after the load, so a sender
    /// that sees it knows the CR3 load already flushed the old directory.
    pub(crate) fn set_loaded(&self, cpu: u32, root: u64) {
        self.loaded[cpu as usize].store(root, Ordering::Release);
    }

    pub(crate) fn running(&self, cpu: u32) -> u32 {
        self.running[cpu as usize].load(Ordering::Acquire)
    }

    pub(crate) fn set_running(&self, cpu: u32, space: u32) {
        self.running[cpu as usize].store(space, Ordering::Release);
    }
}

/// What one operation has taken out of the page tables and must free only after its
/// shootdown: data frames (each a reference to drop), whole object handles, page tables.
#[derive(Default)]
pub struct Gather {
    pub(crate) request: Option<FlushRequest>,
    pub(crate) frames: Vec<PhysicalFrame>,
    pub(crate) objects: Vec<VMObject>,
    pub(crate) tables: Vec<PhysicalFrame>,
}

impl Gather {
    pub(crate) fn is_empty(&self) -> bool {
        self.request.is_none()
            && self.frames.is_empty()
            && self.objects.is_empty()
            && self.tables.is_empty()
    }

    /// Adds `page` of `directory` to the request (one directory per operation).
    pub(crate) fn flush(&mut self, directory: PhysicalFrame, page: u64) {
        self.request
            .get_or_insert_with(|| FlushRequest::pages(directory))
            .add(page);
    }

    /// Everything of `directory` must go, for good.
    pub(crate) fn destroy(&mut self, directory: PhysicalFrame) {
        self.request = Some(FlushRequest::destroy(directory));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lists_each_page_once_and_becomes_a_full_flush_past_the_ceiling() {
        let mut request = FlushRequest::pages(PhysicalFrame(0x1000));
        request.add(0x40_0000);
        request.add(0x40_0000);
        request.add(0x40_1000);
        assert_eq!(request.scope(), FlushScope::Pages(2));
        assert_eq!(request.listed(), [0x40_0000, 0x40_1000]);
        for i in 0..MAX_FLUSH_PAGES as u64 {
            request.add(0x50_0000 + i * 0x1000);
        }
        assert_eq!(request.scope(), FlushScope::All);
        assert!(request.listed().is_empty());
    }

    #[test]
    fn a_target_rebuilds_only_consistent_requests() {
        let dir = PhysicalFrame(0x1000);
        let pages = [0x40_0000, 0x40_1000];
        let rebuilt = FlushRequest::from_parts(dir, FlushScope::Pages(2), &pages).expect("valid");
        assert_eq!(rebuilt.listed(), pages);
        assert_eq!(
            FlushRequest::from_parts(dir, FlushScope::Pages(3), &pages),
            None
        );
        assert_eq!(FlushRequest::from_parts(dir, FlushScope::All, &pages), None);
        let destroy = FlushRequest::from_parts(dir, FlushScope::Destroy, &[]).expect("valid");
        assert_eq!(destroy, FlushRequest::destroy(dir));
    }
}
