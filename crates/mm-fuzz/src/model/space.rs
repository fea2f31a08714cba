//! One modelled address space: its regions (each private, or a handle on a shared object), the
//! contents of its private pages, and what it costs the guest in frames.
#![forbid(unsafe_code)]

use shared_mm::abi::access_bits::SHARED;
use std::collections::{BTreeMap, HashMap, HashSet};

pub(super) const PAGE: u64 = 4096;

/// The contents of one page.
pub(super) type Page = Box<[u8; PAGE as usize]>;

/// One modelled region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRegion {
    pub size: u64,
    pub access: u32,
    /// The shared object behind it (the model's own numbering); `None` for private memory.
    pub object: Option<u64>,
}

/// One modelled address space.
#[derive(Clone, Debug, Default)]
pub struct SpaceModel {
    /// Regions by base address.
    pub regions: BTreeMap<u64, ModelRegion>,
    /// Contents of private pages written so far; other private pages read as zero.
    pub(super) memory: HashMap<u64, Page>,
    /// Private pages committed (touched) in live regions: each costs the guest a frame.
    pub(super) committed: HashSet<u64>,
    /// 2 MiB, 1 GiB and 512 GiB areas ever touched: page tables the guest keeps until destroy.
    table_areas: HashSet<(u8, u64)>,
}

impl SpaceModel {
    pub(super) fn region_at(&self, addr: u64) -> Option<(u64, ModelRegion)> {
        let (&base, &r) = self.regions.range(..=addr).next_back()?;
        (addr - base < r.size).then_some((base, r))
    }

    /// Whether `[base, base + size)` shares an address with a region.
    pub fn overlaps(&self, base: u64, size: u64) -> bool {
        let last = base + (size - 1);
        if self.region_at(base).is_some() {
            return true;
        }
        self.regions.range(base..=last).next().is_some()
    }

    /// The private pages touched so far in live regions (their frames are committed).
    pub fn committed_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.committed.iter().copied()
    }

    /// Guest frames this space holds, at most: committed private pages plus page tables (the
    /// frames of shared objects are counted once, with the objects).
    pub fn frames_estimate(&self) -> usize {
        // The PML4 and the trampoline's PDPT, PD and PT, then what touches committed.
        4 + self.committed.len() + self.table_areas.len()
    }

    /// Splits the regions that straddle either edge of `[base, last]`, so that every region
    /// is then wholly inside or wholly outside it; returns the bases of those inside.
    fn split_at_edges(&mut self, base: u64, last: u64) -> Vec<u64> {
        let hit: Vec<(u64, ModelRegion)> = self
            .regions
            .range(..=last)
            .rev()
            // Regions are disjoint, so their ends rise with their bases: the first that ends
            // below `base` has only such regions below it.
            .take_while(|(&b, r)| b + (r.size - 1) >= base)
            .map(|(&b, &r)| (b, r))
            .collect();
        let mut inside = Vec::with_capacity(hit.len());
        for (b, r) in hit {
            let r_last = b + (r.size - 1);
            let piece = |from: u64, to: u64| ModelRegion {
                size: to - from + 1,
                ..r
            };
            self.regions.remove(&b);
            if b < base {
                self.regions.insert(b, piece(b, base - 1));
            }
            let (m_base, m_last) = (b.max(base), r_last.min(last));
            self.regions.insert(m_base, piece(m_base, m_last));
            inside.push(m_base);
            if r_last > last {
                self.regions.insert(last + 1, piece(last + 1, r_last));
            }
        }
        inside
    }

    /// Removes `[base, base + size)` from the regions (splitting them) and forgets its private
    /// pages. Shared objects keep theirs: other regions may still map them.
    /// Returns the shared objects the removed regions held.
    pub(super) fn cut(&mut self, base: u64, size: u64) -> Vec<u64> {
        let last = base + (size - 1);
        let mut objects = Vec::new();
        for inside in self.split_at_edges(base, last) {
            objects.extend(self.regions.remove(&inside).and_then(|r| r.object));
        }
        let outside = |p: u64| p < base || p > last;
        // The pages in the range, one by one when they are fewer than the pages recorded.
        let first = base.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX);
        let pages = || (first..=last).step_by(PAGE as usize);
        let count = last.checked_sub(first).map_or(0, |span| span / PAGE + 1);
        if count < self.memory.len() as u64 {
            for page in pages() {
                self.memory.remove(&page);
            }
        } else {
            self.memory.retain(|&p, _| outside(p));
        }
        if count < self.committed.len() as u64 {
            for page in pages() {
                self.committed.remove(&page);
            }
        } else {
            self.committed.retain(|&p| outside(p));
        }
        objects
    }

    /// Gives `[base, base + size)` the access `access` (splitting regions; pages and data
    /// stay, and so does each region's sharing).
    pub(super) fn protect(&mut self, base: u64, size: u64, access: u32) {
        for inside in self.split_at_edges(base, base + (size - 1)) {
            if let Some(r) = self.regions.get_mut(&inside) {
                r.access = access | (r.access & SHARED);
            }
        }
    }

    /// The page tables a touch of `page` may make.
    pub(super) fn note_tables(&mut self, page: u64) {
        for (level, shift) in [(1u8, 21), (2, 30), (3, 39)] {
            self.table_areas.insert((level, page >> shift));
        }
    }

    /// The shared objects its regions hold.
    pub(super) fn objects(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions.values().filter_map(|r| r.object)
    }
}
