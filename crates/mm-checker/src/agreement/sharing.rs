//! The sharing rules, frame by frame, over every space's mappings: a frame is mapped no more
//! often than its references allow, a copy-on-write frame is never writable through private
//! memory, and a page of a shared object maps the same frame in every space. A check holds
//! each frame it saw gain or lose a mapper, or change reference count, to them at its end.

use super::{Check, Mapped, User};
use crate::finding::{region_containing, space_name};
use crate::rule::Rule;
use std::collections::BTreeSet;

impl Check<'_> {
    /// The sharing rules, for every affected frame, in address order.
    pub(super) fn judge_affected(&mut self) {
        let mut frames: Vec<u64> = std::mem::take(&mut self.affected).into_iter().collect();
        frames.sort_unstable();
        let mut pages_differ = BTreeSet::new();
        for frame in frames {
            self.sharing_rules(frame, &mut pages_differ);
        }
    }

    /// The rules for `frame`; a shared page found on two frames is reported once a check
    /// (`pages_differ`: those reported).
    fn sharing_rules(&mut self, frame: u64, pages_differ: &mut BTreeSet<(u64, u64)>) {
        let Some(users) = self.state.frame_users.get(&frame) else {
            return;
        };
        let refs = self.refs.get(&frame).copied().unwrap_or(1) as usize;
        let alone = |u: &User| {
            u.object == 0
                || self
                    .state
                    .shared_pages
                    .get(&(u.object, u.va))
                    .is_none_or(|m| m.len() < 2)
        };
        // Most frames: one mapper, one reference.
        if refs == 1 && users.len() == 1 && alone(&users[0]) {
            return;
        }
        let mut shared: Vec<(u64, u64)> = users
            .iter()
            .filter(|u| u.object != 0)
            .map(|u| (u.object, u.va))
            .collect();
        shared.sort_unstable();
        shared.dedup();
        let private = users.iter().filter(|u| u.object == 0).count();
        let (first, last) = (users[0], users[users.len() - 1]);
        let cow = users.iter().find(|u| u.object == 0 && u.writable);
        let cow = cow.filter(|_| refs > 1).copied();
        let differs = shared.iter().find_map(|key| {
            let mappers = self.state.shared_pages.get(key)?;
            let one = mappers.first()?.1;
            let other = mappers.iter().find(|&&(_, f)| f != one)?;
            Some((*key, one, *other))
        });
        if private + shared.len() > refs {
            let detail = format!(
                "frame {frame:#x} is mapped {} times ({private} private, {} shared) with \
                 {refs} reference(s); also by {} at {:#x}",
                private + shared.len(),
                shared.len(),
                space_name(first.space),
                first.va
            );
            self.report_user(last, Rule::FrameOverMapped, detail);
        }
        if let Some(user) = cow {
            let detail = format!(
                "frame {frame:#x} is copy-on-write ({refs} references) but mapped writable"
            );
            self.report_user(user, Rule::CowWritable, detail);
        }
        let differs = differs.filter(|(key, ..)| pages_differ.insert(*key));
        if let Some(((object, va), one, (space, other))) = differs {
            let detail = format!(
                "page of shared object {object} maps frame {other:#x}, but another space maps it \
                 to {one:#x}"
            );
            let user = User {
                space,
                va,
                object,
                writable: false,
            };
            self.report_user(user, Rule::SharedPageDiffers, detail);
        }
    }

    /// Reports `rule` broken at `user`'s page, with the leaf and region its space has there.
    fn report_user(&mut self, user: User, rule: Rule, detail: String) {
        let walked = self.state.spaces.get(&user.space);
        let leaf = walked.and_then(|w| {
            let (_, mapped): (_, &Mapped) = w.leaves.range(..=user.va).next_back()?;
            Some(mapped.leaf).filter(|l| user.va - l.va < l.size)
        });
        let region = walked.and_then(|w| region_containing(&w.regions, user.va).copied());
        self.report(user.space, rule, leaf.as_ref(), region.as_ref(), detail);
    }
}
