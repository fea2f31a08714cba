//! Which present user pages are shared: pages of shared memory (`map-shared`), and private
//! pages whose frame a fork left copy-on-write (held by more than one object). Rows split
//! where that changes, so every view can mark them.
#![forbid(unsafe_code)]

use super::{Owner, Row};
use mm_checker::Refs;
use shared_mm::abi::access_bits::SHARED;
use shared_mm::abi::RegionRecord;
use std::collections::HashMap;
use x86_paging::page_walk::Leaf;

const PAGE: u64 = 4096;

/// How a row's pages are shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// Private memory that only this space holds (or no region: the trampoline, a hole).
    #[default]
    Private,
    /// Private memory whose frames another space holds too, until a write copies them.
    CopyOnWrite,
    /// Shared memory: every space that maps its object sees the same frames.
    Shared,
}

impl Sharing {
    /// `private`, `cow` or `shared`, as the views write it.
    pub fn name(self) -> &'static str {
        match self {
            Sharing::Private => "private",
            Sharing::CopyOnWrite => "cow",
            Sharing::Shared => "shared",
        }
    }
}

/// `rows` of a user space, split and marked by sharing: `leaves` give each page's frame, `refs`
/// the frames held more than once.
pub fn mark(rows: Vec<Row>, leaves: &[Leaf], regions: &[RegionRecord], refs: &Refs) -> Vec<Row> {
    let cow: HashMap<u64, bool> = leaves
        .iter()
        .filter(|l| l.size == PAGE)
        .map(|l| (l.va, refs.get(&l.phys).is_some_and(|&n| n > 1)))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Owner::Region(i) = row.owner else {
            out.push(row);
            continue;
        };
        if regions[i].access & SHARED != 0 {
            out.push(Row {
                sharing: Sharing::Shared,
                ..row
            });
            continue;
        }
        split_by_cow(row, &cow, &mut out);
    }
    out
}

/// Splits a private row where its pages change between copy-on-write and not.
fn split_by_cow(row: Row, cow: &HashMap<u64, bool>, out: &mut Vec<Row>) {
    let kind = |va: u64| {
        if cow.get(&va).copied().unwrap_or(false) {
            Sharing::CopyOnWrite
        } else {
            Sharing::Private
        }
    };
    let end = row.run.range_base + row.run.size;
    let mut start = row.run.range_base;
    while start < end {
        let sharing = kind(start);
        let mut stop = start + PAGE;
        while stop < end && kind(stop) == sharing {
            stop += PAGE;
        }
        let mut piece = row;
        piece.run.range_base = start;
        piece.run.size = stop - start;
        piece.sharing = sharing;
        out.push(piece);
        start = stop;
    }
}
