//! The TLB rules of x86_64 without PCID (Intel SDM Vol. 3A, 4.10), in one place: what a
//! translation cache may hold, what a ring-3 access may use, and what drops an entry. The sim
//! backend's CPU caches through [`Tlb`]; the rules decide when an old translation is a danger.
//!
//! - Filling: a translation of a present PTE in the active directory may be cached whenever it
//!   is walked. The sim fills on every successful ring-3 walk.
//! - Flushing: `invlpg(va)` drops the entries of that page (global ones too) and every
//!   paging-structure-cache entry; a CR3 load drops every non-global entry (the guest runs with
//!   CR4.PGE clear, so that is every entry); a page fault drops the faulting page's entries.
//!   Nothing else does.
//! - The sim is maximally stale: it keeps every entry it filled until one of those drops it,
//!   so every missing or misdirected flush shows, every time.
//!
//! The paging-structure caches (cached PML4Es, PDPTEs, PDEs) are [`PagingCache`]; a CPU's
//! caches together are [`CpuCaches`]. Which page tables a CPU may still walk, and so must not
//! be freed, is the checker's table-lifetime rule over the flush trace.
#![forbid(unsafe_code)]

mod paging_cache;

pub use paging_cache::PagingCache;

use crate::page_walk::{EffectivePerms, Leaf};
use std::collections::HashMap;

/// What one CPU caches of the tables its CR3 reaches: translations and upper-level entries.
/// Every flush reaches both: `invlpg` drops the page's translations and every
/// paging-structure-cache entry, a CR3 load everything, a page fault what served its address.
#[derive(Clone, Debug, Default)]
pub struct CpuCaches {
    pub tlb: Tlb,
    pub paging: PagingCache,
}

impl CpuCaches {
    /// `invlpg va`.
    pub fn invlpg(&mut self, va: u64) {
        self.tlb.invlpg(va);
        self.paging.invalidate();
    }

    /// A CR3 load.
    pub fn reload(&mut self) {
        self.tlb.reload();
        self.paging.invalidate();
    }

    /// A page fault at `va`.
    pub fn fault(&mut self, va: u64) {
        self.tlb.fault(va);
        self.paging.fault(va);
    }
}

/// What a ring-3 access does with its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// One cached translation: a whole page (4 KiB, 2 MiB or 1 GiB) and the rights the walk that
/// filled it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// First virtual address of the page.
    pub page: u64,
    /// Page size.
    pub size: u64,
    /// First physical address of the frame.
    pub frame: u64,
    pub perms: EffectivePerms,
}

impl Translation {
    /// The translation a walk found.
    pub fn of(leaf: &Leaf) -> Translation {
        Translation {
            page: leaf.va,
            size: leaf.size,
            frame: leaf.phys,
            perms: leaf.perms,
        }
    }

    /// Whether a ring-3 `access` may use it.
    pub fn allows(&self, access: Access) -> bool {
        self.perms.user
            && match access {
                Access::Read => true,
                Access::Write => self.perms.writable,
                Access::Fetch => self.perms.executable(),
            }
    }

    /// The physical address of `va`, which lies in the page.
    pub fn phys(&self, va: u64) -> u64 {
        self.frame + (va - self.page)
    }

    /// Whether a CPU still holding `self` can do something `new` (`None`: not present) no longer
    /// allows: the page is cleared, moves to another frame, or loses W, U or X. Such a change
    /// must be flushed before ring 3 runs on the directory again.
    pub fn is_downgraded_by(&self, new: Option<&Translation>) -> bool {
        let Some(new) = new else { return true };
        let lost = |old: bool, now: bool| old && !now;
        new.frame != self.frame
            || new.size != self.size
            || lost(self.perms.writable, new.perms.writable)
            || lost(self.perms.user, new.perms.user)
            || lost(self.perms.executable(), new.perms.executable())
    }
}

const PAGE_SIZES: [u64; 3] = [1 << 12, 1 << 21, 1 << 30];

/// A maximally stale TLB for one CPU.
#[derive(Clone, Debug, Default)]
pub struct Tlb {
    /// One map per entry of [`PAGE_SIZES`], by first address: a lookup hashes one address per
    /// size that has entries, and most have none (every simulated access looks up).
    entries: [HashMap<u64, Translation>; 3],
}

impl Tlb {
    /// The cached translation covering `va`, if any.
    pub fn lookup(&self, va: u64) -> Option<&Translation> {
        PAGE_SIZES
            .iter()
            .zip(&self.entries)
            .filter(|(_, entries)| !entries.is_empty())
            .find_map(|(&size, entries)| entries.get(&(va & !(size - 1))))
    }

    /// Caches `translation`.
    pub fn fill(&mut self, translation: Translation) {
        if let Some(entries) = self.of_size(translation.size) {
            entries.insert(translation.page, translation);
        }
    }

    fn of_size(&mut self, size: u64) -> Option<&mut HashMap<u64, Translation>> {
        let at = PAGE_SIZES.iter().position(|&s| s == size)?;
        Some(&mut self.entries[at])
    }

    /// `invlpg va`: drops every entry covering `va`.
    pub fn invlpg(&mut self, va: u64) {
        for (size, entries) in PAGE_SIZES.iter().zip(&mut self.entries) {
            entries.remove(&(va & !(size - 1)));
        }
    }

    /// A page fault at `va` drops the faulting page's entries, like `invlpg`.
    pub fn fault(&mut self, va: u64) {
        self.invlpg(va);
    }

    /// A CR3 load: drops every entry.
    pub fn reload(&mut self) {
        self.entries.iter_mut().for_each(HashMap::clear);
    }

    /// How many translations are cached.
    pub fn len(&self) -> usize {
        self.entries.iter().map(HashMap::len).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(HashMap::is_empty)
    }

    /// The cached translations, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Translation> {
        self.entries.iter().flat_map(HashMap::values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(page: u64, frame: u64, writable: bool) -> Translation {
        Translation {
            page,
            size: 4096,
            frame,
            perms: EffectivePerms {
                writable,
                user: true,
                no_execute: true,
            },
        }
    }

    #[test]
    fn an_entry_stays_until_its_page_is_flushed_or_cr3_reloads() {
        let mut tlb = Tlb::default();
        tlb.fill(page(0x40_0000, 0x5000, true));
        tlb.fill(page(0x40_1000, 0x6000, true));
        assert_eq!(
            tlb.lookup(0x40_0ff8).map(|t| t.phys(0x40_0ff8)),
            Some(0x5ff8)
        );
        tlb.invlpg(0x40_1000);
        assert!(tlb.lookup(0x40_1000).is_none(), "flushed");
        assert!(
            tlb.lookup(0x40_0000).is_some(),
            "a flush of the neighbour keeps it"
        );
        tlb.reload();
        assert!(tlb.is_empty());
    }

    #[test]
    fn huge_pages_are_found_from_any_address_inside() {
        let mut tlb = Tlb::default();
        let mut huge = page(0x20_0000, 0x40_0000, false);
        huge.size = 1 << 21;
        tlb.fill(huge);
        assert_eq!(
            tlb.lookup(0x3f_f000).map(|t| t.phys(0x3f_f000)),
            Some(0x5f_f000)
        );
        tlb.invlpg(0x21_0000);
        assert!(tlb.is_empty(), "invlpg of any address in the page drops it");
    }

    #[test]
    fn downgrades_are_clears_moves_and_lost_rights() {
        let rw = page(0x1000, 0x5000, true);
        let ro = page(0x1000, 0x5000, false);
        assert!(rw.is_downgraded_by(None), "cleared");
        assert!(rw.is_downgraded_by(Some(&ro)), "lost W");
        assert!(
            rw.is_downgraded_by(Some(&page(0x1000, 0x6000, true))),
            "other frame"
        );
        assert!(!ro.is_downgraded_by(Some(&rw)), "an upgrade is not");
        assert!(!rw.is_downgraded_by(Some(&rw)), "nor is no change");
        assert!(!ro.allows(Access::Write) && ro.allows(Access::Read) && !ro.allows(Access::Fetch));
    }
}
