//! The operation generator: syzkaller-style choices that reuse and overlap earlier ranges
//! often, keep sizes mostly small but sometimes huge, and aim at the edges of the space. It
//! forks, maps shared memory, and follows a touch in one space of a fork's family by an access
//! to the same address in another, where copy-on-write and sharing bugs show. Now and then it
//! sends a placement probe ([`super::probe`]) for the uniformity rule.

use super::model::{Model, SpaceModel};
use super::probe::{self, PROBE_EVERY, PROBE_FIRST};
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{
    Op, KERNEL_SPACE, MAX_SPACES, USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE,
};
use shared_mm::region_tree::{RandomSource, SplitMix64};
use std::collections::VecDeque;

const PAGE: u64 = 4096;
/// Guest frames the generator lets the model's spaces hold before it destroys one.
const FRAME_BUDGET: usize = 24_000;
/// Live regions per space before the generator stops adding more.
const REGION_BUDGET: usize = 1_500;
/// Live spaces the generator aims for at most.
const SPACE_BUDGET: usize = 8;
/// Ranges remembered for reuse.
const HISTORY: usize = 64;
/// Forks remembered, for accesses across a parent and its child.
const FAMILIES: usize = 16;

/// Addresses worth trying on their own: both ends of the space, the trampoline, the kernel
/// half, the non-canonical hole and the top of the 64-bit space.
const SPECIAL: [u64; 10] = [
    0,
    USER_SPACE_BASE,
    USER_SPACE_END - PAGE,
    USER_SPACE_END,
    USER_TRAMPOLINE + 8,
    0x0000_8000_0000_0000,
    0xFFFF_8000_0000_0000,
    0xFFFF_FFFF_8020_0000,
    0xFFFF_FFFF_FFFF_F000,
    0x4000_0000,
];

/// A seeded, deterministic source of operations.
pub struct Generator {
    rng: SplitMix64,
    /// Ranges used by earlier operations, for reuse and overlap.
    history: Vec<(u64, u64)>,
    /// The space the last operation named: most operations stay on it, as a process makes
    /// several calls in a row, so sequences within one space (touch, unmap, touch again) come
    /// up without a switch of page tables in between.
    last_space: Option<u32>,
    /// Memory pressure: drive the guest's frames to exhaustion and back, again and again.
    pressure: bool,
    /// Touches queued to fill a big region page by page (pressure mode).
    sweep: VecDeque<Op>,
    /// Giving frames back after an exhaustion, until half the budget is free (pressure mode).
    releasing: bool,
    /// The model's count of OutOfMemory results when the generator last looked.
    seen_out_of_memory: u64,
    /// Recent forks: (parent, child).
    families: Vec<(u32, u32)>,
    /// The space and address of the last touch.
    last_touch: Option<(u32, u64)>,
    /// Spaces the batch being generated creates or forks: the model, as of the last batch,
    /// does not hold them yet.
    new_spaces: u32,
    /// The placement probe's operations still to send.
    probe: VecDeque<Op>,
    /// Operations generated until the next probe is due; `None`: no probes.
    until_probe: Option<usize>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: SplitMix64::new(seed),
            history: Vec::new(),
            last_space: None,
            pressure: false,
            sweep: VecDeque::new(),
            releasing: false,
            seen_out_of_memory: 0,
            families: Vec::new(),
            last_touch: None,
            new_spaces: 0,
            probe: VecDeque::new(),
            until_probe: Some(PROBE_FIRST),
        }
    }

    /// The same generator, sending no placement probe (to measure what the probes cost).
    pub fn without_probes(self) -> Self {
        Generator {
            until_probe: None,
            ..self
        }
    }

    /// Whether a placement probe is under way: its operations come next.
    pub fn probing(&self) -> bool {
        !self.probe.is_empty()
    }

    /// The next operation of a placement probe, starting one if it is due and there is room
    /// for its spaces.
    fn probe_op(&mut self, model: &Model) -> Option<Op> {
        if self.probe.is_empty() {
            let until = self.until_probe?.saturating_sub(1);
            let room = self.live_spaces(model) + probe::spaces() <= MAX_SPACES;
            if until > 0 || !room {
                self.until_probe = Some(until);
                return None;
            }
            self.until_probe = Some(PROBE_EVERY);
            self.probe = probe::ops(self.next_space_id(model)).into();
        }
        let op = self.probe.pop_front()?;
        if op == Op::CreateSpace {
            self.new_spaces += 1;
        }
        Some(op)
    }

    /// A new batch begins: the model now holds every space the last one created.
    pub fn start_batch(&mut self) {
        self.new_spaces = 0;
    }

    /// The id the next space created or forked gets: the guest numbers them in order.
    fn next_space_id(&self, model: &Model) -> u32 {
        model.next_space_id().saturating_add(self.new_spaces)
    }

    /// The ids of the spaces this batch has created or forked so far.
    fn pending_spaces(&self, model: &Model) -> std::ops::Range<u32> {
        model.next_space_id()..self.next_space_id(model)
    }

    /// Live spaces, counting those this batch has created or forked so far.
    fn live_spaces(&self, model: &Model) -> usize {
        model.spaces.len() + self.new_spaces as usize
    }

    fn create_space(&mut self) -> Op {
        self.new_spaces += 1;
        Op::CreateSpace
    }

    /// The same generator in memory-pressure mode: it fills big regions page by page until
    /// the guest runs out of frames, then unmaps and destroys until half are free, and again.
    /// Every out-of-memory path runs, and the model checks each leaves the MM as it was.
    pub fn with_pressure(mut self) -> Self {
        self.pressure = true;
        self
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rng.next_u64() % n
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Mostly 1-8 pages, sometimes up to 2 MiB, rarely huge, zero or misaligned.
    fn size(&mut self) -> u64 {
        match self.below(100) {
            0..=69 => (1 + self.below(8)) * PAGE,
            70..=89 => (9 + self.below(504)) * PAGE,
            90..=96 => PAGE << (9 + self.below(27)),
            97 => 0,
            98 => 1 + self.below(PAGE - 1),
            _ => (1 + self.below(8)) * PAGE + 8,
        }
    }

    fn alignment(&mut self) -> u64 {
        match self.below(100) {
            0..=79 => PAGE,
            80..=94 => PAGE << self.below(19),
            95..=97 => 1 << (self.below(63)),
            _ => self.pick(&[0, 3 * 1024, 6 * 1024, PAGE + 1]),
        }
    }

    fn access(&mut self) -> u32 {
        match self.below(100) {
            0..=59 => USER | READ | WRITE,
            60..=74 => USER | READ,
            75..=84 => USER | READ | EXECUTE,
            85..=89 => USER,
            90..=97 => self.below(16) as u32,
            _ => 16 << self.below(4),
        }
    }

    /// A map's access: as [`Generator::access`], shared a fifth of the time.
    fn map_access(&mut self) -> u32 {
        let access = self.access();
        if self.chance(20) {
            access | SHARED
        } else {
            access
        }
    }

    fn remember(&mut self, base: u64, size: u64) {
        if self.history.len() == HISTORY {
            let i = self.below(HISTORY as u64) as usize;
            self.history[i] = (base, size);
        } else {
            self.history.push((base, size));
        }
    }

    /// A range that reuses, overlaps or straddles existing regions most of the time.
    fn range(&mut self, space: Option<&SpaceModel>) -> (u64, u64) {
        let regions: Vec<(u64, u64)> = space
            .map(|s| s.regions.iter().map(|(&b, r)| (b, r.size)).collect())
            .unwrap_or_default();
        let choice = self.below(100);
        let (base, size) = if choice < 45 && !regions.is_empty() {
            let (b, s) = self.pick(&regions);
            match self.below(9) {
                0 => (b, s),
                1 => (b + self.below(s / PAGE) * PAGE, self.size()),
                2 => (
                    b.saturating_sub(self.below(4) * PAGE),
                    s + self.below(8) * PAGE,
                ),
                // One page over either edge, the first page as often as the last.
                3 => (b + s - PAGE, 2 * PAGE),
                4 => (b.saturating_sub(PAGE), 2 * PAGE),
                // Exactly on the boundaries of the holes on either side.
                5 => {
                    let size = self.size();
                    (b.saturating_sub(size), size)
                }
                6 => (b + s, self.size()),
                7 => (b, PAGE),
                _ => (b, self.size()),
            }
        } else if choice < 70 && !self.history.is_empty() {
            let (b, s) = self.pick(&self.history.clone());
            let shift = self.below(9) * PAGE;
            if self.chance(50) {
                (b.wrapping_add(shift), s)
            } else {
                (b.wrapping_sub(shift), s)
            }
        } else if choice < 80 {
            (self.pick(&SPECIAL), self.size())
        } else {
            // Somewhere in the user range, usually near the bottom where the action is.
            let span = if self.chance(80) {
                1 << 32
            } else {
                USER_SPACE_END - USER_SPACE_BASE
            };
            (
                USER_SPACE_BASE + self.below(span / PAGE) * PAGE,
                self.size(),
            )
        };
        if self.chance(3) {
            return (base | self.pick(&[1, 8, 0x800]), size);
        }
        (base, size)
    }

    /// An 8-byte-aligned address to touch: usually inside a region.
    fn touch_address(&mut self, space: Option<&SpaceModel>) -> u64 {
        let regions: Vec<(u64, u64)> = space
            .map(|s| s.regions.iter().map(|(&b, r)| (b, r.size)).collect())
            .unwrap_or_default();
        if !regions.is_empty() && self.chance(80) {
            let (b, s) = self.pick(&regions);
            // Bias toward the first pages, which earlier touches may have written.
            let pages = (s / PAGE).min(if self.chance(70) { 4 } else { u64::MAX });
            return b + self.below(pages) * PAGE + self.below(PAGE / 8) * 8;
        }
        let (base, _) = self.range(space);
        base & !7
    }

    fn space(&mut self, model: &Model) -> u32 {
        let pending = self.pending_spaces(model);
        let live: Vec<u32> = model.spaces.keys().copied().chain(pending).collect();
        if live.is_empty() || self.chance(3) {
            return self.pick(&[0, 1, 2, 99, KERNEL_SPACE - 1]);
        }
        let space = match self.last_space.filter(|s| live.contains(s)) {
            Some(last) if self.chance(75) => last,
            _ => self.pick(&live),
        };
        self.last_space = Some(space);
        space
    }

    /// The frames the generator lets the spaces hold before it destroys one: its budget, and
    /// less on a small guest.
    fn frame_budget(&self, model: &Model) -> usize {
        model
            .frame_budget()
            .map_or(FRAME_BUDGET, |b| FRAME_BUDGET.min(b * 3 / 4))
    }

    /// In pressure mode, the next op of a fill or of a release, if one is due.
    fn pressure_op(&mut self, model: &Model) -> Option<Op> {
        let budget = model.frame_budget()?;
        let in_use = model.frames_estimate();
        if self.releasing && in_use < budget / 2 {
            self.releasing = false;
        }
        // Exhausted: the guest said so, or the model's (upper-bound) count is well past it.
        let exhausted = model.out_of_memory_results() > self.seen_out_of_memory;
        self.seen_out_of_memory = model.out_of_memory_results();
        if !self.releasing && (exhausted || in_use > budget + budget / 4) {
            self.releasing = true;
            self.sweep.clear();
        }
        if self.releasing {
            return self.release(model);
        }
        if let Some(op) = self.sweep.pop_front() {
            return Some(op);
        }
        let space = self.space(model);
        if !model.spaces.contains_key(&space) || !self.chance(40) {
            return None;
        }
        // A big read-write region somewhere high, then filled: populated whole, or written page
        // by page.
        let pages = 256 + self.below(1792);
        let addr = 0x1000_0000_0000 + self.below(1 << 20) * (8 << 20);
        if self.chance(50) {
            self.sweep.push_back(Op::Populate {
                space,
                addr,
                size: pages * PAGE,
            });
        } else {
            self.sweep.extend((0..pages).map(|i| Op::TouchWrite {
                space,
                addr: addr + i * PAGE,
                value: i + 1,
            }));
        }
        Some(Op::MapFixed {
            space,
            addr,
            size: pages * PAGE,
            access: USER | READ | WRITE,
        })
    }

    /// Gives frames back: unmaps the heaviest space's biggest region, or destroys the space.
    fn release(&mut self, model: &Model) -> Option<Op> {
        let (&space, s) = model
            .spaces
            .iter()
            .max_by_key(|(_, s)| s.frames_estimate())?;
        let biggest = s.regions.iter().max_by_key(|(_, r)| r.size);
        match biggest {
            Some((&addr, r)) if self.chance(70) => Some(Op::Unmap {
                space,
                addr,
                size: r.size,
            }),
            _ => Some(Op::DestroySpace { space }),
        }
    }

    /// Changes the access of a page that is present already, to any mask (kernel-only and
    /// invalid ones too).
    fn protect_present(&mut self, space: u32, s: &SpaceModel) -> Option<Op> {
        let mut pages: Vec<u64> = s.committed_pages().collect();
        // In order: a hash set's order differs between runs, and the same seed must give the
        // same operations.
        pages.sort_unstable();
        if pages.is_empty() {
            return None;
        }
        let page = self.pick(&pages);
        Some(Op::Protect {
            space,
            addr: page,
            size: PAGE,
            access: self.below(17) as u32,
        })
    }

    /// Forks a live space; the child is the space worked on next, half the time.
    fn fork(&mut self, model: &Model) -> Op {
        let space = self.space(model);
        if model.spaces.contains_key(&space) || self.pending_spaces(model).contains(&space) {
            let child = self.next_space_id(model);
            self.new_spaces += 1;
            if self.families.len() == FAMILIES {
                self.families.remove(0);
            }
            self.families.push((space, child));
            if self.chance(50) {
                self.last_space = Some(child);
            }
        }
        Op::Fork { space }
    }

    /// After a touch in one space of a fork's family, an access to the same address in another
    /// of its live spaces: the read that shows a write leaking, the write that must copy, the
    /// unmap that must leave the other's copy alone.
    fn across_family(&mut self, model: &Model) -> Option<Op> {
        let (touched, addr) = self.last_touch?;
        let relatives: Vec<u32> = self
            .families
            .iter()
            .filter_map(|&(p, c)| match touched {
                t if t == p => Some(c),
                t if t == c => Some(p),
                _ => None,
            })
            .filter(|s| model.spaces.contains_key(s))
            .collect();
        if relatives.is_empty() {
            return None;
        }
        let space = self.pick(&relatives);
        self.last_space = Some(space);
        self.last_touch = Some((space, addr));
        Some(match self.below(100) {
            0..=39 => Op::TouchRead { space, addr },
            40..=69 => Op::TouchWrite {
                space,
                addr,
                value: self.rng.next_u64(),
            },
            70..=84 => Op::KernelRead { space, addr },
            _ => Op::Unmap {
                space,
                addr: addr & !(PAGE - 1),
                size: PAGE,
            },
        })
    }

    /// A touch of `kind` at an address of `space`, remembered for [`Generator::across_family`].
    fn touch(&mut self, space: u32, s: Option<&SpaceModel>, kind: u64) -> Op {
        let addr = self.touch_address(s);
        self.last_touch = Some((space, addr));
        match kind {
            0 => Op::TouchRead { space, addr },
            1 => Op::TouchWrite {
                space,
                addr,
                value: self.rng.next_u64(),
            },
            _ => Op::TouchExec { space, addr },
        }
    }

    /// The next operation, chosen with the model's current state in view.
    pub fn next_op(&mut self, model: &Model) -> Op {
        if let Some(op) = self.probe_op(model) {
            return op;
        }
        let live = self.live_spaces(model);
        if live == 0 || (live < SPACE_BUDGET && self.chance(2)) {
            return self.create_space();
        }
        if self.pressure {
            if let Some(op) = self.pressure_op(model) {
                return op;
            }
        }
        if model.frames_estimate() > self.frame_budget(model) || self.chance(1) {
            let heaviest = model
                .spaces
                .iter()
                .max_by_key(|(_, s)| s.frames_estimate())
                .map(|(&id, _)| id);
            if let Some(space) = heaviest {
                return Op::DestroySpace { space };
            }
        }
        if live < SPACE_BUDGET && self.chance(2) {
            return self.fork(model);
        }
        if self.chance(10) {
            if let Some(op) = self.across_family(model) {
                return op;
            }
        }
        let space = self.space(model);
        let s = model.spaces.get(&space);
        let crowded = s.is_some_and(|s| s.regions.len() >= REGION_BUDGET);

        if let Some(s) = s.filter(|_| self.chance(3)) {
            if let Some(op) = self.protect_present(space, s) {
                return op;
            }
        }
        if self.chance(2) {
            let (addr, size) = self.range(s);
            return Op::Populate { space, addr, size };
        }
        if self.chance(4) {
            let addr = self.touch_address(s);
            return if self.chance(50) {
                Op::KernelRead { space, addr }
            } else {
                Op::KernelWrite {
                    space,
                    addr,
                    value: self.rng.next_u64(),
                }
            };
        }
        match self.below(100) {
            0..=13 if !crowded => {
                let (addr, size) = self.range(s);
                self.remember(addr, size);
                Op::MapFixed {
                    space,
                    addr,
                    size,
                    access: self.map_access(),
                }
            }
            14..=25 if !crowded => Op::MapAnywhere {
                space,
                size: self.size(),
                align: self.alignment(),
                access: self.map_access(),
            },
            26..=33 if !crowded => Op::MapRandomized {
                space,
                size: self.size(),
                align: self.alignment(),
                access: self.map_access(),
            },
            0..=49 => {
                let (addr, size) = self.range(s);
                self.remember(addr, size);
                Op::Unmap { space, addr, size }
            }
            50..=64 => {
                let (addr, size) = self.range(s);
                self.remember(addr, size);
                Op::Protect {
                    space,
                    addr,
                    size,
                    access: self.access(),
                }
            }
            65..=77 => self.touch(space, s, 0),
            78..=92 => self.touch(space, s, 1),
            93..=96 => self.touch(space, s, 2),
            _ => Op::Snapshot {
                space: if self.chance(20) { KERNEL_SPACE } else { space },
            },
        }
    }

    /// With coverage feedback: a quarter of the time, a mutated copy of a corpus batch (one
    /// that reached new edges), at most `max` ops; otherwise `None` (generate afresh).
    pub fn from_corpus(
        &mut self,
        corpus: &[Vec<Op>],
        model: &Model,
        max: usize,
    ) -> Option<Vec<Op>> {
        if corpus.is_empty() || !self.chance(25) {
            return None;
        }
        let i = self.below(corpus.len() as u64) as usize;
        let ops = corpus[i]
            .iter()
            .take(max)
            .map(|&op| self.mutate(op, model))
            .collect();
        Some(ops)
    }

    /// Changes a few fields of `op` (for mutating corpus entries that found new coverage).
    pub fn mutate(&mut self, op: Op, model: &Model) -> Op {
        let space = self.space(model);
        let s = model.spaces.get(&space);
        match op {
            Op::MapFixed { access, .. } => {
                let (addr, size) = self.range(s);
                Op::MapFixed {
                    space,
                    addr,
                    size,
                    access,
                }
            }
            Op::MapAnywhere { size, access, .. } => Op::MapAnywhere {
                space,
                size,
                align: self.alignment(),
                access,
            },
            Op::MapRandomized { align, access, .. } => Op::MapRandomized {
                space,
                size: self.size(),
                align,
                access,
            },
            Op::Unmap { size, .. } => Op::Unmap {
                space,
                addr: self.range(s).0,
                size,
            },
            Op::Protect { addr, size, .. } => Op::Protect {
                space,
                addr,
                size,
                access: self.access(),
            },
            Op::TouchRead { .. } => Op::TouchRead {
                space,
                addr: self.touch_address(s),
            },
            Op::TouchWrite { value, .. } => Op::TouchWrite {
                space,
                addr: self.touch_address(s),
                value,
            },
            Op::TouchExec { .. } => Op::TouchExec {
                space,
                addr: self.touch_address(s),
            },
            other => other,
        }
    }
}
