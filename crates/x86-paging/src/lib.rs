//! x86_64 paging as the host sees it, whichever backend runs the guest: the page walker and
//! the table builder over guest memory, the TLB and paging-structure caches with the rules of
//! what they may hold, and the cheap frame-keyed maps both use. The sim's TLB:
//! `docs/architecture.md`; the rules the checker judges by: `docs/checker.md`.
#![forbid(unsafe_code)]

pub mod frame_map;
pub mod page_walk;
pub mod tlb;
