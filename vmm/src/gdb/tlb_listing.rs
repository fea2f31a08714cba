//! `monitor tlb`: the translations the TLB may hold while the guest is stopped, from the flush
//! trace replayed against the TLB model (the same replay the coherence checker runs).
#![forbid(unsafe_code)]

use crate::trace;
use mm_checker::coherence::{Cached, Coherence};
use std::fmt::Write;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

/// Translations listed at most; the rest are counted.
const MAX_LISTED: usize = 64;

/// The replay so far (`None` before the first drained event), plus the events still in the
/// guest's trace buffer, which the run loop has not drained yet.
pub fn current(mem: &GuestMemoryMmap, replayed: Option<&Coherence>) -> Result<Coherence, String> {
    let ram = GuestMemoryBackend::last_addr(mem).0.saturating_add(1);
    let mut tlb = replayed.cloned().unwrap_or_else(|| Coherence::new(ram));
    let pending =
        trace::peek(mem).map_err(|e| format!("cannot read the guest's flush trace: {e}"))?;
    tlb.apply_all(&pending).map_err(|e| e.to_string())?;
    Ok(tlb)
}

fn size_name(size: u64) -> &'static str {
    match size {
        0x1000 => "4K",
        0x20_0000 => "2M",
        _ => "1G",
    }
}

fn line(out: &mut String, cached: &Cached) {
    let t = &cached.translation;
    let p = &t.perms;
    let perms = format!(
        "{}{}{}",
        if p.user { "u" } else { "s" },
        if p.writable { "w" } else { "-" },
        if p.no_execute { "-" } else { "x" }
    );
    let state = cached
        .stale_since
        .map_or(String::new(), |n| format!("  stale since trace event #{n}"));
    let _ = writeln!(
        out,
        "  {:#x} {} -> frame {:#x} {perms} pte {:#x}{state}",
        t.page,
        size_name(t.size),
        t.frame,
        cached.pte
    );
}

/// The listing for `space` (named `name`) with page tables at `directory`.
pub fn describe(name: &str, directory: u64, tlb: &Coherence) -> String {
    let mut out = String::new();
    if tlb.active() != Some(directory) {
        let _ = writeln!(
            out,
            "{name}: directory {directory:#x} is not active, so the TLB holds none of its \
             translations (no PCID: a CR3 load drops them all)"
        );
        return out;
    }
    let cached = tlb.cached(directory);
    let stale = cached.iter().filter(|c| c.stale_since.is_some()).count();
    let _ = writeln!(
        out,
        "{name}: directory {directory:#x} is active; {} user translation(s) may be cached, {stale} \
         of them stale (after {} trace events)",
        cached.len(),
        tlb.events_seen()
    );
    for c in cached.iter().take(MAX_LISTED) {
        line(&mut out, c);
    }
    if cached.len() > MAX_LISTED {
        let _ = writeln!(out, "  ... and {} more", cached.len() - MAX_LISTED);
    }
    out
}
