//! The flush trace's events as the replay names them: numbered from the guest's boot, one line
//! each, and the findings of the replay (TLB coherence, page-table lifetime) with the events
//! behind them.
#![forbid(unsafe_code)]

use crate::rule::Rule;
use shared_mm::trace::TraceEvent;

/// One event of the trace with its position in it (counted from the guest's boot).
pub type Numbered = (u64, TraceEvent);

/// One numbered event as a line: `#71 pte-write dir 0x52000 va 0x401000 level 3: 0x8000000000046007 -> 0x0`.
pub fn describe((number, event): &Numbered) -> String {
    let what = match *event {
        TraceEvent::PteWrite {
            directory,
            va,
            level,
            old,
            new,
        } => format!("pte-write dir {directory:#x} va {va:#x} level {level}: {old:#x} -> {new:#x}"),
        TraceEvent::Flush { va } => format!("flush va {va:#x}"),
        TraceEvent::Activate { directory } => format!("activate dir {directory:#x}"),
        TraceEvent::FrameFreed { frame } => format!("frame-freed {frame:#x}"),
        TraceEvent::FrameAllocated { frame, size } => {
            format!("frame-allocated {frame:#x} size {size:#x}")
        }
        TraceEvent::EnterUser => "enter-user".into(),
        TraceEvent::FlushAll => "flush-all".into(),
        TraceEvent::ShootdownRequest {
            directory,
            targets,
            scope,
        } => format!(
            "shootdown dir {directory:#x} to cpus {:#b} ({scope:?})",
            targets.bits()
        ),
        TraceEvent::ShootdownAck { sender } => format!("shootdown-ack to cpu {sender}"),
    };
    format!("#{number} {what}")
}

/// A broken coherence rule, with the events behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoherenceFinding {
    pub rule: Rule,
    /// The directory (PML4) whose translation it is.
    pub directory: u64,
    /// The page.
    pub va: u64,
    /// The PTE value of the possibly-cached translation.
    pub pte: u64,
    pub detail: String,
    /// The PTE write that left the translation cached, and the event that used or freed it.
    pub events: Vec<Numbered>,
}
