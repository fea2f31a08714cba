//! Frame accounting: the guest's frame reports (the allocator's bitmap of allocated frames and
//! what each owner holds: a space's data pages and page tables, the kernel's tables, heap and
//! trampoline) checked against each other and against the frames the host's walk finds mapped.
//!
//! - `frame-accounting`: every owned or mapped frame is allocated, and every allocated frame
//!   has an owner (a frame allocated and owned by nobody is a leak);
//! - `no-leak-after-destroy`: once a space is destroyed, every frame it owned is free again (or
//!   owned by someone else);
//! - `frame-owner`: no frame has two owners, and a user page maps only its own space's data
//!   frames, never a frame the kernel or another space owns.
//!
//! Owners not reported in a check keep their last report, so only changed spaces need to
//! report; the leak scan over the bitmap runs only when the counts disagree.

use super::frame_map::FrameMap;
use super::{Finding, Rule};
use crate::driver::{DriverError, FramesChunk, FramesPart};
use shared_mm::abi::{FrameRecord, FrameUse, KERNEL_SPACE};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Words of frames one report may hold at most: two per page of the largest supported RAM.
const MAX_REPORT_WORDS: u64 = 2 * (shared_mm::boot_info::MAX_GUEST_RAM / 4096);
/// Findings one accounting check keeps per rule.
const MAX_PER_RULE: usize = 16;

/// The frame reports received for one check.
#[derive(Debug, Default)]
pub struct FrameReports {
    allocated: Option<Vec<u64>>,
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
        if total > MAX_REPORT_WORDS {
            return Err(DriverError::FramesTooLarge { space, total });
        }
        if first == 0 {
            self.receiving = Some((space, part, total));
            match part {
                FramesPart::Allocated => self.allocated = Some(Vec::new()),
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

/// What the accounting remembers between checks.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Frame -> its owner and use, from each owner's last report.
    owner: FrameMap<u64, (u32, FrameUse)>,
    /// Owner -> the frames of its last report.
    owned: FrameMap<u32, Vec<u64>>,
    /// Owner -> its last report as received (an unchanged report needs no work).
    last: FrameMap<u32, Vec<FrameRecord>>,
}

fn name(space: u32) -> String {
    super::space_name(space)
}

fn use_name(usage: FrameUse) -> &'static str {
    match usage {
        FrameUse::Data => "a data page",
        FrameUse::Table => "a page table",
        FrameUse::Heap | FrameUse::HeapBlock => "the heap",
        FrameUse::Trampoline => "the trampoline",
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
        512
    } else {
        1
    };
    (0..count).map(move |i| FrameRecord {
        frame: record.frame + i * 4096,
        usage: record.usage,
    })
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
        reports: FrameReports,
        live: &BTreeSet<u32>,
        mapped: &BTreeMap<u32, Vec<(u64, u64)>>,
        full: bool,
    ) -> Vec<Finding> {
        let mut found = Found::default();
        let released = self.release_gone(live);
        let changed: BTreeMap<u32, Vec<FrameRecord>> = reports
            .owned
            .into_iter()
            .filter(|(space, records)| self.last.get(space) != Some(records))
            .collect();
        let reported: Vec<u32> = changed.keys().copied().collect();
        // Every changed owner's old frames go first: a frame that moved from one to another
        // since the last check is not owned twice.
        for &space in &reported {
            self.forget(space);
        }
        for (space, records) in changed {
            self.insert(space, &records, &mut found);
            self.last.insert(space, records);
        }
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
        found.findings
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
        let frames = self.owned.remove(&space).unwrap_or_default();
        for frame in &frames {
            if self.owner.get(frame).is_some_and(|(s, _)| *s == space) {
                self.owner.remove(frame);
            }
        }
        frames
    }

    /// Takes `records` as what `space` owns now; a frame another owner holds is a finding.
    fn insert(&mut self, space: u32, records: &[FrameRecord], found: &mut Found) {
        let mut frames = Vec::with_capacity(records.len());
        for record in records.iter().flat_map(|&r| frames_of(r)) {
            match self.owner.get(&record.frame) {
                Some(&(other, usage)) => found.report(
                    space,
                    Rule::FrameOwner,
                    format!(
                        "frame {:#x} is owned as {} by {} and as {} by {}",
                        record.frame,
                        use_name(usage),
                        name(other),
                        use_name(record.usage),
                        name(space)
                    ),
                ),
                None => {
                    self.owner.insert(record.frame, (space, record.usage));
                    frames.push(record.frame);
                }
            }
        }
        self.owned.insert(space, frames);
    }

    fn owned_are_allocated(&self, space: u32, words: &[u64], found: &mut Found) {
        for &frame in self.owned.get(&space).into_iter().flatten() {
            if !allocated(words, frame) {
                let usage = self.owner[&frame].1;
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
                let detail = match self.owner.get(&frame) {
                    _ if !allocated(words, frame) => {
                        found.report(
                            space,
                            Rule::FrameAccounting,
                            format!("page {va:#x} maps frame {frame:#x}, which is free"),
                        );
                        continue;
                    }
                    Some(&(owner, FrameUse::Data)) if owner == space => continue,
                    Some(&(owner, usage)) => format!(
                        "page {va:#x} maps frame {frame:#x}, which {} owns as {}",
                        name(owner),
                        use_name(usage)
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
        if allocated_count == self.owner.len() as u64 && released.is_empty() {
            return;
        }
        for (i, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let frame = (i as u64 * 64 + u64::from(bits.trailing_zeros())) * 4096;
                bits &= bits - 1;
                if self.owner.contains_key(&frame) {
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
