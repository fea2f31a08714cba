//! A broken invariant, precisely located: the space, address, PTE, region and rule, with the
//! flush-trace events behind it; and how findings show spaces, regions and access masks.
#![forbid(unsafe_code)]

use crate::rule::Rule;
use crate::trace_events::Numbered;
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{RegionRecord, KERNEL_SPACE};
use std::fmt;

/// One broken invariant, precisely located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The address space (`KERNEL_SPACE` for the kernel).
    pub space: u32,
    pub rule: Rule,
    pub va: Option<u64>,
    /// The raw leaf PTE involved.
    pub pte: Option<u64>,
    /// The region involved.
    pub region: Option<RegionRecord>,
    pub detail: String,
    /// For flush-trace findings, the trace events behind it (numbered from boot).
    pub events: Vec<Numbered>,
}

pub(crate) fn space_name(space: u32) -> String {
    if space == KERNEL_SPACE {
        "kernel".into()
    } else {
        format!("space {space}")
    }
}

/// `u-rwx` style text for an access mask (`usrwx` for shared memory).
pub fn access_string(access: u32) -> String {
    let bit = |b, c| if access & b != 0 { c } else { '-' };
    [
        bit(USER, 'u'),
        bit(SHARED, 's'),
        bit(READ, 'r'),
        bit(WRITE, 'w'),
        bit(EXECUTE, 'x'),
    ]
    .iter()
    .collect()
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", space_name(self.space), self.rule)?;
        if let Some(va) = self.va {
            write!(f, " at {va:#x}")?;
        }
        if let Some(pte) = self.pte {
            write!(f, " pte {pte:#x}")?;
        }
        if let Some(r) = &self.region {
            write!(
                f,
                " region {:?} {:#x}+{:#x} {}",
                r.name_str(),
                r.base,
                r.size,
                access_string(r.access)
            )?;
        }
        write!(f, ": {}", self.detail)
    }
}

pub(crate) fn region_containing(regions: &[RegionRecord], va: u64) -> Option<&RegionRecord> {
    let i = regions.partition_point(|r| r.base <= va);
    regions[..i].last().filter(|r| va - r.base < r.size)
}
