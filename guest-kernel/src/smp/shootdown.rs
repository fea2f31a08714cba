//! TLB shootdowns between CPUs: what a sender posts for its targets, and what a target's IPI
//! handler runs. Each sender has one slot (it has one cross call in flight, and waits for it):
//! it writes its request there, then the cross call's release of `requested` publishes it to
//! the targets, which read it after their acquire. Atomics only: no lock in an IPI handler.
#![forbid(unsafe_code)]

use crate::agent;
use crate::arch::x86_64::{machine, percpu};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_mm::shootdown::{FlushScope, MAX_FLUSH_PAGES};
use guest_mm::{FlushRequest, PhysicalFrame};
use shared_mm::smp::MAX_CPUS;

/// One sender's latest request.
struct Slot {
    directory: AtomicU64,
    /// 0: pages, 1: all, 2: destroy.
    scope: AtomicU32,
    len: AtomicU32,
    pages: [AtomicU64; MAX_FLUSH_PAGES],
}

static SLOTS: [Slot; MAX_CPUS as usize] = [const {
    Slot {
        directory: AtomicU64::new(0),
        scope: AtomicU32::new(0),
        len: AtomicU32::new(0),
        pages: [const { AtomicU64::new(0) }; MAX_FLUSH_PAGES],
    }
}; MAX_CPUS as usize];

/// Posts `request` in this CPU's slot, for the targets of its next cross call.
pub fn post(request: &FlushRequest) {
    let slot = &SLOTS[percpu::current() as usize];
    slot.directory
        .store(request.directory().0, Ordering::Relaxed);
    let scope = match request.scope() {
        FlushScope::Pages(_) => 0,
        FlushScope::All => 1,
        FlushScope::Destroy => 2,
    };
    slot.scope.store(scope, Ordering::Relaxed);
    let pages = request.listed();
    for (to, &page) in slot.pages.iter().zip(pages) {
        to.store(page, Ordering::Relaxed);
    }
    slot.len.store(pages.len() as u32, Ordering::Relaxed);
}

/// The request `sender` posted (read after the cross call's acquire).
fn posted(sender: u32) -> Option<FlushRequest> {
    let slot = &SLOTS[sender as usize];
    let len = (slot.len.load(Ordering::Relaxed) as usize).min(MAX_FLUSH_PAGES);
    let mut pages = [0u64; MAX_FLUSH_PAGES];
    for (to, from) in pages.iter_mut().zip(&slot.pages[..len]) {
        *to = from.load(Ordering::Relaxed);
    }
    let scope = match slot.scope.load(Ordering::Relaxed) {
        0 => FlushScope::Pages(len as u32),
        1 => FlushScope::All,
        _ => FlushScope::Destroy,
    };
    let pages = if let FlushScope::Pages(_) = scope {
        &pages[..len]
    } else {
        &[]
    };
    let directory = PhysicalFrame(slot.directory.load(Ordering::Relaxed));
    FlushRequest::from_parts(directory, scope, pages)
}

/// Runs the shootdown `sender` posted on this CPU, `me`: what its IPI handler does.
pub fn serve(me: u32, sender: u32) {
    let (Some(mm), Some(request)) = (agent::MM.get(), posted(sender)) else {
        panic!("a shootdown from cpu {sender} before the MM is up, or malformed");
    };
    mm.serve_shootdown(&mut machine::traced(me), me, sender, &request);
}
