//! Where two region lists of one space differ in what a page is judged by: whether a region
//! holds it, that region's access, and its shared object. An incremental check judges again
//! only the pages there.
#![forbid(unsafe_code)]

use crate::finding::region_containing;
use shared_mm::abi::RegionRecord;
use std::ops::RangeInclusive;

/// The last address of `region` (a region of size 0 is taken as one byte: its list is judged
/// broken anyway).
fn last(region: &RegionRecord) -> u64 {
    region.base.saturating_add(region.size.max(1) - 1)
}

/// What judges a page at `va` in `regions`: whether a region holds it, and its access and
/// shared object.
fn judged_by(regions: &[RegionRecord], va: u64) -> Option<(u32, u64)> {
    region_containing(regions, va).map(|r| (r.access, r.object))
}

/// The address ranges, ascending and disjoint, where `old` and `new` judge pages differently.
/// The records both lists share at their start and at their end are passed over, so the work
/// is that of the records that differ (and a comparison of the others). Lists that are not
/// sorted and disjoint (which the region-list rules report) give a safe over-estimate, never a
/// panic.
pub fn changed_ranges(old: &[RegionRecord], new: &[RegionRecord]) -> Vec<RangeInclusive<u64>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let (old_rest, new_rest) = (&old[prefix..], &new[prefix..]);
    let suffix = old_rest
        .iter()
        .rev()
        .zip(new_rest.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let old_middle = &old_rest[..old_rest.len() - suffix];
    let new_middle = &new_rest[..new_rest.len() - suffix];
    if old_middle.is_empty() && new_middle.is_empty() {
        return Vec::new();
    }
    // Between the last shared record before and the first shared record after.
    let from = prefix
        .checked_sub(1)
        .and_then(|i| last(&old[i]).checked_add(1))
        .unwrap_or(0);
    let to = if suffix > 0 {
        old[old.len() - suffix].base.saturating_sub(1)
    } else {
        u64::MAX
    };
    let mut points: Vec<u64> = vec![from];
    for region in old_middle.iter().chain(new_middle) {
        points.push(region.base);
        points.extend(last(region).checked_add(1));
    }
    points.retain(|&p| (from..=to).contains(&p));
    points.sort_unstable();
    points.dedup();
    let mut changed: Vec<RangeInclusive<u64>> = Vec::new();
    for (i, &start) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(to, |&next| next - 1);
        let (old_page, new_page) = (judged_by(old, start), judged_by(new, start));
        if old_page == new_page {
            continue;
        }
        match changed.last_mut() {
            Some(range) if range.end().checked_add(1) == Some(start) => {
                *range = *range.start()..=end;
            }
            _ => changed.push(start..=end),
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::access_bits::{READ, USER, WRITE};

    fn region(base: u64, size: u64, access: u32) -> RegionRecord {
        RegionRecord {
            base,
            size,
            access,
            backed: 1,
            object: 0,
            name: RegionRecord::name_field("anon"),
        }
    }

    const RW: u32 = USER | READ | WRITE;
    const RO: u32 = USER | READ;

    #[test]
    fn a_protect_that_splits_a_region_changes_only_the_protected_part() {
        let old = [region(0x1000, 0x1000, RW), region(0x10_0000, 0x10_0000, RW)];
        let new = [
            region(0x1000, 0x1000, RW),
            region(0x10_0000, 0x8000, RW),
            region(0x10_8000, 0x1000, RO),
            region(0x10_9000, 0xf7000, RW),
        ];
        assert_eq!(changed_ranges(&old, &new), [0x10_8000..=0x10_8fff]);
        assert!(changed_ranges(&new, &new).is_empty());
    }

    #[test]
    fn regions_that_come_and_go_change_their_whole_range() {
        let one = [region(0x4000, 0x2000, RW)];
        assert_eq!(changed_ranges(&[], &one), [0x4000..=0x5fff]);
        assert_eq!(changed_ranges(&one, &[]), [0x4000..=0x5fff]);
        let moved = [region(0x5000, 0x2000, RW)];
        assert_eq!(
            changed_ranges(&one, &moved),
            [0x4000..=0x4fff, 0x6000..=0x6fff]
        );
        let shared = [RegionRecord {
            object: 3,
            ..one[0]
        }];
        assert_eq!(changed_ranges(&one, &shared), [0x4000..=0x5fff]);
    }

    #[test]
    fn a_region_at_the_top_of_the_address_space_does_not_overflow() {
        let top = [region(u64::MAX - 0xfff, 0x1000, RW)];
        assert_eq!(changed_ranges(&[], &top), [u64::MAX - 0xfff..=u64::MAX]);
        // Unsorted, overlapping, empty: still bounded and no panic.
        let broken = [region(0x9000, 0, RW), region(0x2000, 0x8000, RO), top[0]];
        assert!(!changed_ranges(&top, &broken).is_empty());
    }
}
