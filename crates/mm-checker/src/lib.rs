//! The checker: the guest's MM judged from outside, on either backend. The agreement rules hold
//! the guest's exported region trees against the page tables the host walks itself through
//! guest memory (never the guest's own view); frame accounting and provenance hold its frame
//! reports against each other and against the memory map the host wrote at boot; the
//! flush-trace replay holds its PTE writes, flushes and frees against the TLB rules and the
//! page-table lifetime rule. Each broken rule becomes a [`Finding`] naming the space, address,
//! PTE, region and rule; [`Checked`] runs them all after every batch of any driver. The rules,
//! each with the bug class it catches and the seeded bug that shows it: `docs/checker.md`.
#![forbid(unsafe_code)]

mod accounting;
mod agreement;
mod checked;
pub mod coherence;
mod finding;
mod provenance;
mod region_diff;
mod rule;
pub mod table_lifetime;
pub mod trace_events;

pub use accounting::{Accounting, FrameReports};
pub use agreement::{Agreement, Check, Refs, FRAME_BUDGET_PER_RAM_PAGE, MAX_PER_RULE};
pub use checked::{as_finding, Checked, FULL_CHECK_EVERY};
pub use finding::{access_string, Finding};
pub use provenance::Provenance;
pub use rule::Rule;

use mm_driver::driver::SpaceSnapshot;
use vm_memory::GuestMemory;

/// Checks every invariant for the kernel and each user space, with `refs` the reference counts
/// of frames held more than once; empty means they all agree.
pub fn check<M: GuestMemory + ?Sized>(
    mem: &M,
    kernel: &SpaceSnapshot,
    spaces: &[SpaceSnapshot],
    refs: &Refs,
) -> Vec<Finding> {
    let mut state = Agreement::for_memory(mem);
    let mut check = state.check(refs);
    check.kernel(mem, kernel);
    for view in spaces {
        check.space(mem, view, kernel);
    }
    check.finish()
}
