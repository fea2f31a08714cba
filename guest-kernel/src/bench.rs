//! Guest side of the `system` bench: raw port-I/O exits, then `Ping` hypercalls, between markers.
//!
//! The guest times nothing itself. Each phase is bracketed by an empty `Batch` hypercall, which
//! the host's bench driver sees and timestamps, so the figures are host wall time. A third phase
//! encodes and decodes a mailbox header in a stack buffer without exiting: the guest's own share
//! of a hypercall.
#![forbid(unsafe_code)]

use crate::arch::x86_64::port::outb;
use crate::hypercall::{HypercallError, Mailbox};
use core::hint::black_box;
use shared_mm::abi::{Hypercall, MailboxHeader, HEADER_SIZE, RAW_EXIT_PORT};

/// Iterations of each phase; the host reads it from the console line printed at the end.
const PER_PHASE: u64 = 20_000;

/// Runs the three phases; the caller exits 0 afterwards.
pub fn run(mailbox: &mut Mailbox) -> Result<(), HypercallError> {
    marker(mailbox)?;
    for _ in 0..PER_PHASE {
        outb(RAW_EXIT_PORT, 0);
    }
    marker(mailbox)?;
    for i in 0..PER_PHASE {
        mailbox.call(Hypercall::Ping, 0, 0, [i, 0, 0, 0])?;
    }
    marker(mailbox)?;
    for i in 0..PER_PHASE {
        let header = MailboxHeader {
            call: Hypercall::Ping as u32,
            args: [i, 0, 0, 0],
            ..MailboxHeader::default()
        };
        let mut buf = [0u8; HEADER_SIZE];
        header.encode(black_box(&mut buf));
        black_box(MailboxHeader::decode(black_box(&buf)));
    }
    marker(mailbox)?;
    println!("guest-kernel: bench: {PER_PHASE} iterations per phase");
    Ok(())
}

/// An empty `Batch` request: the host timestamps it and answers with an empty batch.
fn marker(mailbox: &mut Mailbox) -> Result<(), HypercallError> {
    mailbox.call(Hypercall::Batch, 0, 0, [0; 4]).map(|_| ())
}
