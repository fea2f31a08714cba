//! Frame provenance: every frame the MM allocates, owns, maps into a user page or walks as a
//! page table (CR3 included) lies in usable RAM of the memory map the host wrote at boot. Never
//! in the boot area (GDT, boot info, mailbox, boot page tables, flush trace), the kernel image,
//! or past RAM. The guest's own bitmap cannot show this: its "usable" is the guest's reading of
//! the map, and an off-by-one there hands out a reserved frame that every other rule accepts.
//!
//! Each allocation is judged twice: in the flush trace, where the MM names it before it writes
//! the frame (so the finding stands even if that write kills the guest at once), and in the
//! frame reports of the next check.
//!
//! The one exception is the kernel half, which walks the boot page tables the host built (the
//! kernel's directory copies their entries), so its tables may lie there too.
#![forbid(unsafe_code)]

use crate::accounting::FrameReports;
use crate::finding::{space_name, Finding};
use crate::rule::Rule;
use shared_mm::abi::{FrameUse, KERNEL_SPACE};
use shared_mm::boot_info::{
    BootInfo, MemoryKind, BOOT_GDT_ADDR, BOOT_PML4_ADDR, MAILBOX_ADDR, MAILBOX_SIZE,
};
use shared_mm::trace::{TraceEvent, TraceRecord, TRACE_ADDR, TRACE_SIZE};
use std::ops::Range;

const PAGE: u64 = 4096;
/// Findings one report check, or the trace of one batch, gives at most.
pub const MAX_FINDINGS: usize = 32;

/// The memory map the host wrote, as the rule reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// The usable ranges, in address order.
    usable: Vec<Range<u64>>,
    /// Where the kernel image lies.
    kernel: Range<u64>,
    ram_end: u64,
    /// The allocator-bitmap words (64 frames each) inside RAM that cover an unusable frame,
    /// with a bit set for each such frame.
    unusable_bits: Vec<(usize, u64)>,
}

/// What the areas of the boot layout hold, for findings.
const BOOT_AREAS: [(Range<u64>, &str); 4] = [
    (BOOT_GDT_ADDR..MAILBOX_ADDR, "the boot GDT and boot info"),
    (
        MAILBOX_ADDR..MAILBOX_ADDR + MAILBOX_SIZE,
        "the hypercall mailbox",
    ),
    (BOOT_PML4_ADDR..TRACE_ADDR, "the boot page tables"),
    (
        TRACE_ADDR..TRACE_ADDR + TRACE_SIZE,
        "the flush-trace buffer",
    ),
];

/// A `frame-provenance` finding of `space`.
fn finding(space: u32, detail: String) -> Finding {
    Finding {
        space,
        rule: Rule::FrameProvenance,
        va: None,
        pte: None,
        region: None,
        detail,
        events: Vec::new(),
    }
}

/// The boot page tables' area: the kernel half may walk tables there.
const BOOT_TABLES: Range<u64> = BOOT_PML4_ADDR..TRACE_ADDR;

impl Provenance {
    /// The rule for a guest booted with `info` (as the host wrote it, not as the guest may
    /// have left it in its RAM).
    pub fn new(info: &BootInfo) -> Self {
        let ram_end = info.ram_size;
        let mut usable: Vec<Range<u64>> = info
            .memory_map()
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .map(|r| r.base..r.base.saturating_add(r.size).min(ram_end))
            .filter(|r| !r.is_empty())
            .collect();
        usable.sort_by_key(|r| r.start);
        let mut rule = Provenance {
            usable,
            kernel: info.kernel_phys_start..info.kernel_phys_end,
            ram_end,
            unusable_bits: Vec::new(),
        };
        let words = ram_end.div_ceil(64 * PAGE) as usize;
        rule.unusable_bits = (0..words)
            .map(|word| {
                let base = word as u64 * 64 * PAGE;
                let bits = (0..64)
                    .filter(|bit| !rule.is_usable(base + bit * PAGE, PAGE))
                    .fold(0u64, |bits, bit| bits | 1 << bit);
                (word, bits)
            })
            .filter(|&(_, bits)| bits != 0)
            .collect();
        rule
    }

    /// Whether `[phys, phys + size)` lies inside one usable range.
    fn is_usable(&self, phys: u64, size: u64) -> bool {
        let Some(end) = phys.checked_add(size) else {
            return false;
        };
        let i = self.usable.partition_point(|r| r.start <= phys);
        i > 0 && end <= self.usable[i - 1].end
    }

    /// Where `frame` lies when that is not usable RAM, in words: `None` if it is usable.
    pub fn misplaced(&self, frame: u64, size: u64) -> Option<String> {
        if self.is_usable(frame, size) {
            return None;
        }
        let inside = |r: &Range<u64>| r.start < frame.saturating_add(size) && frame < r.end;
        let place = if frame >= self.ram_end {
            format!("past the end of RAM at {:#x}", self.ram_end)
        } else if inside(&self.kernel) {
            format!(
                "in the kernel image [{:#x}, {:#x})",
                self.kernel.start, self.kernel.end
            )
        } else if let Some((_, what)) = BOOT_AREAS.iter().find(|(area, _)| inside(area)) {
            format!("in {what}")
        } else {
            "outside the usable RAM of the boot memory map".to_string()
        };
        Some(place)
    }

    /// Why a page table at `table` of `space` may not be there: `None` if it may. The kernel
    /// half may walk the host's boot tables; everything else must be usable RAM.
    pub fn misplaced_table(&self, space: u32, table: u64) -> Option<String> {
        let boot_table = space == KERNEL_SPACE && BOOT_TABLES.contains(&table);
        self.misplaced(table, PAGE).filter(|_| !boot_table)
    }

    /// The frames the guest reported allocated or owned that lie outside usable RAM: one
    /// finding per frame an owner reports, and one per allocated frame no such finding names.
    pub fn check_reports(&self, reports: &FrameReports) -> Vec<Finding> {
        let mut found: Vec<(u64, Finding)> = Vec::new();
        for (space, records) in reports.owned() {
            for record in records {
                let size = match record.usage {
                    FrameUse::HeapBlock => 512 * PAGE,
                    _ => PAGE,
                };
                if found.len() >= MAX_FINDINGS {
                    break;
                }
                if let Some(place) = self.misplaced(record.frame, size) {
                    let detail = format!(
                        "frame {:#x}, owned by {} as {}, lies {place}",
                        record.frame,
                        space_name(space),
                        crate::accounting::use_name(record.usage)
                    );
                    found.push((record.frame, finding(space, detail)));
                }
            }
        }
        let allocated = reports.allocated().unwrap_or_default();
        for frame in self.allocated_outside(allocated) {
            if found.len() >= MAX_FINDINGS {
                break;
            }
            if !found.iter().any(|(named, _)| *named == frame) {
                let place = self.misplaced(frame, PAGE).unwrap_or_default();
                let detail = format!("frame {frame:#x} is allocated and lies {place}");
                found.push((frame, finding(KERNEL_SPACE, detail)));
            }
        }
        found.into_iter().map(|(_, f)| f).collect()
    }

    /// The allocations of the flush trace `events` (numbered from `first`) that lie outside
    /// usable RAM, at most `room` of them. The trace names an allocation before the MM writes
    /// the frame, so this holds even when that write kills the guest (a frame of the kernel
    /// image zeroed under its heap) before any report could show the frame.
    pub fn check_allocations(
        &self,
        first: u64,
        records: &[TraceRecord],
        room: usize,
    ) -> Vec<Finding> {
        let numbered = (first..).zip(records.iter().map(|r| r.event));
        let misplaced = numbered.filter_map(|(number, event)| {
            let TraceEvent::FrameAllocated { frame, size } = event else {
                return None;
            };
            let place = self.misplaced(frame, size)?;
            let what = if size == PAGE { "frame" } else { "block" };
            let detail = format!(
                "{what} {frame:#x} (size {size:#x}) allocated at trace event {number} lies {place}"
            );
            Some(Finding {
                events: vec![(number, event)],
                ..finding(KERNEL_SPACE, detail)
            })
        });
        misplaced.take(room.min(MAX_FINDINGS)).collect()
    }

    /// The frames set in the allocator's bitmap `words` that are not usable RAM: only the few
    /// words that cover an unusable frame, and any past RAM, are looked at.
    fn allocated_outside<'a>(&'a self, words: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        let in_ram = self.unusable_bits.iter().copied();
        let ram_words = self.ram_end.div_ceil(64 * PAGE) as usize;
        let past_ram = (ram_words..words.len()).map(|word| (word, u64::MAX));
        in_ram.chain(past_ram).flat_map(move |(word, unusable)| {
            let set = words.get(word).copied().unwrap_or(0) & unusable;
            let base = word as u64 * 64 * PAGE;
            (0..64)
                .filter(move |bit| set & (1 << bit) != 0)
                .map(move |bit| base + bit * PAGE)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_driver::driver::{FramesChunk, FramesPart};
    use shared_mm::abi::FrameRecord;
    use shared_mm::boot_info::{MemoryRegion, LOW_RESERVED_END, MAX_MEMORY_REGIONS};

    const RAM: u64 = 16 << 20;
    const KERNEL: Range<u64> = 0x20_0000..0x34_b000;

    fn info() -> BootInfo {
        let mut regions = [BootInfo::EMPTY_REGION; MAX_MEMORY_REGIONS];
        let layout = [
            (0, LOW_RESERVED_END, MemoryKind::Reserved),
            (LOW_RESERVED_END, KERNEL.start, MemoryKind::Usable),
            (KERNEL.start, KERNEL.end, MemoryKind::Reserved),
            (KERNEL.end, RAM, MemoryKind::Usable),
        ];
        for (slot, (start, end, kind)) in regions.iter_mut().zip(layout) {
            *slot = MemoryRegion {
                base: start,
                size: end - start,
                kind,
            };
        }
        BootInfo {
            ram_size: RAM,
            mailbox_addr: MAILBOX_ADDR,
            mailbox_size: MAILBOX_SIZE,
            kernel_phys_start: KERNEL.start,
            kernel_phys_end: KERNEL.end,
            random_seed: 0,
            command: 0,
            flags: 0,
            cpu_count: 1,
            region_count: layout.len(),
            regions,
        }
    }

    #[test]
    fn usable_ram_is_what_the_map_says_and_everything_else_is_named() {
        let rule = Provenance::new(&info());
        assert_eq!(rule.misplaced(LOW_RESERVED_END, PAGE), None);
        assert_eq!(rule.misplaced(KERNEL.end, 512 * PAGE), None);
        let named = |frame| rule.misplaced(frame, PAGE).unwrap();
        assert!(named(KERNEL.end - PAGE).contains("kernel image"));
        assert!(named(0x4f000).contains("flush-trace buffer"));
        assert!(named(0x10000).contains("mailbox"));
        assert!(named(RAM).contains("past the end of RAM"));
        // A 2 MiB block straddling the image's end is not usable as a whole.
        assert!(rule.misplaced(0x20_0000, 512 * PAGE).is_some());
        // The kernel half may walk the boot tables; a user space may not.
        assert_eq!(
            rule.misplaced_table(KERNEL_SPACE, BOOT_PML4_ADDR + PAGE),
            None
        );
        assert!(rule.misplaced_table(1, BOOT_PML4_ADDR + PAGE).is_some());
    }

    #[test]
    fn allocations_in_the_trace_are_judged_before_any_report() {
        let rule = Provenance::new(&info());
        let allocated = |frame, size| TraceEvent::FrameAllocated { frame, size };
        let events = [
            allocated(KERNEL.end, PAGE),
            TraceEvent::Flush { va: 0x40_0000 },
            allocated(KERNEL.end - PAGE, PAGE),
            allocated(0x40_0000, 512 * PAGE),
            allocated(0x20_0000, 512 * PAGE),
        ]
        .map(|event| TraceRecord { cpu: 0, event });
        let found = rule.check_allocations(70, &events, usize::MAX);
        let details: Vec<&str> = found.iter().map(|f| f.detail.as_str()).collect();
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(
            details[0].starts_with("frame 0x34a000 (size 0x1000) allocated at trace event 72"),
            "{details:?}"
        );
        assert!(details[0].ends_with("lies in the kernel image [0x200000, 0x34b000)"));
        assert!(details[1].starts_with("block 0x200000"), "{details:?}");
        assert_eq!(found[0].events, [(72, events[2].event)]);
        assert_eq!(rule.check_allocations(70, &events, 1).len(), 1, "room");
    }

    #[test]
    fn reports_name_each_misplaced_frame_once() {
        let rule = Provenance::new(&info());
        let trap_stack_top = KERNEL.end - PAGE;
        let mut words = vec![0u64; (RAM / PAGE / 64) as usize];
        for frame in [LOW_RESERVED_END, trap_stack_top, 0x4f000] {
            let i = frame / PAGE;
            words[(i / 64) as usize] |= 1 << (i % 64);
        }
        let data = FrameRecord {
            frame: trap_stack_top,
            usage: FrameUse::Data,
        };
        let mut reports = FrameReports::default();
        let chunks = [
            (KERNEL_SPACE, FramesPart::Allocated, words),
            (1, FramesPart::Owned, vec![data.to_word()]),
        ];
        for (space, part, words) in &chunks {
            let chunk = FramesChunk {
                space: *space,
                part: *part,
                first: 0,
                total: words.len() as u64,
                words,
            };
            reports.collect(chunk).expect("well-formed");
        }
        let found = rule.check_reports(&reports);
        let details: Vec<&str> = found.iter().map(|f| f.detail.as_str()).collect();
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(
            details[0].contains("owned by space 1 as a data page"),
            "{details:?}"
        );
        assert!(
            details[1].starts_with("frame 0x4f000 is allocated"),
            "{details:?}"
        );
    }
}
