//! Placement from first principles: a space's holes by a naive scan, the valid aligned starts in
//! them, and the documented `map-anywhere` policy (best fit), which the model predicts exactly.
#![forbid(unsafe_code)]

use super::space::{SpaceModel, PAGE};
use shared_mm::abi::{USER_SPACE_BASE, USER_SPACE_END};

/// The holes of `space` in address order, each as `(start, end)` with `end` exclusive.
pub fn holes(space: &SpaceModel) -> impl Iterator<Item = (u64, u64)> + '_ {
    let ends = space.regions.iter().map(|(&base, r)| (base, base + r.size));
    let mut after = USER_SPACE_BASE;
    ends.chain(std::iter::once((USER_SPACE_END, USER_SPACE_END)))
        .filter_map(move |(base, end)| {
            let hole = (after < base).then_some((after, base));
            after = end;
            hole
        })
}

/// The valid `align`-aligned starts of a `size`-byte placement in the hole `[start, end)`: the
/// first, and how many there are (one every `align` bytes); `None` if there is none.
pub fn starts_in(hole: (u64, u64), size: u64, align: u64) -> Option<(u64, u64)> {
    let (start, end) = hole;
    let first = start.checked_next_multiple_of(align)?;
    let last = end.checked_sub(size)?;
    (first <= last).then(|| (first, (last - first) / align + 1))
}

/// Whether the space has an `align`-aligned hole of `size` bytes.
pub fn has_aligned_hole(space: &SpaceModel, size: u64, align: u64) -> bool {
    holes(space).any(|hole| starts_in(hole, size, align).is_some())
}

/// Where `map-anywhere` must place `size` bytes at `align` (both valid), by the policy
/// `shared-mm/README.md` documents: the smallest hole of at least `size + align - 4096` bytes
/// (any such hole holds an aligned start), else the smallest hole that holds one; the lowest
/// among holes of equal size, and the lowest aligned start in the hole. `None`: no hole fits.
pub fn best_fit(space: &SpaceModel, size: u64, align: u64) -> Option<u64> {
    let roomy = size.checked_add(align - PAGE);
    let fitting = holes(space).filter_map(|hole| {
        let (first, _) = starts_in(hole, size, align)?;
        let len = hole.1 - hole.0;
        let is_roomy = roomy.is_some_and(|roomy| len >= roomy);
        // Roomy holes first, then by size, then by address.
        Some(((!is_roomy, len, hole.0), first))
    });
    fitting.min().map(|(_, first)| first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelRegion;

    /// A space with regions leaving the holes `[0x1000, 0x3000)` (2 pages), `[0x4000, 0x5000)`
    /// (1 page) and `[0x7000, 0xc000)` (5 pages) at the bottom, and one huge hole above.
    fn space() -> SpaceModel {
        let mut s = SpaceModel::default();
        for (base, size) in [(0x3000, 0x1000), (0x5000, 0x2000), (0xc000, 0x1_0000_0000)] {
            let region = ModelRegion {
                size,
                access: 0xb,
                object: None,
            };
            s.regions.insert(base, region);
        }
        s
    }

    #[test]
    fn holes_are_the_gaps_between_regions_and_the_ends() {
        let holes: Vec<_> = holes(&space()).collect();
        assert_eq!(
            holes,
            [
                (0x1000, 0x3000),
                (0x4000, 0x5000),
                (0x7000, 0xc000),
                (0x1_0000_c000, USER_SPACE_END)
            ]
        );
        assert_eq!(
            starts_in((0x7000, 0xc000), 0x2000, 0x2000),
            Some((0x8000, 2))
        );
        assert_eq!(starts_in((0x7000, 0x9000), 0x2000, 0x2000), None);
    }

    #[test]
    fn best_fit_takes_the_smallest_hole_that_fits_not_the_lowest() {
        let s = space();
        assert_eq!(
            best_fit(&s, 0x1000, PAGE),
            Some(0x4000),
            "the one-page hole"
        );
        assert_eq!(
            best_fit(&s, 0x2000, PAGE),
            Some(0x1000),
            "two pages: lowest"
        );
        assert_eq!(best_fit(&s, 0x3000, PAGE), Some(0x7000));
        // 8 KiB at 8 KiB: the 2-page hole holds no aligned start; the 5-page one is the
        // smallest roomy hole (at least 12 KiB), at its first aligned start.
        assert_eq!(best_fit(&s, 0x2000, 0x2000), Some(0x8000));
        // 4 KiB at 8 KiB: the one-page hole fits (0x4000 is aligned) and is the smallest, but
        // a roomy hole (at least 8 KiB) comes first: the 2-page one, at 0x2000.
        assert_eq!(best_fit(&s, 0x1000, 0x2000), Some(0x2000));
        // No hole of 1 GiB below; the huge hole above.
        assert_eq!(best_fit(&s, 1 << 30, 1 << 30), Some(0x1_4000_0000));
        assert_eq!(best_fit(&s, USER_SPACE_END, PAGE), None);
    }
}
