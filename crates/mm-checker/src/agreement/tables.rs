//! The page tables a space's walks entered, and a copy of each table above the last level:
//! with the frames the guest wrote since (the backend's dirty log), they say which entries
//! changed, and so which spans of the space to walk again.

use shared_mm::pte::{PageLevel, ENTRIES_PER_TABLE};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use x86_paging::frame_map::{FrameMap, FrameSet};
use x86_paging::page_walk::{EffectivePerms, EnteredTable, Subtree, WalkStart};

/// The bytes of a table.
const TABLE_BYTES: usize = ENTRIES_PER_TABLE * 8;

/// A table, as last read.
type Copy = Box<[u8; TABLE_BYTES]>;

/// One table a walk entered where its place in the space is.
#[derive(Clone, Debug)]
struct Entered {
    table: u64,
    perms: EffectivePerms,
    /// The entries last read (tables above the last level only: a changed last-level table is
    /// walked again whole, which costs what comparing it would).
    copy: Option<Copy>,
}

/// The tables of one space (of its half: `half`), by place and by frame.
#[derive(Clone, Debug)]
pub(super) struct Tables {
    half: RangeInclusive<u64>,
    /// (level, first address its entry 0 maps) -> the table entered there.
    at: BTreeMap<(PageLevel, u64), Entered>,
    /// Table frame -> its places (more than one only where tables alias).
    by_frame: FrameMap<u64, Vec<(PageLevel, u64)>>,
}

/// A span of a space to walk again: from the table `root`, the addresses `range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stale {
    pub root: Subtree,
    pub range: (u64, u64),
}

impl Stale {
    pub fn range(&self) -> RangeInclusive<u64> {
        self.range.0..=self.range.1
    }
}

/// The last address the `level` table at `base` maps.
fn table_last(level: PageLevel, base: u64) -> u64 {
    match level {
        PageLevel::Pml4 => u64::MAX,
        _ => base.saturating_add(level.entry_span() * ENTRIES_PER_TABLE as u64 - 1),
    }
}

/// `a` ∩ `b`, if not empty.
fn intersect(a: (u64, u64), b: &RangeInclusive<u64>) -> Option<(u64, u64)> {
    let (first, last) = (a.0.max(*b.start()), a.1.min(*b.end()));
    (first <= last).then_some((first, last))
}

impl Tables {
    pub fn new(half: RangeInclusive<u64>) -> Self {
        Tables {
            half,
            at: BTreeMap::new(),
            by_frame: FrameMap::default(),
        }
    }

    /// Tables remembered.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether the guest wrote one of these tables (`written`: frames it wrote).
    pub fn touched_by(&self, written: &FrameSet<u64>) -> bool {
        if written.len() < self.by_frame.len() {
            written.iter().any(|f| self.by_frame.contains_key(f))
        } else {
            self.by_frame.keys().any(|f| written.contains(f))
        }
    }

    /// Remembers the tables a walk entered (the root first), reading a copy of each one above
    /// the last level. `skip_root`: the walk started at a table already remembered.
    pub fn enter<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        entered: &[EnteredTable],
        skip_root: bool,
    ) {
        for t in entered.iter().skip(usize::from(skip_root)) {
            let copy = (t.level != PageLevel::Pt).then(|| {
                let mut copy = Box::new([0; TABLE_BYTES]);
                read_table(mem, t.table, &mut copy).then_some(copy)
            });
            let place = (t.level, t.base);
            let table = Entered {
                table: t.table,
                perms: t.perms,
                copy: copy.flatten(),
            };
            if let Some(old) = self.at.insert(place, table) {
                self.unindex(old.table, place);
            }
            self.by_frame.entry(t.table).or_default().push(place);
        }
    }

    fn unindex(&mut self, frame: u64, place: (PageLevel, u64)) {
        if let Some(places) = self.by_frame.get_mut(&frame) {
            places.retain(|&p| p != place);
            if places.is_empty() {
                self.by_frame.remove(&frame);
            }
        }
    }

    /// Forgets the tables below `level` whose span starts in `range` (a span walked again
    /// enters them anew).
    pub fn forget_below(&mut self, level: PageLevel, range: (u64, u64)) {
        let lower = PageLevel::ALL.iter().filter(|&&l| l > level);
        let mut gone = Vec::new();
        for &l in lower {
            gone.extend(self.at.range((l, range.0)..=(l, range.1)).map(|(&p, _)| p));
        }
        for place in gone {
            if let Some(old) = self.at.remove(&place) {
                self.unindex(old.table, place);
            }
        }
    }

    /// The spans whose entries changed, from the frames the guest wrote: each entry of a
    /// written table above the last level that differs from its copy (the copy is brought up
    /// to date), and each written last-level table whole. Spans are disjoint, ascending; one
    /// inside another is dropped.
    pub fn stale<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        written: &FrameSet<u64>,
    ) -> Vec<Stale> {
        let mut places: Vec<(PageLevel, u64)> = written
            .iter()
            .filter_map(|f| self.by_frame.get(f))
            .flatten()
            .copied()
            .collect();
        places.sort_unstable();
        let mut stale = Vec::new();
        for place in places {
            self.stale_in(mem, place, &mut stale);
        }
        stale.sort_unstable_by_key(|s| (s.range.0, std::cmp::Reverse(s.range.1)));
        let mut kept: Vec<Stale> = Vec::with_capacity(stale.len());
        for s in stale {
            if kept.last().is_none_or(|k| s.range.0 > k.range.1) {
                kept.push(s);
            }
        }
        kept
    }

    /// The stale spans of the table at `place`.
    fn stale_in<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        place: (PageLevel, u64),
        out: &mut Vec<Stale>,
    ) {
        let (level, base) = place;
        let half = self.half.clone();
        let Some(entered) = self.at.get_mut(&place) else {
            return;
        };
        let root = Subtree {
            start: WalkStart {
                table: entered.table,
                level,
                perms: entered.perms,
            },
            base,
            last: table_last(level, base),
        };
        let Some(whole) = intersect((root.base, root.last), &half) else {
            return;
        };
        let mut now = [0; TABLE_BYTES];
        let copy = entered.copy.as_mut();
        let Some(copy) = copy.filter(|_| read_table(mem, entered.table, &mut now)) else {
            // A last-level table, or one that cannot be read (the walk reports why).
            out.push(Stale { root, range: whole });
            return;
        };
        let span = level.entry_span();
        let pairs = copy.as_chunks::<8>().0.iter().zip(now.as_chunks::<8>().0);
        for (i, (old, new)) in pairs.enumerate() {
            if old == new {
                continue;
            }
            let first = base.wrapping_add(i as u64 * span);
            // The PML4's upper entries map the upper half, sign-extended.
            let first = match level {
                PageLevel::Pml4 => shared_mm::pte::sign_extend(first),
                _ => first,
            };
            if let Some(range) = intersect((first, first.wrapping_add(span - 1)), &half) {
                out.push(Stale { root, range });
            }
        }
        copy.copy_from_slice(&now);
    }
}

/// Reads the table at `table` into `bytes`; `false` if it is not in guest memory.
fn read_table<M: GuestMemory + ?Sized>(mem: &M, table: u64, bytes: &mut [u8; TABLE_BYTES]) -> bool {
    mem.read_slice(bytes, GuestAddress(table)).is_ok()
}
