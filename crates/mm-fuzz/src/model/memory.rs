//! What the modelled spaces' memory holds: each byte is the trampoline's code, a private page's
//! (each space its own, copied at fork), or a shared object's (the same in every space that
//! maps it); and which pages have frames.
#![forbid(unsafe_code)]

use super::space::{SpaceModel, PAGE};
use super::Model;
use shared_mm::abi::{TRAMPOLINE_CODE, USER_TRAMPOLINE};

impl Model {
    /// The byte at `addr` of `s`: the trampoline's code on its page, what was written, or zero.
    fn byte(&self, s: &SpaceModel, addr: u64) -> u8 {
        let (page, off) = (addr & !(PAGE - 1), (addr % PAGE) as usize);
        if page == USER_TRAMPOLINE {
            return TRAMPOLINE_CODE.get(off).copied().unwrap_or(0);
        }
        let bytes = match s.region_at(page).and_then(|(_, r)| r.object) {
            Some(object) => self.shared.page(object, page),
            None => s.memory.get(&page),
        };
        bytes.map_or(0, |bytes| bytes[off])
    }

    /// The little-endian u64 at `addr` of `s`, which may straddle two pages.
    pub(super) fn read_u64(&self, s: &SpaceModel, addr: u64) -> u64 {
        let bytes: [u8; 8] = std::array::from_fn(|i| self.byte(s, addr.wrapping_add(i as u64)));
        u64::from_le_bytes(bytes)
    }

    pub(super) fn write_u64(&mut self, space: u32, addr: u64, value: u64) {
        let Some(s) = self.spaces.get_mut(&space) else {
            return;
        };
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            let at = addr.wrapping_add(i as u64);
            let (page, off) = (at & !(PAGE - 1), (at % PAGE) as usize);
            let bytes = match s.region_at(page).and_then(|(_, r)| r.object) {
                Some(object) => self.shared.page_mut(object, page),
                None => s
                    .memory
                    .entry(page)
                    .or_insert_with(|| Box::new([0; PAGE as usize])),
            };
            bytes[off] = byte;
        }
    }

    /// Commits the region pages an access of `[first, last]` of `space` touched (not the
    /// trampoline's).
    pub(super) fn commit_touched(&mut self, space: u32, first: u64, last: u64) {
        for at in [first, last] {
            if at < USER_TRAMPOLINE {
                self.commit(space, at);
            }
        }
    }

    /// The page at `addr` of `space` now has a frame (its object's, for shared memory).
    pub(super) fn commit(&mut self, space: u32, addr: u64) {
        let page = addr & !(PAGE - 1);
        let Some(s) = self.spaces.get_mut(&space) else {
            return;
        };
        match s.region_at(page).and_then(|(_, r)| r.object) {
            Some(object) => self.shared.commit(object, page),
            None => {
                s.committed.insert(page);
            }
        }
        s.note_tables(page);
    }

    /// How many pages of `[first, last]` of `s` have a frame (counted from the committed
    /// pages, not page by page: the range may be huge).
    pub(super) fn committed_in(&self, s: &SpaceModel, first: u64, last: u64) -> usize {
        let private = s.committed.iter().filter(|p| (first..=last).contains(*p));
        let shared = s
            .regions
            .range(..=last)
            .filter(|(&base, r)| base + (r.size - 1) >= first)
            .filter_map(|(&base, r)| {
                let object = r.object?;
                let (lo, hi) = (base.max(first), (base + (r.size - 1)).min(last));
                Some(self.shared.committed_between(object, lo, hi))
            });
        private.count() + shared.sum::<usize>()
    }
}
