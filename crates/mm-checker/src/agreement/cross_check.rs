//! A full walk after incremental checks, and what it says of them: the leaves the incremental
//! checks kept must be those the walk finds, and every rule they saw broken the walk must see
//! broken too. A difference is an `incremental-check-agrees` finding (a checker bug, or tables
//! changed behind the backend's record of what the guest wrote).

use super::Agreement;
use crate::finding::Finding;
use crate::rule::Rule;
use mm_driver::driver::SpaceSnapshot;
use std::collections::BTreeSet;
use vm_memory::GuestMemory;
use x86_paging::page_walk::Leaf;

impl Agreement {
    /// Walks the kernel and every space whole, each forgotten first, with the reference counts
    /// the last check had: those of `views` (this check's snapshots) and the others as
    /// their last snapshot showed them (nothing the guest did since touched their regions or
    /// tables, or they would have been snapshotted). Returns the findings of that walk, then one
    /// for each space whose leaves, as the incremental checks kept them, differ from the
    /// walk's, and one for each rule the incremental check (`incremental`: its findings) saw
    /// broken and the walk did not.
    pub fn cross_check<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        kernel: &SpaceSnapshot,
        views: &[SpaceSnapshot],
        incremental: &[Finding],
    ) -> Vec<Finding> {
        let mut views = views.to_vec();
        let others: Vec<u32> = self
            .spaces()
            .filter(|&s| s != kernel.space && views.iter().all(|v| v.space != s))
            .collect();
        views.extend(others.into_iter().filter_map(|s| self.last_view(s)));
        let all: Vec<&SpaceSnapshot> = std::iter::once(kernel).chain(&views).collect();
        let kept: Vec<(u32, Vec<(Leaf, u64)>)> = all
            .iter()
            .map(|v| (v.space, self.leaves_of(v.space)))
            .collect();
        for view in &all {
            self.forget(view.space);
        }
        let affected = self.refs_changed.iter().copied().collect();
        let refs = self.last_refs.clone();
        let mut check = self.check_with(&refs, affected);
        check.kernel(mem, kernel);
        for view in &views {
            check.space(mem, view, kernel);
        }
        let mut found = check.finish();
        let broken: BTreeSet<Rule> = found.iter().map(|f| f.rule).collect();
        for (space, before) in kept {
            let after = self.leaves_of(space);
            found.extend(leaves_differ(space, &before, &after));
        }
        let missed = incremental.iter().filter(|f| !broken.contains(&f.rule));
        found.extend(missed.map(|f| Finding {
            detail: format!(
                "the incremental check found {} ({}), a full walk does not",
                f.rule, f.detail
            ),
            rule: Rule::IncrementalCheck,
            events: Vec::new(),
            ..f.clone()
        }));
        found
    }

    /// The leaves the checks of `space` know, with the shared object each was judged in.
    fn leaves_of(&self, space: u32) -> Vec<(Leaf, u64)> {
        let walked = self.spaces.get(&space).map(|w| w.leaves.values());
        walked
            .into_iter()
            .flatten()
            .map(|m| (m.leaf, m.object))
            .collect()
    }

    /// `space` as its last check saw it: its directory and regions.
    fn last_view(&self, space: u32) -> Option<SpaceSnapshot> {
        let walked = self.spaces.get(&space)?;
        Some(SpaceSnapshot {
            space,
            cr3: walked.cr3,
            reported_count: walked.regions.len() as u64,
            regions: walked.regions.clone(),
        })
    }
}

/// A finding if `before` (the leaves of `space` the incremental checks kept) and `after` (a
/// full walk's) differ, naming the first address where they do.
fn leaves_differ(space: u32, before: &[(Leaf, u64)], after: &[(Leaf, u64)]) -> Option<Finding> {
    let first = before.iter().zip(after).position(|(a, b)| a != b);
    let at = first.unwrap_or(before.len().min(after.len()));
    if first.is_none() && before.len() == after.len() {
        return None;
    }
    let leaf = before.get(at).or(after.get(at)).map(|(l, _)| *l);
    let show = |side: &[(Leaf, u64)]| match side.get(at) {
        Some((l, object)) => format!(
            "{:#x} -> {:#x} ({:?}, object {object})",
            l.va, l.phys, l.perms
        ),
        None => "nothing".to_string(),
    };
    let detail = format!(
        "the incremental checks keep {} leaves, a full walk finds {}; first difference: kept {}, \
         walked {}",
        before.len(),
        after.len(),
        show(before),
        show(after)
    );
    Some(Finding {
        space,
        rule: Rule::IncrementalCheck,
        va: leaf.map(|l| l.va),
        pte: leaf.map(|l| l.pte.raw()),
        region: None,
        detail,
        events: Vec::new(),
    })
}
