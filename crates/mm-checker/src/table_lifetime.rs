//! Page-table lifetime, from the flush trace: a page-table frame, at any level and the PML4
//! too, must not go back to the allocator while a CPU can still walk it. A CPU can walk
//!
//! - its CR3 (the directory it loaded last);
//! - every table a present entry links into the tables its CR3 reaches (the lower half of its
//!   directory; the kernel half is shared by every directory, so every CPU reaches it);
//! - a table unlinked from its loaded directory since its last `invlpg` or CR3 load: its
//!   paging-structure caches may still hold the entry that pointed to it.
//!
//! Freeing one of those is a `table-freed-while-reachable` finding: destroying the loaded
//! space without loading other tables first, or freeing a table of the active space. Hardware
//! then walks a freed frame, and once the frame is reused, whatever it now holds.
//!
//! Every CPU's view is a [`CpuTables`]; the trace names no CPU yet, so every event is CPU 0's,
//! and an SMP trace gives each CPU its own. The trace is attacker-controlled: what it can make
//! the replay remember is bounded by the caller's limit, and an excess is [`TraceTooLarge`].
#![forbid(unsafe_code)]

use crate::rule::Rule;
use crate::trace_events::{CoherenceFinding, Numbered};
use mm_driver::driver::TraceTooLarge;
use shared_mm::pte::{PageLevel, PageTableEntry, LOWER_HALF_LAST};
use shared_mm::trace::TraceEvent;
use x86_paging::frame_map::{FrameMap, FrameSet};

/// The entry linking a table: where it is and what it held.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// The directory (PML4) the entry belongs to.
    directory: u64,
    /// The level of the table it points to.
    level: PageLevel,
    /// The first address the entry maps.
    va: u64,
    /// Its value.
    entry: u64,
    /// The PTE write that linked the table.
    write: Numbered,
}

/// What one CPU may walk besides the tables linked below its CR3.
#[derive(Clone, Debug, Default)]
pub struct CpuTables {
    /// The directory loaded last, and the event that loaded it.
    cr3: Option<Numbered>,
    /// Tables unlinked from the loaded directory since the CPU's last flush.
    unlinked: Vec<(u64, Link)>,
    /// A directory this CPU was already reported walking freed tables of (one finding per
    /// loaded directory, not one per table).
    reported: Option<u64>,
}

impl CpuTables {
    fn loaded(&self) -> Option<u64> {
        match self.cr3 {
            Some((_, TraceEvent::Activate { directory })) => Some(directory),
            _ => None,
        }
    }

    /// `invlpg` (which drops every paging-structure-cache entry) or a CR3 load.
    fn flushed(&mut self) -> usize {
        std::mem::take(&mut self.unlinked).len()
    }
}

/// The replay state of table lifetime.
#[derive(Clone, Debug)]
pub struct TableLifetime {
    /// Lower-half tables linked by a present entry, by frame.
    user: FrameMap<u64, Link>,
    /// Kernel-half tables linked by a present entry (of any directory), by frame.
    kernel: FrameMap<u64, Link>,
    /// The directories that link lower-half tables.
    directories: FrameSet<u64>,
    cpus: Vec<CpuTables>,
    tracked: usize,
    limit: usize,
}

/// The table a `level` entry `raw` links, if it is present and not a leaf.
fn linked_table(level: u8, raw: u64) -> Option<(PageLevel, u64)> {
    let level = *PageLevel::ALL.get(usize::from(level))?;
    let entry = PageTableEntry::from_raw(raw);
    let lower = level.lower()?;
    (entry.is_present() && !entry.is_leaf(level)).then(|| (lower, entry.frame()))
}

impl TableLifetime {
    /// A replay of `cpus` CPUs that remembers at most `limit` tables.
    pub fn new(cpus: usize, limit: usize) -> Self {
        TableLifetime {
            user: FrameMap::default(),
            kernel: FrameMap::default(),
            directories: FrameSet::default(),
            cpus: vec![CpuTables::default(); cpus.max(1)],
            tracked: 0,
            limit,
        }
    }

    /// Replays one event of CPU `cpu`; returns the finding it makes, if any.
    pub fn apply(
        &mut self,
        cpu: usize,
        numbered: Numbered,
    ) -> Result<Option<CoherenceFinding>, TraceTooLarge> {
        let Some(this) = self.cpus.get_mut(cpu) else {
            return Ok(None);
        };
        match numbered.1 {
            TraceEvent::PteWrite {
                directory,
                va,
                level,
                old,
                new,
            } => {
                if let Some((_, table)) = linked_table(level, old) {
                    self.unlink(directory, table)?;
                }
                if let Some((level, table)) = linked_table(level, new) {
                    let link = Link {
                        directory,
                        level,
                        va,
                        entry: new,
                        write: numbered,
                    };
                    self.link(table, link)?;
                }
            }
            TraceEvent::Flush { .. } | TraceEvent::FlushAll => self.tracked -= this.flushed(),
            TraceEvent::Activate { .. } => {
                self.tracked -= this.flushed();
                this.cr3 = Some(numbered);
                this.reported = None;
            }
            TraceEvent::FrameFreed { frame } => return Ok(self.freed(numbered, frame)),
            TraceEvent::EnterUser
            | TraceEvent::FrameAllocated { .. }
            | TraceEvent::ShootdownRequest { .. }
            | TraceEvent::ShootdownAck { .. } => {}
        }
        Ok(None)
    }

    fn track(&mut self) -> Result<(), TraceTooLarge> {
        self.tracked += 1;
        if self.tracked > self.limit {
            return Err(TraceTooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn link(&mut self, table: u64, link: Link) -> Result<(), TraceTooLarge> {
        let map = if link.va > LOWER_HALF_LAST {
            &mut self.kernel
        } else {
            self.directories.insert(link.directory);
            &mut self.user
        };
        if map.insert(table, link).is_none() {
            self.track()?;
        }
        Ok(())
    }

    /// `table` is no longer linked by its entry in `directory`; a CPU that has the directory
    /// loaded may still cache the entry until its next flush.
    fn unlink(&mut self, directory: u64, table: u64) -> Result<(), TraceTooLarge> {
        let link = match self.user.get(&table) {
            Some(link) if link.directory == directory => self.user.remove(&table),
            _ => None,
        };
        let Some(link) = link else { return Ok(()) };
        self.tracked -= 1;
        for cpu in 0..self.cpus.len() {
            if self.cpus[cpu].loaded() == Some(directory) {
                self.cpus[cpu].unlinked.push((table, link));
                self.track()?;
            }
        }
        Ok(())
    }

    /// `frame` went back to the allocator: a finding if a CPU can still walk it. Then it is no
    /// table any more; a freed PML4 ends its directory.
    fn freed(&mut self, freed: Numbered, frame: u64) -> Option<CoherenceFinding> {
        let found = (0..self.cpus.len()).find_map(|cpu| self.walked_by(cpu, freed, frame));
        for map in [&mut self.user, &mut self.kernel] {
            self.tracked -= usize::from(map.remove(&frame).is_some());
        }
        if self.directories.remove(&frame) {
            let before = self.user.len();
            self.user.retain(|_, link| link.directory != frame);
            self.tracked -= before - self.user.len();
        }
        for cpu in &mut self.cpus {
            let before = cpu.unlinked.len();
            cpu.unlinked.retain(|&(table, _)| table != frame);
            self.tracked -= before - cpu.unlinked.len();
        }
        found
    }

    /// The finding if CPU `cpu` can still walk `frame`, freed at `freed`.
    fn walked_by(&mut self, cpu: usize, freed: Numbered, frame: u64) -> Option<CoherenceFinding> {
        let this = &self.cpus[cpu];
        let loaded = this.loaded()?;
        let (why, link, events) = if loaded == frame {
            let loads = this.cr3.into_iter().collect();
            (
                "it is the PML4 the CPU's CR3 holds".to_string(),
                None,
                loads,
            )
        } else if let Some(link) = self.kernel.get(&frame) {
            let why = "it is linked into the kernel half, which every directory shares";
            (why.to_string(), Some(*link), vec![link.write])
        } else if let Some(link) = self.user.get(&frame).filter(|l| l.directory == loaded) {
            let why = "a present entry links it into the loaded directory";
            (why.to_string(), Some(*link), vec![link.write])
        } else {
            let (_, link) = this.unlinked.iter().find(|(table, _)| *table == frame)?;
            let why = "it was unlinked from the loaded directory with no invlpg or CR3 load \
                       since, so the paging-structure caches may still point to it";
            (why.to_string(), Some(*link), vec![link.write])
        };
        if this.reported == Some(loaded) {
            return None;
        }
        self.cpus[cpu].reported = Some(loaded);
        let level = link.map_or(PageLevel::Pml4, |l| l.level);
        let mut events = events;
        events.push(freed);
        Some(CoherenceFinding {
            rule: Rule::TableFreedWhileReachable,
            directory: loaded,
            va: link.map_or(0, |l| l.va),
            pte: link.map_or(0, |l| l.entry),
            detail: format!(
                "{level:?} table {frame:#x} freed at trace event {} while CPU {cpu} can still \
                 walk it: {why}",
                freed.0
            ),
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u64 = 0x42000;
    const OTHER: u64 = 0x99000;
    const PDPT: u64 = 0x43000;
    const TABLE: u64 = 0x8000_0000_0004_3007; // a user table entry pointing to 0x43000

    fn link_pdpt(directory: u64, old: u64, new: u64) -> TraceEvent {
        TraceEvent::PteWrite {
            directory,
            va: 0x40_0000 & !((1 << 39) - 1),
            level: 0,
            old,
            new,
        }
    }

    fn replay(events: &[TraceEvent]) -> Vec<String> {
        let mut tables = TableLifetime::new(1, 1 << 16);
        let mut found = Vec::new();
        for (n, &event) in events.iter().enumerate() {
            let numbered = (n as u64, event);
            if let Some(f) = tables.apply(0, numbered).expect("small trace") {
                found.push(f.detail);
            }
        }
        found
    }

    const LOAD: TraceEvent = TraceEvent::Activate { directory: DIR };
    const LOAD_OTHER: TraceEvent = TraceEvent::Activate { directory: OTHER };
    const FREE_PDPT: TraceEvent = TraceEvent::FrameFreed { frame: PDPT };
    const FREE_DIR: TraceEvent = TraceEvent::FrameFreed { frame: DIR };

    #[test]
    fn destroying_a_space_that_is_not_loaded_is_clean() {
        let events = [
            LOAD,
            link_pdpt(DIR, 0, TABLE),
            LOAD_OTHER,
            FREE_PDPT,
            FREE_DIR,
        ];
        assert_eq!(replay(&events), Vec::<String>::new());
    }

    #[test]
    fn destroying_the_loaded_space_frees_its_tables_while_they_are_walked() {
        let events = [LOAD, link_pdpt(DIR, 0, TABLE), FREE_PDPT, FREE_DIR];
        let found = replay(&events);
        assert_eq!(
            found.len(),
            1,
            "one finding per loaded directory: {found:?}"
        );
        assert!(
            found[0].contains("links it into the loaded directory"),
            "{found:?}"
        );
        // The PML4 alone, with no table below it, is found as the CR3.
        let found = replay(&[LOAD, FREE_DIR]);
        assert!(
            found[0].contains("the PML4 the CPU's CR3 holds"),
            "{found:?}"
        );
    }

    #[test]
    fn an_unlinked_table_stays_walkable_until_a_flush() {
        let unlink = link_pdpt(DIR, TABLE, 0);
        let cached = replay(&[LOAD, link_pdpt(DIR, 0, TABLE), unlink, FREE_PDPT]);
        assert!(cached[0].contains("paging-structure caches"), "{cached:?}");
        let flush = TraceEvent::Flush { va: 0x40_0000 };
        let flushed = [LOAD, link_pdpt(DIR, 0, TABLE), unlink, flush, FREE_PDPT];
        assert_eq!(replay(&flushed), Vec::<String>::new());
    }

    #[test]
    fn a_kernel_table_is_walked_whatever_directory_is_loaded() {
        let kernel = TraceEvent::PteWrite {
            directory: OTHER,
            va: 0xffff_8000_0000_0000,
            level: 0,
            old: 0,
            new: 0x4_3003,
        };
        let found = replay(&[kernel, LOAD, FREE_PDPT]);
        assert!(found[0].contains("kernel half"), "{found:?}");
    }

    #[test]
    fn a_hostile_trace_cannot_grow_the_state_without_bound() {
        let mut tables = TableLifetime::new(1, 100);
        let flood = (0..1000u64).map(|i| link_pdpt(DIR, 0, TABLE + (i << 12)));
        let result = flood
            .enumerate()
            .try_for_each(|(n, e)| tables.apply(0, (n as u64, e)).map(|_| ()));
        assert!(result.is_err());
    }
}
