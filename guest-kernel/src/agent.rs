//! The agent loop: fetch a batch of MM operations from the host, run them, send back the
//! results and every address space's CR3; export region-tree snapshots on request.
#![forbid(unsafe_code)]

use crate::arch::x86_64::machine::TracedMachine;
use crate::hypercall::{HypercallError, Mailbox};
use alloc::vec::Vec;
use guest_mm::MemoryManager;
use shared_mm::abi::{
    Hypercall, Op, OpResult, Status, BATCH_DONE, OP_RECORD_SIZE, REGION_RECORD_SIZE,
    RESULT_RECORD_SIZE, SPACE_RECORD_SIZE,
};

/// The guest's memory manager, on this CPU with the flush trace.
pub type Mm = MemoryManager<TracedMachine>;

/// Serves the host until it says there is no more work; returns normally then.
pub fn serve(mailbox: &mut Mailbox, mm: &mut Mm) -> Result<(), HypercallError> {
    let mut results: Vec<OpResult> = Vec::new();
    loop {
        let (len, spaces) = encode_report(mailbox.payload(), &results, mm);
        let reply = mailbox.call(
            Hypercall::Batch,
            results.len() as u32,
            len,
            [spaces as u64, 0, 0, 0],
        )?;
        if reply.args[0] & BATCH_DONE != 0 {
            return Ok(());
        }
        let ops: Vec<Option<Op>> = mailbox
            .payload()
            .as_chunks::<OP_RECORD_SIZE>()
            .0
            .iter()
            .take(reply.count as usize)
            .map(|record| Op::decode(record))
            .collect();
        results.clear();
        for op in ops {
            results.push(match op {
                None => OpResult::error(Status::BadOp),
                Some(Op::Snapshot { space }) => snapshot(mailbox, mm, space)?,
                Some(op) => mm.execute(op),
            });
        }
    }
}

/// Writes the results, then one record per live address space; returns (bytes, spaces).
fn encode_report(payload: &mut [u8], results: &[OpResult], mm: &Mm) -> (usize, usize) {
    let mut offset = 0;
    for result in results {
        result
            .encode(&mut payload[offset..offset + RESULT_RECORD_SIZE])
            .expect("record fits");
        offset += RESULT_RECORD_SIZE;
    }
    let mut spaces = 0;
    for record in mm.space_records() {
        match payload.get_mut(offset..offset + SPACE_RECORD_SIZE) {
            Some(slot) => record.encode(slot).expect("record fits"),
            None => break,
        };
        offset += SPACE_RECORD_SIZE;
        spaces += 1;
    }
    (offset, spaces)
}

/// Sends the region tree of `space` to the host in as many chunks as it takes.
fn snapshot(mailbox: &mut Mailbox, mm: &Mm, space: u32) -> Result<OpResult, HypercallError> {
    let Some(export) = mm.export(space) else {
        return Ok(OpResult::error(Status::NoSuchSpace));
    };
    let per_chunk = mailbox.payload_capacity() / REGION_RECORD_SIZE;
    let mut regions = export.regions.peekable();
    let mut first = 0;
    loop {
        let mut count = 0;
        let payload = mailbox.payload();
        while count < per_chunk {
            let Some(record) = regions.next() else { break };
            let at = count * REGION_RECORD_SIZE;
            record
                .encode(&mut payload[at..at + REGION_RECORD_SIZE])
                .expect("record fits");
            count += 1;
        }
        let args = [space as u64, first as u64, export.total as u64, export.cr3];
        mailbox.call(
            Hypercall::Snapshot,
            count as u32,
            count * REGION_RECORD_SIZE,
            args,
        )?;
        first += count;
        if regions.peek().is_none() {
            return Ok(OpResult {
                value: export.total as u64,
                ..OpResult::ok()
            });
        }
    }
}
