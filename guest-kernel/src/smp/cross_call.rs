//! Cross-CPU calls: a CPU asks a set of CPUs to run a request and waits, halted, until every
//! one of them has acknowledged it. Two requests: a ping, which a target acknowledges and
//! counts, and a TLB shootdown, whose details the sender posted first ([`super::shootdown`]).
//!
//! Every (sender, target) pair has a slot: the sender writes the request, bumps `requested`,
//! sets its bit in the target's pending mask and sends the target an IPI. The target's IPI
//! handler takes the mask, runs the request of each sender in it, sets `acked` to `requested`
//! and sends that sender a wake-up IPI, which ends its `hlt`. A sender has at most one call in
//! flight (it waits before it returns), so a slot never holds two requests, and several
//! senders never share a slot: no locks. The paths are short on purpose: each guest
//! instruction in ring 0 costs thousands of host cycles here.
#![forbid(unsafe_code)]

use crate::arch::x86_64::{apic, interrupts, percpu};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use shared_mm::smp::{CpuSet, MAX_CPUS};

/// What a target runs for a cross call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Acknowledge, and count it in [`pings_served`].
    Ping = 1,
    /// Run the shootdown the sender posted.
    Shootdown = 2,
}

impl Request {
    fn from_u32(value: u32) -> Option<Request> {
        match value {
            1 => Some(Request::Ping),
            2 => Some(Request::Shootdown),
            _ => None,
        }
    }

    /// Runs the request `sender` sent on CPU `me`, the one this runs on.
    fn run(self, me: u32, sender: u32) {
        match self {
            Request::Ping => {
                PINGS_SERVED[me as usize].fetch_add(1, Ordering::Relaxed);
            }
            Request::Shootdown => super::shootdown::serve(me, sender),
        }
    }
}

/// One sender's requests to one target.
struct Slot {
    /// The request of the latest call (a [`Request`] value).
    request: AtomicU32,
    /// Calls the sender made; the sender alone writes it.
    requested: AtomicU32,
    /// Calls the target ran; the target alone writes it.
    acked: AtomicU32,
}

impl Slot {
    fn idle(&self) -> bool {
        self.acked.load(Ordering::Acquire) == self.requested.load(Ordering::Relaxed)
    }
}

const CPUS: usize = MAX_CPUS as usize;

/// The slots, by sender then target.
static SLOTS: [[Slot; CPUS]; CPUS] = [const {
    [const {
        Slot {
            request: AtomicU32::new(0),
            requested: AtomicU32::new(0),
            acked: AtomicU32::new(0),
        }
    }; CPUS]
}; CPUS];

/// Each target's senders with a request waiting (bit `i`: CPU `i`), by target.
static PENDING: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];

/// Pings each CPU has served, by CPU index.
static PINGS_SERVED: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];

/// Runs `request` on every CPU of `targets` and returns once each has: the caller's own CPU,
/// if in the set, runs it itself; the others are sent an IPI, and the caller halts until every
/// one has acknowledged. Call with interrupts off, after [`apic::enable`].
pub fn call(targets: CpuSet, request: Request) {
    let me = percpu::current();
    let others = targets.without(me);
    for target in others.iter() {
        let slot = &SLOTS[me as usize][target as usize];
        slot.request.store(request as u32, Ordering::Relaxed);
        slot.requested.fetch_add(1, Ordering::Release);
        PENDING[target as usize].fetch_or(1 << me, Ordering::Release);
        apic::send_ipi(percpu::apic_id(target), apic::IPI_VECTOR);
    }
    if targets.contains(me) {
        request.run(me, me);
    }
    interrupts::wait_until(|| {
        others
            .iter()
            .all(|target| SLOTS[me as usize][target as usize].idle())
    });
}

/// Runs every request sent to this CPU and not yet run, acknowledging each to its sender:
/// what this CPU's IPI handler does.
pub fn serve() {
    let me = percpu::current();
    let senders = CpuSet::from_bits(PENDING[me as usize].swap(0, Ordering::Acquire));
    for sender in senders.iter() {
        let slot = &SLOTS[sender as usize][me as usize];
        let requested = slot.requested.load(Ordering::Acquire);
        if let Some(request) = Request::from_u32(slot.request.load(Ordering::Relaxed)) {
            request.run(me, sender);
        }
        slot.acked.store(requested, Ordering::Release);
        apic::send_ipi(percpu::apic_id(sender), apic::WAKE_VECTOR);
    }
}

/// The pings each of the first `cpus` CPUs has served.
pub fn pings_served(cpus: usize) -> impl Iterator<Item = u64> {
    PINGS_SERVED
        .iter()
        .take(cpus)
        .map(|served| served.load(Ordering::Relaxed))
}
