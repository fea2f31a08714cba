//! The paging-structure caches of one CPU (Intel SDM Vol. 3A, 4.10.3): the PML4Es, PDPTEs and
//! PDEs its walks read, by the address bits each one translates, so that a later walk starts
//! at the deepest cached entry covering its address instead of at CR3.
//!
//! Maximally stale, like the TLB: an entry stays until `invlpg` (which drops every
//! paging-structure-cache entry, whatever its address), a CR3 load, or a page fault on an
//! address it serves. So a walk through a cached entry whose table was freed and reused since
//! reads the new contents as page-table entries, as hardware may.
#![forbid(unsafe_code)]

use crate::frame_map::FrameMap;
use crate::page_walk::{WalkPath, WalkStart};
use shared_mm::pte::PageLevel;

/// The cached upper-level entries of one CPU.
#[derive(Clone, Debug, Default)]
pub struct PagingCache {
    /// Indexed by the level of the table an entry points to, less one (PDPT, PD, PT): where a
    /// walk may continue, keyed by the address bits above that table's span.
    entries: [FrameMap<u64, WalkStart>; 3],
}

/// Where the entry pointing to a table at `level` is kept, and the key of `va` there.
fn slot(level: PageLevel, va: u64) -> Option<(usize, u64)> {
    let above = (level as usize).checked_sub(1)?;
    let span = PageLevel::ALL[above].entry_span();
    Some((above, va >> span.trailing_zeros()))
}

impl PagingCache {
    /// Where a walk of `va` starts: the deepest cached entry covering it, else CR3. (Every
    /// simulated TLB miss asks: levels with no entry cost no lookup.)
    pub fn start(&self, cr3: u64, va: u64) -> WalkStart {
        [PageLevel::Pt, PageLevel::Pd, PageLevel::Pdpt]
            .into_iter()
            .filter_map(|level| slot(level, va))
            .filter(|&(at, _)| !self.entries[at].is_empty())
            .find_map(|(at, key)| self.entries[at].get(&key).copied())
            .unwrap_or_else(|| WalkStart::root(cr3))
    }

    /// Caches the entries `path` stepped through (every table it entered).
    pub fn fill(&mut self, path: &WalkPath) {
        for entered in path.entered() {
            if let Some((at, key)) = slot(entered.level, path.va) {
                self.entries[at].insert(key, *entered);
            }
        }
    }

    /// `invlpg` or a CR3 load: drops every entry.
    pub fn invalidate(&mut self) {
        self.entries.iter_mut().for_each(FrameMap::clear);
    }

    /// A page fault at `va` drops the entries a walk of `va` would use.
    pub fn fault(&mut self, va: u64) {
        for level in [PageLevel::Pdpt, PageLevel::Pd, PageLevel::Pt] {
            if let Some((at, key)) = slot(level, va) {
                self.entries[at].remove(&key);
            }
        }
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.entries.iter().map(FrameMap::len).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(FrameMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_walk::{walk, walk_from, PageTableBuilder};
    use shared_mm::pte::{PageTableFlags, PAGE_SIZE_4K};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const VA: u64 = 0x40_0000;
    const URW: PageTableFlags = PageTableFlags::WRITABLE.union(PageTableFlags::USER);

    /// Guest memory whose tables (at the CR3 returned) map the page `VA` to frame 0x5000.
    fn one_page() -> (GuestMemoryMmap, u64) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut tables = PageTableBuilder::new(&mem, (1 << 20)..(2 << 20)).unwrap();
        tables
            .map(VA, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, URW)
            .unwrap();
        let cr3 = tables.cr3();
        (mem, cr3)
    }

    #[test]
    fn a_walk_starts_at_the_deepest_cached_entry_until_a_flush() {
        let (mem, cr3) = one_page();
        let mut cache = PagingCache::default();
        assert_eq!(cache.start(cr3, VA), WalkStart::root(cr3));
        let path = walk(&mem, cr3, VA).unwrap();
        cache.fill(&path);
        assert_eq!(cache.len(), 3, "the PML4E, PDPTE and PDE");
        let start = cache.start(cr3, VA + 0x1000);
        assert_eq!(start.level, PageLevel::Pt, "the same 2 MiB: from the PT");
        assert_eq!(cache.start(cr3, VA + (2 << 20)).level, PageLevel::Pd);
        cache.fault(VA);
        assert_eq!(cache.start(cr3, VA), WalkStart::root(cr3));
        cache.fill(&path);
        cache.invalidate();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_cached_entry_keeps_walking_a_table_freed_and_reused_since() {
        let (mem, cr3) = one_page();
        let mut cache = PagingCache::default();
        let path = walk(&mem, cr3, VA).unwrap();
        cache.fill(&path);
        let pt = cache.start(cr3, VA).table;
        // The MM unlinks the PT and frees it, without a flush; the frame becomes data whose
        // second word happens to look like a present user PTE to frame 0x9000.
        let pd_entry = path.entries().find(|e| e.level == PageLevel::Pd).unwrap();
        mem.write_obj(0u64, GuestAddress(pd_entry.addr)).unwrap();
        mem.write_obj(0x9007u64, GuestAddress(pt + 8)).unwrap();
        assert_eq!(walk(&mem, cr3, VA + 0x1000).unwrap().translation, None);
        let stale = walk_from(&mem, cache.start(cr3, VA + 0x1000), VA + 0x1000).unwrap();
        let phys = stale.translation.map(|t| t.phys);
        assert_eq!(phys, Some(0x9000), "the CPU still walks the reused frame");
    }
}
