//! An incremental check of one space: only the entries that changed since its last check
//! (the tables the guest wrote, compared with the copies kept), walked again from the table
//! holding them, and the pages under regions whose access or object changed are judged again;
//! the frames they map, or stopped mapping, are held to the sharing rules again at the end of
//! the check. A full walk judges the same pages by the same rules, so the two find the same
//! defects (`Checked` compares them every so often: see `cross_check`).

use super::{frames_of, Check, Mapped, KERNEL_TOTAL, PAGE, USER_TOTAL};
use crate::region_diff::changed_ranges;
use crate::rule::Rule;
use mm_driver::driver::SpaceSnapshot;
use shared_mm::abi::{KERNEL_SPACE, USER_TRAMPOLINE};
use std::ops::RangeInclusive;
use vm_memory::GuestMemory;
use x86_paging::frame_map::FrameSet;
use x86_paging::page_walk::{leaves_from, Leaf};

use super::tables::Stale;

impl Check<'_> {
    /// Brings what the checker knows of `view.space` up to date from its last walk, which
    /// [`super::Agreement::can_follow`] must allow, and judges what changed: the entries of
    /// the tables the guest wrote (`written`: frames), and the pages whose region changed
    /// access or object (its region list is judged whole). `kernel` is the kernel's snapshot,
    /// for a user space's kernel half. Returns `false` if the spans to walk again hold more
    /// leaves than a whole walk may find: the space is then forgotten, to be walked whole.
    pub fn update<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        view: &SpaceSnapshot,
        kernel: &SpaceSnapshot,
        written: &FrameSet<u64>,
    ) -> bool {
        let space = view.space;
        let Some(walked) = self.state.spaces.get_mut(&space) else {
            return false;
        };
        let stale = walked.tables.stale(mem, written);
        let regions_changed = changed_ranges(&walked.regions, &view.regions);
        walked.regions.clone_from(&view.regions);
        let total = if space == KERNEL_SPACE {
            KERNEL_TOTAL
        } else {
            USER_TOTAL
        };
        self.region_list(view, total);
        let mut budget = (self.state.ram_end / PAGE).saturating_mul(4);
        for part in &stale {
            if !self.rewalk(mem, view, part, &mut budget) {
                self.state.forget(space);
                return false;
            }
        }
        for range in regions_changed {
            self.rejudge(view, range, &stale);
        }
        if space != KERNEL_SPACE {
            if stale.iter().any(|s| s.range().contains(&USER_TRAMPOLINE)) {
                self.trampoline(mem, view);
            }
            let roots = [view.cr3, kernel.cr3].map(|cr3| cr3 & !0xfff);
            if roots.iter().any(|root| written.contains(root)) {
                self.kernel_half(mem, view, kernel);
            }
        }
        true
    }

    /// Walks `part` of `view.space` again: forgets its leaves and the tables below it, and
    /// judges and remembers what is there now. `false` once the leaves found exceed `budget`.
    fn rewalk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        view: &SpaceSnapshot,
        part: &Stale,
        budget: &mut u64,
    ) -> bool {
        let space = view.space;
        for gone in self.take_leaves(space, part.range()) {
            self.untrack_judged(space, &gone);
        }
        let mut walk = leaves_from(mem, part.root, part.range()).recording_tables();
        for leaf in walk.by_ref() {
            match leaf {
                Ok(leaf) => {
                    let Some(left) = budget.checked_sub(1) else {
                        return false;
                    };
                    *budget = left;
                    self.judge(view, &leaf);
                }
                Err(e) => self.report(space, Rule::Walk, None, None, e.to_string()),
            }
        }
        // The root was entered before, and its place judged then.
        let below = walk.tables().get(1..).unwrap_or_default();
        self.tables_provenance(space, below);
        if let Some(walked) = self.state.spaces.get_mut(&space) {
            walked
                .tables
                .forget_below(part.root.start.level, part.range);
            walked.tables.enter(mem, walk.tables(), true);
        }
        true
    }

    /// Judges again the leaves of `view.space` in `range`, whose region changed, but for those
    /// in the spans just walked again (`walked`: judged against the new regions already).
    fn rejudge(&mut self, view: &SpaceSnapshot, range: RangeInclusive<u64>, walked: &[Stale]) {
        let space = view.space;
        let fresh = |va: u64| {
            let after = walked.partition_point(|s| s.range.1 < va);
            walked.get(after).is_some_and(|s| s.range().contains(&va))
        };
        let old = self.take_leaves(space, range);
        for mapped in old {
            if fresh(mapped.leaf.va) {
                self.restore(space, mapped);
                continue;
            }
            self.untrack_judged(space, &mapped);
            self.judge(view, &mapped.leaf);
        }
    }

    /// Puts back a leaf [`Self::take_leaves`] took (its frames still counted).
    fn restore(&mut self, space: u32, mapped: Mapped) {
        if let Some(walked) = self.state.spaces.get_mut(&space) {
            walked.leaves.insert(mapped.leaf.va, mapped);
        }
    }

    /// Removes and returns the leaves of `space` that overlap `range`.
    fn take_leaves(&mut self, space: u32, range: RangeInclusive<u64>) -> Vec<Mapped> {
        let Some(walked) = self.state.spaces.get_mut(&space) else {
            return Vec::new();
        };
        let (first, last) = (*range.start(), *range.end());
        // A huge leaf that starts below the range may reach into it.
        let below = walked.leaves.range(..first).next_back();
        let straddling = below
            .filter(|(_, m)| m.leaf.va.saturating_add(m.leaf.size - 1) >= first)
            .map(|(&va, _)| va);
        let inside: Vec<u64> = walked
            .leaves
            .range(first..=last)
            .map(|(&va, _)| va)
            .collect();
        straddling
            .into_iter()
            .chain(inside)
            .filter_map(|va| walked.leaves.remove(&va))
            .collect()
    }

    /// Stops counting `mapped`'s frames, which the sharing rules then look at again.
    fn untrack_judged(&mut self, space: u32, mapped: &Mapped) {
        if mapped.tracked {
            self.affected
                .extend(frames_of(&mapped.leaf, self.state.ram_end));
        }
        self.state.untrack(space, mapped);
    }

    /// Judges `leaf` of `view.space` by itself and against its region, remembers it, and counts
    /// its frames.
    fn judge(&mut self, view: &SpaceSnapshot, leaf: &Leaf) {
        if view.space == KERNEL_SPACE {
            self.kernel_leaf(view, leaf);
        } else {
            self.user_leaf(view, leaf);
        }
    }
}
