//! Model-based property tests: long random operation sequences against a naive reference.
//!
//! The reference is a `BTreeMap` of `base -> (last, id)` with brute-force scans. After
//! every step the tree must pass `check_invariants` and hold exactly the model's regions,
//! and every answer (error kind, placed address, lookups) must match the model.
//! `check_invariants` also recomputes every gap-index summary, height and balance, so each
//! step checks the augmented index as well.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use shared_mm::address::{VirtualAddress, VirtualRange, PAGE_SIZE};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, RegionTreeError, SplitMix64};

const GIB: u64 = 1 << 30;

/// Total ranges, from tiny (NoSpace is common) to ending at 2^64.
fn total_range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        Just((0x10_0000, 24 * PAGE_SIZE)),
        Just((0, 48 * PAGE_SIZE)),
        Just((0u64.wrapping_sub(64 * PAGE_SIZE), 64 * PAGE_SIZE)),
        Just((GIB - 128 * PAGE_SIZE, 512 * PAGE_SIZE)),
    ]
}

/// Ops that mostly place small regions, so the gap index grows deep enough for its
/// rotations and summaries to be exercised on every path (checked after every step).
fn filling_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..=3, alignment()).prop_map(|(pages, alignment)| Op::Anywhere { size: pages * PAGE_SIZE, alignment }),
        3 => ((-4i64..520, Just(0u64)), 1u64..=2).prop_map(|(offset, pages)| Op::Specifically { offset, size: pages * PAGE_SIZE }),
        3 => (1u64..=3, alignment(), any::<u64>())
            .prop_map(|(pages, alignment, seed)| Op::Randomized { size: pages * PAGE_SIZE, alignment, seed }),
        2 => any::<usize>().prop_map(|pick| Op::RemoveExisting { pick }),
    ]
}

/// Sizes: mostly a few pages, sometimes zero, misaligned or far too large.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (1u64..=6).prop_map(|pages| pages * PAGE_SIZE),
        2 => (7u64..=40).prop_map(|pages| pages * PAGE_SIZE),
        1 => Just(0u64),
        1 => Just(PAGE_SIZE / 2),
        1 => Just(!(PAGE_SIZE - 1)),
    ]
}

fn alignment() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => Just(PAGE_SIZE),
        6 => (13u32..=18).prop_map(|shift| 1u64 << shift),
        1 => Just(GIB),
        1 => Just(1u64 << 63),
        1 => prop_oneof![Just(0u64), Just(2048), Just(3 * PAGE_SIZE), Just(PAGE_SIZE + 1)],
    ]
}

/// Offsets from the total base, as a signed page count plus a misalignment.
fn offset() -> impl Strategy<Value = (i64, u64)> {
    let pages = prop_oneof![6 => -4i64..72, 1 => -4i64..520];
    (pages, prop_oneof![8 => Just(0u64), 1 => Just(0x800u64)])
}

#[derive(Clone, Debug)]
enum Op {
    Anywhere {
        size: u64,
        alignment: u64,
    },
    Specifically {
        offset: (i64, u64),
        size: u64,
    },
    Randomized {
        size: u64,
        alignment: u64,
        seed: u64,
    },
    RemoveExisting {
        pick: usize,
    },
    RemoveAt {
        offset: (i64, u64),
    },
    Find {
        offset: (i64, u64),
    },
    Intersecting {
        offset: (i64, u64),
        pages: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size(), alignment()).prop_map(|(size, alignment)| Op::Anywhere { size, alignment }),
        4 => (offset(), size()).prop_map(|(offset, size)| Op::Specifically { offset, size }),
        3 => (size(), alignment(), any::<u64>())
            .prop_map(|(size, alignment, seed)| Op::Randomized { size, alignment, seed }),
        4 => any::<usize>().prop_map(|pick| Op::RemoveExisting { pick }),
        1 => offset().prop_map(|offset| Op::RemoveAt { offset }),
        2 => offset().prop_map(|offset| Op::Find { offset }),
        2 => (offset(), 1u64..80).prop_map(|(offset, pages)| Op::Intersecting { offset, pages }),
    ]
}

/// The reference: placed regions as `base -> (last, id)`, searched naively.
struct Model {
    base: u64,
    last: u64,
    regions: BTreeMap<u64, (u64, u32)>,
}

impl Model {
    fn overlaps(&self, base: u64, last: u64) -> bool {
        self.regions
            .iter()
            .any(|(&b, &(l, _))| b <= last && base <= l)
    }

    fn is_free(&self, base: u64, last: u64) -> bool {
        self.base <= base && last <= self.last && !self.overlaps(base, last)
    }

    /// Free holes `(base, last)` in address order.
    fn holes(&self) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut next_free = Some(self.base);
        for (&b, &(l, _)) in &self.regions {
            if let Some(free) = next_free.filter(|&free| free < b) {
                holes.push((free, b - 1));
            }
            next_free = l.checked_add(1);
        }
        if let Some(free) = next_free.filter(|&free| free <= self.last) {
            holes.push((free, self.last));
        }
        holes
    }

    /// Every valid aligned start, by brute force over the whole total range.
    fn valid_starts(&self, size: u64, alignment: u64) -> Vec<u64> {
        let mut starts = Vec::new();
        let Some(mut start) = self.base.checked_next_multiple_of(alignment) else {
            return starts;
        };
        while let Some(last) = start
            .checked_add(size - 1)
            .filter(|&last| last <= self.last)
        {
            if self.is_free(start, last) {
                starts.push(start);
            }
            match start.checked_add(alignment) {
                Some(next) => start = next,
                None => break,
            }
        }
        starts
    }

    fn check_request(size: u64, alignment: u64) -> Result<(), RegionTreeError> {
        if size == 0 {
            Err(RegionTreeError::ZeroSize)
        } else if !size.is_multiple_of(PAGE_SIZE) {
            Err(RegionTreeError::MisalignedSize)
        } else if !alignment.is_power_of_two() || alignment < PAGE_SIZE {
            Err(RegionTreeError::BadAlignment)
        } else {
            Ok(())
        }
    }

    /// The documented policy: the smallest (then lowest) hole of `size + alignment -
    /// PAGE_SIZE` bytes; failing that, the smallest (then lowest) hole that fits an
    /// aligned placement; at its lowest aligned address.
    fn anywhere(&self, size: u64, alignment: u64) -> Result<u64, RegionTreeError> {
        Self::check_request(size, alignment)?;
        let fit = |&(base, last): &(u64, u64)| {
            let start = base.checked_next_multiple_of(alignment)?;
            (start.checked_add(size - 1)? <= last).then_some(((last - base, base), start))
        };
        let roomy = size.checked_add(alignment - PAGE_SIZE);
        let holes = self.holes();
        let best_roomy = holes
            .iter()
            .filter(|&&(base, last)| roomy.is_some_and(|roomy| last - base >= roomy - 1))
            .filter_map(fit)
            .min();
        let best = best_roomy.or_else(|| holes.iter().filter_map(fit).min());
        let start = best
            .map(|(_, start)| start)
            .ok_or(RegionTreeError::NoSpace)?;
        assert!(self.valid_starts(size, alignment).contains(&start));
        Ok(start)
    }

    fn specifically(&self, base: u64, size: u64) -> Result<(), RegionTreeError> {
        if size == 0 {
            return Err(RegionTreeError::ZeroSize);
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(RegionTreeError::MisalignedSize);
        }
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(RegionTreeError::MisalignedBase);
        }
        let last = base
            .checked_add(size - 1)
            .ok_or(RegionTreeError::Overflow)?;
        if base < self.base || last > self.last {
            return Err(RegionTreeError::OutOfRange);
        }
        if self.overlaps(base, last) {
            return Err(RegionTreeError::Overlap);
        }
        Ok(())
    }

    fn containing(&self, addr: u64) -> Option<u32> {
        self.regions
            .iter()
            .find(|(&b, &(l, _))| b <= addr && addr <= l)
            .map(|(_, &(_, id))| id)
    }

    fn intersecting(&self, base: u64, last: u64) -> Vec<u32> {
        self.regions
            .iter()
            .filter(|(&b, &(l, _))| b <= last && base <= l)
            .map(|(_, &(_, id))| id)
            .collect()
    }
}

fn address(model: &Model, (pages, misalignment): (i64, u64)) -> u64 {
    model
        .base
        .wrapping_add_signed(pages.wrapping_mul(PAGE_SIZE as i64))
        + misalignment
}

fn new_region(id: u32) -> Box<Region<u32>> {
    Box::new(Region::new("r", Access::READ, Some(id)))
}

fn ids<'a>(regions: impl Iterator<Item = &'a Region<u32>>) -> Vec<u32> {
    regions.map(|r| *r.backing().unwrap()).collect()
}

/// Records a placement answer in the model after checking it against `expected`.
fn record(
    model: &mut Model,
    id: u32,
    got: Result<VirtualRange, shared_mm::region_tree::PlaceError<u32>>,
    expected: Result<u64, RegionTreeError>,
    size: u64,
) -> Result<(), TestCaseError> {
    match got {
        Ok(range) => {
            prop_assert_eq!(Ok(range.base().get()), expected);
            prop_assert_eq!(range.size(), size);
            model
                .regions
                .insert(range.base().get(), (range.last().get(), id));
        }
        Err(err) => {
            prop_assert_eq!(Err(err.kind), expected);
            prop_assert_eq!(err.region.backing(), Some(&id));
        }
    }
    Ok(())
}

fn run(total: (u64, u64), ops: Vec<Op>) -> Result<(), TestCaseError> {
    let total = VirtualRange::new(VirtualAddress::new(total.0), total.1).unwrap();
    let mut tree: RegionTree<u32> = RegionTree::new(total);
    let mut model = Model {
        base: total.base().get(),
        last: total.last().get(),
        regions: BTreeMap::new(),
    };
    for (step, op) in ops.into_iter().enumerate() {
        let id = step as u32;
        match op {
            Op::Anywhere { size, alignment } => {
                let expected = model.anywhere(size, alignment);
                let got = tree.place_anywhere(new_region(id), size, alignment);
                record(&mut model, id, got, expected, size)?;
            }
            Op::Specifically { offset, size } => {
                let base = address(&model, offset);
                let expected = model.specifically(base, size).map(|()| base);
                let got = tree.place_specifically(new_region(id), VirtualAddress::new(base), size);
                record(&mut model, id, got, expected, size)?;
            }
            Op::Randomized {
                size,
                alignment,
                seed,
            } => {
                let mut rng = SplitMix64::new(seed);
                let got = tree.place_randomized(new_region(id), size, alignment, &mut rng);
                // Any valid position will do; success iff one exists.
                let expected = Model::check_request(size, alignment).and_then(|()| {
                    let valid = model.valid_starts(size, alignment);
                    match &got {
                        Ok(range) if valid.contains(&range.base().get()) => Ok(range.base().get()),
                        _ if valid.is_empty() => Err(RegionTreeError::NoSpace),
                        _ => Ok(valid[0]),
                    }
                });
                record(&mut model, id, got, expected, size)?;
            }
            Op::RemoveExisting { pick } => {
                if !model.regions.is_empty() {
                    let base = *model
                        .regions
                        .keys()
                        .nth(pick % model.regions.len())
                        .unwrap();
                    let (_, expected_id) = model.regions.remove(&base).unwrap();
                    let removed = tree.remove(VirtualAddress::new(base));
                    prop_assert_eq!(removed.map(|r| *r.backing().unwrap()), Some(expected_id));
                }
            }
            Op::RemoveAt { offset } => {
                let base = address(&model, offset);
                let expected = model.regions.remove(&base).map(|(_, id)| id);
                let removed = tree.remove(VirtualAddress::new(base));
                prop_assert_eq!(removed.map(|r| *r.backing().unwrap()), expected);
            }
            Op::Find { offset } => {
                let addr = address(&model, offset);
                let found = tree.find_region_containing(VirtualAddress::new(addr));
                prop_assert_eq!(found.map(|r| *r.backing().unwrap()), model.containing(addr));
            }
            Op::Intersecting { offset, pages } => {
                let base = address(&model, offset) & !(PAGE_SIZE - 1);
                if let Ok(range) = VirtualRange::new(VirtualAddress::new(base), pages * PAGE_SIZE) {
                    let found = ids(tree.find_regions_intersecting(range));
                    let expected = model.intersecting(base, range.last().get());
                    prop_assert_eq!(found, expected);
                }
            }
        }
        if let Err(violation) = tree.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step}: {violation}")));
        }
        prop_assert_eq!(tree.len(), model.regions.len());
        let in_tree: Vec<_> = tree
            .iter()
            .map(|r| {
                (
                    r.range().unwrap().base().get(),
                    r.range().unwrap().last().get(),
                    *r.backing().unwrap(),
                )
            })
            .collect();
        let in_model: Vec<_> = model
            .regions
            .iter()
            .map(|(&b, &(l, id))| (b, l, id))
            .collect();
        prop_assert_eq!(in_tree, in_model, "step {}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn region_tree_matches_model(total in total_range(), ops in prop::collection::vec(op(), 100..400)) {
        run(total, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn region_tree_matches_model_with_many_holes(ops in prop::collection::vec(filling_op(), 200..400)) {
        run((GIB - 128 * PAGE_SIZE, 512 * PAGE_SIZE), ops)?;
    }
}
