//! Frame accounting: the guest's frame reports (the allocator's bitmap of allocated frames and
//! what each owner holds: a space's data pages and page tables, the kernel's tables, heap and
//! trampoline) checked against each other and against the frames the host's walk finds mapped.
//!
//! - `frame-accounting`: every owned or mapped frame is allocated, and every allocated frame
//!   has an owner (a frame allocated and owned by nobody is a leak);
//! - `no-leak-after-destroy`: once a space is destroyed, every frame it owned is free again (or
//!   owned by someone else);
//! - `frame-owner`: no frame has two owners, but for data frames shared on purpose: a private
//!   (copy-on-write) frame has exactly as many owners as the guest's reference count says, and
//!   a frame of shared memory is owned by each space that maps its object; and a user page maps
//!   only its own space's data frames, never a frame the kernel or another space owns. A
//!   reference count above the owners holding the frame is a `frame-accounting` finding (a
//!   reference leaked, so the frame can never be freed).
//!
//! Owners not reported in a check keep their last report, so only changed spaces need to
//! report; the leak scan over the bitmap runs only when the counts disagree.

use crate::finding::Finding;
use crate::rule::Rule;
use mm_driver::driver::{DriverError, FramesChunk, FramesPart};
use shared_mm::abi::{FrameRecord, FrameRefs, FrameUse, KERNEL_SPACE};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use x86_paging::frame_map::{FrameMap, FrameSet};

/// Findings one accounting check keeps per rule.
const MAX_PER_RULE: usize = 16;

/// The frame reports received for one check.
#[derive(Debug, Default)]
pub struct FrameReports {
    allocated: Option<Vec<u64>>,
    /// Frame -> its reference count, for frames held more than once.
    refs: FrameMap<u64, u32>,
    owned: BTreeMap<u32, Vec<FrameRecord>>,
    /// The owner and part being received, and how many words it announced.
    receiving: Option<(u32, FramesPart, u64)>,
}

impl FrameReports {
    /// Adds one chunk: a chunk at word 0 starts a part; later ones continue it exactly.
    pub fn collect(&mut self, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        let FramesChunk {
            space,
            part,
            first,
            total,
            words,
        } = chunk;
        let out_of_order = DriverError::FramesOutOfOrder { space, first };
        if first == 0 {
            self.receiving = Some((space, part, total));
            match part {
                FramesPart::Allocated => self.allocated = Some(Vec::new()),
                FramesPart::Shared => self.refs.clear(),
                FramesPart::Owned => {
                    self.owned.insert(space, Vec::new());
                }
            }
        }
        let Some((at_space, at_part, at_total)) = self.receiving else {
            return Err(out_of_order);
        };
        let received = match part {
            FramesPart::Allocated => self.allocated.as_ref().map_or(0, Vec::len),
            FramesPart::Shared => self.refs.len(),
            FramesPart::Owned => self.owned.get(&space).map_or(0, Vec::len),
        } as u64;
        if (at_space, at_part, at_total) != (space, part, total) || received != first {
            return Err(out_of_order);
        }
        if first.saturating_add(words.len() as u64) > total {
            return Err(DriverError::FramesTooLarge { space, total });
        }
        match part {
            FramesPart::Allocated => self.allocated.get_or_insert_default().extend(words),
            FramesPart::Shared => {
                for &word in words {
                    let refs = FrameRefs::from_word(word)
                        .ok_or(DriverError::MalformedFrameRecord { space, word })?;
                    if self.refs.insert(refs.frame, refs.refs).is_some() {
                        return Err(DriverError::MalformedFrameRecord { space, word });
                    }
                }
            }
            FramesPart::Owned => {
                let records = words.iter().map(|&w| {
                    FrameRecord::from_word(w)
                        .ok_or(DriverError::MalformedFrameRecord { space, word: w })
                });
                let list = self.owned.entry(space).or_default();
                for record in records {
                    list.push(record?);
                }
            }
        }
        Ok(())
    }
}

impl FrameReports {
    /// How many objects hold `frame`, as the guest reported (1 unless listed).
    pub fn refs(&self, frame: u64) -> u32 {
        self.refs.get(&frame).copied().unwrap_or(1)
    }

    /// The reference counts of the frames held more than once.
    pub fn shared_frames(&self) -> &FrameMap<u64, u32> {
        &self.refs
    }

    /// The allocator's bitmap of allocated frames, if the kernel reported it.
    pub fn allocated(&self) -> Option<&[u64]> {
        self.allocated.as_deref()
    }

    /// Each owner reported, with the frames it owns.
    pub fn owned(&self) -> impl Iterator<Item = (u32, &[FrameRecord])> {
        self.owned
            .iter()
            .map(|(&space, records)| (space, records.as_slice()))
    }
}

/// Who owns one frame: its use, and the owners (more than one only for shared data).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owners {
    usage: FrameUse,
    first: u32,
    more: Vec<u32>,
}

impl Owners {
    fn count(&self) -> u32 {
        1 + self.more.len() as u32
    }

    fn contains(&self, space: u32) -> bool {
        self.first == space || self.more.contains(&space)
    }

    fn names(&self) -> String {
        let all: Vec<String> = std::iter::once(self.first)
            .chain(self.more.iter().copied())
            .map(name)
            .collect();
        all.join(", ")
    }

    /// Drops `space`; `false` when no owner is left.
    fn remove(&mut self, space: u32) -> bool {
        if self.first == space {
            match self.more.pop() {
                Some(next) => self.first = next,
                None => return false,
            }
        } else {
            self.more.retain(|&s| s != space);
        }
        true
    }
}

/// What the accounting remembers between checks.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Frame -> its use and owners, from each owner's last report.
    owner: FrameMap<u64, Owners>,
    /// 2 MiB block -> its owner, for heap blocks reported whole and aligned: one entry instead
    /// of 512 keeps the first check of each fresh guest (the kernel's 16 MiB heap) cheap.
    blocks: FrameMap<u64, Owners>,
    /// Owner -> the frames of its last report.
    owned: FrameMap<u32, Vec<u64>>,
    /// Owner -> the heap blocks of its last report.
    owned_blocks: FrameMap<u32, Vec<u64>>,
    /// Owner -> its last report as received (an unchanged report needs no work).
    last: FrameMap<u32, Vec<FrameRecord>>,
    /// The allocator's bitmap at the last check.
    last_allocated: Vec<u64>,
}

fn name(space: u32) -> String {
    crate::finding::space_name(space)
}

/// What a frame of `usage` is, in words.
pub(super) fn use_name(usage: FrameUse) -> &'static str {
    match usage {
        FrameUse::Data => "a data page",
        FrameUse::Table => "a page table",
        FrameUse::Heap | FrameUse::HeapBlock => "the heap",
        FrameUse::Trampoline => "the trampoline",
        FrameUse::SharedData => "shared memory",
    }
}

/// Findings of one accounting check, capped per rule.
#[derive(Default)]
struct Found {
    findings: Vec<Finding>,
    per_rule: BTreeMap<Rule, usize>,
}

impl Found {
    fn report(&mut self, space: u32, rule: Rule, detail: String) {
        let n = self.per_rule.entry(rule).or_default();
        *n += 1;
        if *n <= MAX_PER_RULE {
            self.findings.push(Finding {
                space,
                rule,
                va: None,
                pte: None,
                region: None,
                detail,
                events: Vec::new(),
            });
        }
    }
}

/// The 4 KiB frames a record stands for: one, or the 512 of a heap block.
fn frames_of(record: FrameRecord) -> impl Iterator<Item = FrameRecord> {
    let count = if record.usage == FrameUse::HeapBlock {
        BLOCK_FRAMES
    } else {
        1
    };
    frames_from(record.frame, count).map(move |frame| FrameRecord {
        frame,
        usage: record.usage,
    })
}

/// A frame `space` reports as `record` that `owners` hold already.
fn clash(record: FrameRecord, owners: &Owners, space: u32) -> String {
    format!(
        "frame {:#x} is owned as {} by {} and as {} by {}",
        record.frame,
        use_name(owners.usage),
        owners.names(),
        use_name(record.usage),
        name(space)
    )
}

/// Frames in a heap block.
const BLOCK_FRAMES: u64 = 512;
/// Bytes in a heap block.
const BLOCK_SIZE: u64 = BLOCK_FRAMES * 4096;

/// The frames of the heap block at `base`.
fn block_frames(base: u64) -> impl Iterator<Item = u64> {
    frames_from(base, BLOCK_FRAMES)
}

/// `count` consecutive 4 KiB frames from `base`.
fn frames_from(base: u64, count: u64) -> impl Iterator<Item = u64> {
    (0..count).map(move |i| base + i * 4096)
}

/// `a` and `b` without the records they share at their start and at their end.
fn differing_middles<'r>(
    a: &'r [FrameRecord],
    b: &'r [FrameRecord],
) -> (&'r [FrameRecord], &'r [FrameRecord]) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (&a[..a.len() - suffix], &b[..b.len() - suffix])
}

/// Whether frame `frame` is allocated in the bitmap `words`.
fn allocated(words: &[u64], frame: u64) -> bool {
    let index = frame / 4096;
    let word = words.get((index / 64) as usize).copied().unwrap_or(0);
    word & (1 << (index % 64)) != 0
}

impl Accounting {
    /// Checks `reports` (the kernel's and those of the spaces walked this check) with `live`
    /// the live spaces and `mapped` the frames each walked space's user pages map. With `full`,
    /// every owner's frames are checked against the bitmap, not only those reported now.
    pub fn check(
        &mut self,
        mut reports: FrameReports,
        live: &BTreeSet<u32>,
        mapped: &BTreeMap<u32, Vec<(u64, u64)>>,
        full: bool,
    ) -> Vec<Finding> {
        let mut found = Found::default();
        let released = self.release_gone(live);
        let changed: BTreeMap<u32, Vec<FrameRecord>> = std::mem::take(&mut reports.owned)
            .into_iter()
            .filter(|(space, records)| self.last.get(space) != Some(records))
            .collect();
        let reported: Vec<u32> = changed.keys().copied().collect();
        // Every changed owner's old frames go first: a frame that moved from one to another
        // since the last check is not owned twice.
        for &space in &reported {
            self.forget(space);
        }
        let mut multiple = Vec::new();
        for (space, records) in changed {
            multiple.extend(self.insert(space, &records, &mut found));
            self.last.insert(space, records);
        }
        self.references(&reports, multiple, &mut found);
        let Some(words) = reports.allocated else {
            return found.findings;
        };
        let to_check: Vec<u32> = if full {
            self.owned.keys().copied().collect()
        } else {
            reported
        };
        for space in to_check {
            self.owned_are_allocated(space, &words, &mut found);
        }
        self.mapped_frames(mapped, &words, &mut found);
        self.leaks(&words, &released, &mut found);
        self.last_allocated = words;
        found.findings
    }

    /// The frames whose verdict as a mapped page `reports` (with `live` the live spaces) may
    /// change: those an owner gained or lost since its last report (or holds in its first),
    /// those of owners gone, and those allocated or freed since the last check. A page that
    /// maps none of them, and was judged before, would be judged the same again.
    pub fn frames_changing(&self, reports: &FrameReports, live: &BTreeSet<u32>) -> FrameSet<u64> {
        let mut frames = FrameSet::default();
        let records_frames = |records: &mut dyn Iterator<Item = &FrameRecord>| {
            records
                .flat_map(|&r| frames_of(r))
                .map(|r| r.frame)
                .collect::<Vec<_>>()
        };
        for (space, records) in &reports.owned {
            let last = self.last.get(space).map_or(&[][..], Vec::as_slice);
            if last == records.as_slice() {
                continue;
            }
            // Reports change at an end or in one stretch far more often than throughout.
            let (last, records) = differing_middles(last, records);
            let before: FrameSet<u64> = last.iter().map(|r| r.to_word()).collect();
            let now: FrameSet<u64> = records.iter().map(|r| r.to_word()).collect();
            let gained = records.iter().filter(|r| !before.contains(&r.to_word()));
            let lost = last.iter().filter(|r| !now.contains(&r.to_word()));
            frames.extend(records_frames(&mut gained.chain(lost)));
        }
        let gone = self
            .last
            .keys()
            .filter(|s| **s != KERNEL_SPACE && !live.contains(s));
        for space in gone {
            frames.extend(records_frames(&mut self.last[space].iter()));
        }
        let now = reports.allocated().unwrap_or_default();
        let before = &self.last_allocated;
        for i in 0..now.len().max(before.len()) {
            let (a, b) = (before.get(i).copied(), now.get(i).copied());
            let mut bits = a.unwrap_or(0) ^ b.unwrap_or(0);
            while bits != 0 {
                frames.insert((i as u64 * 64 + u64::from(bits.trailing_zeros())) * 4096);
                bits &= bits - 1;
            }
        }
        frames
    }

    /// Forgets the spaces no longer live; returns the frames they owned.
    fn release_gone(&mut self, live: &BTreeSet<u32>) -> HashMap<u64, u32> {
        let gone: Vec<u32> = self
            .owned
            .keys()
            .copied()
            .filter(|s| *s != KERNEL_SPACE && !live.contains(s))
            .collect();
        let mut released = HashMap::new();
        for space in gone {
            for frame in self.forget(space) {
                released.insert(frame, space);
            }
        }
        released
    }

    /// Drops what `space` reported last; returns its frames.
    fn forget(&mut self, space: u32) -> Vec<u64> {
        self.last.remove(&space);
        let mut frames = self.owned.remove(&space).unwrap_or_default();
        for frame in &frames {
            let left = self.owner.get_mut(frame).map(|o| o.remove(space));
            if left == Some(false) {
                self.owner.remove(frame);
            }
        }
        for block in self.owned_blocks.remove(&space).unwrap_or_default() {
            self.blocks.remove(&block);
            frames.extend(block_frames(block));
        }
        frames
    }

    /// Who owns `frame`, as a frame of its own or inside a heap block.
    fn owner_of(&self, frame: u64) -> Option<&Owners> {
        self.owner
            .get(&frame)
            .or_else(|| self.blocks.get(&(frame & !(BLOCK_SIZE - 1))))
    }

    /// Frames with an owner.
    fn owned_frames(&self) -> u64 {
        self.owner.len() as u64 + BLOCK_FRAMES * self.blocks.len() as u64
    }

    /// Takes the aligned heap block at `record` as `space`'s, unless any of its frames has an
    /// owner already (then `false`: it is taken frame by frame, which reports the clash).
    fn insert_block(&mut self, space: u32, record: FrameRecord) -> bool {
        let base = record.frame;
        let clear = base.is_multiple_of(BLOCK_SIZE)
            && !self.blocks.contains_key(&base)
            && block_frames(base).all(|frame| !self.owner.contains_key(&frame));
        if clear {
            let owners = Owners {
                usage: record.usage,
                first: space,
                more: Vec::new(),
            };
            self.blocks.insert(base, owners);
            self.owned_blocks.entry(space).or_default().push(base);
        }
        clear
    }

    /// Takes `records` as what `space` owns now. A frame another owner holds is a finding,
    /// unless both hold it as the same kind of data (copy-on-write or shared memory); returns
    /// those frames, to be checked against their reference counts.
    fn insert(&mut self, space: u32, records: &[FrameRecord], found: &mut Found) -> Vec<u64> {
        let mut frames = Vec::with_capacity(records.len());
        let mut multiple = Vec::new();
        let records: Vec<FrameRecord> = records
            .iter()
            .copied()
            .filter(|&r| r.usage != FrameUse::HeapBlock || !self.insert_block(space, r))
            .collect();
        for record in records.into_iter().flat_map(frames_of) {
            if let Some(owners) = self.blocks.get(&(record.frame & !(BLOCK_SIZE - 1))) {
                found.report(space, Rule::FrameOwner, clash(record, owners, space));
                continue;
            }
            let Some(owners) = self.owner.get_mut(&record.frame) else {
                let owners = Owners {
                    usage: record.usage,
                    first: space,
                    more: Vec::new(),
                };
                self.owner.insert(record.frame, owners);
                frames.push(record.frame);
                continue;
            };
            let data = matches!(record.usage, FrameUse::Data | FrameUse::SharedData);
            if data && owners.usage == record.usage && !owners.contains(space) {
                owners.more.push(space);
                frames.push(record.frame);
                multiple.push(record.frame);
                continue;
            }
            found.report(space, Rule::FrameOwner, clash(record, owners, space));
        }
        self.owned.insert(space, frames);
        multiple
    }

    /// Every frame held more than once, or owned by more than one space, against its
    /// reference count: a private frame has as many owners as references; a frame of shared
    /// memory is held once (by its object), however many spaces map it.
    fn references(&self, reports: &FrameReports, multiple: Vec<u64>, found: &mut Found) {
        let mut frames: Vec<u64> = reports.shared_frames().keys().copied().collect();
        frames.extend(multiple);
        frames.sort_unstable();
        frames.dedup();
        for frame in frames {
            let Some(owners) = self.owner_of(frame) else {
                continue; // Reported shared but owned by nobody: the leak scan reports it.
            };
            let refs = reports.refs(frame);
            let (holders, usage) = (owners.count(), owners.usage);
            let expected = if usage == FrameUse::SharedData {
                1
            } else {
                holders
            };
            if refs == expected {
                continue;
            }
            let (rule, why) = if refs > expected {
                (
                    Rule::FrameAccounting,
                    "a reference leaked: it can never be freed",
                )
            } else {
                (Rule::FrameOwner, "more owners than references")
            };
            let detail = format!(
                "frame {frame:#x} ({}) has {refs} reference(s) but is held by {}: {why}",
                use_name(usage),
                owners.names()
            );
            found.report(owners.first, rule, detail);
        }
    }

    fn owned_are_allocated(&self, space: u32, words: &[u64], found: &mut Found) {
        // A block is checked frame by frame only when its bitmap words are not all set.
        let blocks = self.owned_blocks.get(&space).into_iter().flatten();
        let whole = |block: u64| {
            let first = (block / 4096 / 64) as usize;
            let count = (BLOCK_FRAMES / 64) as usize;
            words
                .get(first..first + count)
                .is_some_and(|w| w.iter().all(|&w| w == u64::MAX))
        };
        let partial = blocks.copied().filter(|&block| !whole(block));
        let in_blocks = partial.flat_map(block_frames);
        let frames = self.owned.get(&space).into_iter().flatten().copied();
        for frame in frames.chain(in_blocks) {
            if !allocated(words, frame) {
                let usage = self.owner_of(frame).map_or(FrameUse::Data, |o| o.usage);
                let detail = format!(
                    "frame {frame:#x} is owned as {} but free in the frame allocator",
                    use_name(usage)
                );
                found.report(space, Rule::FrameAccounting, detail);
            }
        }
    }

    /// A user page maps only an allocated data frame of its own space.
    fn mapped_frames(
        &self,
        mapped: &BTreeMap<u32, Vec<(u64, u64)>>,
        words: &[u64],
        found: &mut Found,
    ) {
        for (&space, pages) in mapped {
            for &(frame, va) in pages {
                let detail = match self.owner_of(frame) {
                    _ if !allocated(words, frame) => {
                        found.report(
                            space,
                            Rule::FrameAccounting,
                            format!("page {va:#x} maps frame {frame:#x}, which is free"),
                        );
                        continue;
                    }
                    Some(owners)
                        if owners.contains(space)
                            && matches!(owners.usage, FrameUse::Data | FrameUse::SharedData) =>
                    {
                        continue
                    }
                    Some(owners) => format!(
                        "page {va:#x} maps frame {frame:#x}, which {} owns as {}",
                        owners.names(),
                        use_name(owners.usage)
                    ),
                    None => format!("page {va:#x} maps frame {frame:#x}, which nobody owns"),
                };
                found.report(space, Rule::FrameOwner, detail);
            }
        }
    }

    /// Allocated frames nobody owns: a leak, or frames a destroyed space did not give back.
    fn leaks(&self, words: &[u64], released: &HashMap<u64, u32>, found: &mut Found) {
        let allocated_count: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
        if allocated_count == self.owned_frames() && released.is_empty() {
            return;
        }
        for (i, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let frame = (i as u64 * 64 + u64::from(bits.trailing_zeros())) * 4096;
                bits &= bits - 1;
                if self.owner_of(frame).is_some() {
                    continue;
                }
                match released.get(&frame) {
                    Some(&space) => found.report(
                        space,
                        Rule::NoLeakAfterDestroy,
                        format!(
                            "frame {frame:#x} of the destroyed {} is still allocated",
                            name(space)
                        ),
                    ),
                    None => found.report(
                        KERNEL_SPACE,
                        Rule::FrameAccounting,
                        format!("frame {frame:#x} is allocated but no owner holds it (a leak)"),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 0x40_0000;

    fn reports(owned: &[(u32, Vec<FrameRecord>)], allocated: &[u64]) -> FrameReports {
        let mut reports = FrameReports::default();
        reports
            .collect(FramesChunk {
                space: KERNEL_SPACE,
                part: FramesPart::Allocated,
                first: 0,
                total: allocated.len() as u64,
                words: allocated,
            })
            .expect("well-formed");
        for (space, records) in owned {
            let words: Vec<u64> = records.iter().map(|r| r.to_word()).collect();
            reports
                .collect(FramesChunk {
                    space: *space,
                    part: FramesPart::Owned,
                    first: 0,
                    total: words.len() as u64,
                    words: &words,
                })
                .expect("well-formed");
        }
        reports
    }

    /// An allocator bitmap with the 512 frames of the heap block and `extra` allocated.
    fn bitmap(extra: &[u64]) -> Vec<u64> {
        let mut words = vec![0u64; 2 * BLOCK as usize / 4096 / 64];
        let first = (BLOCK / 4096 / 64) as usize;
        words[first..first + 8].fill(u64::MAX);
        for frame in extra {
            let i = frame / 4096;
            words[(i / 64) as usize] |= 1 << (i % 64);
        }
        words
    }

    fn record(frame: u64, usage: FrameUse) -> FrameRecord {
        FrameRecord { frame, usage }
    }

    fn rules(findings: &[Finding]) -> Vec<Rule> {
        findings.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn a_heap_block_owns_all_its_frames_as_one_entry() {
        let mut accounting = Accounting::default();
        let kernel = (KERNEL_SPACE, vec![record(BLOCK, FrameUse::HeapBlock)]);
        let data = (1, vec![record(0x1000, FrameUse::Data)]);
        let live = BTreeSet::from([1]);
        let found = accounting.check(
            reports(&[kernel, data], &bitmap(&[0x1000])),
            &live,
            &BTreeMap::new(),
            true,
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!((accounting.owner.len(), accounting.blocks.len()), (1, 1));
    }

    #[test]
    fn a_data_frame_inside_a_heap_block_is_owned_twice() {
        let mut accounting = Accounting::default();
        let kernel = (KERNEL_SPACE, vec![record(BLOCK, FrameUse::HeapBlock)]);
        let data = (1, vec![record(BLOCK + 0x5000, FrameUse::Data)]);
        let live = BTreeSet::from([1]);
        let found = accounting.check(
            reports(&[kernel, data], &bitmap(&[])),
            &live,
            &BTreeMap::new(),
            true,
        );
        assert_eq!(rules(&found), [Rule::FrameOwner], "{found:?}");
    }

    #[test]
    fn a_free_frame_of_a_heap_block_and_a_misaligned_block_are_found() {
        let mut accounting = Accounting::default();
        let mut words = bitmap(&[]);
        words[(BLOCK / 4096 / 64) as usize] &= !1;
        // A block the guest reports off its 2 MiB boundary is taken frame by frame.
        let kernel = (
            KERNEL_SPACE,
            vec![
                record(BLOCK, FrameUse::HeapBlock),
                record(BLOCK + 0x20_1000, FrameUse::HeapBlock),
            ],
        );
        let found = accounting.check(
            reports(&[kernel], &words),
            &BTreeSet::new(),
            &BTreeMap::new(),
            true,
        );
        let accounting_findings = found
            .iter()
            .filter(|f| f.rule == Rule::FrameAccounting)
            .count();
        // One free frame of the aligned block, and (capped) the misaligned block's frames,
        // none of them allocated.
        assert!(accounting_findings > 1, "{found:?}");
        assert_eq!(accounting.blocks.len(), 1);
        assert_eq!(accounting.owner.len(), 512);
    }
}
