//! The agent loop: fetch a batch of MM operations from the host, run them, send back the
//! results and every address space's CR3; export region-tree snapshots on request.

use crate::hypercall::{HypercallError, Mailbox};
use crate::mm::memory_manager::MemoryManager;
use crate::mm::vmobject::VMObject;
use alloc::vec::Vec;
use shared_mm::abi::{
    Hypercall, Op, OpResult, RegionRecord, SpaceRecord, Status, BATCH_DONE, KERNEL_SPACE,
    OP_RECORD_SIZE, REGION_RECORD_SIZE, RESULT_RECORD_SIZE, SPACE_RECORD_SIZE,
};
use shared_mm::region_tree::RegionTree;

/// Serves the host until it says there is no more work; returns normally then.
pub fn serve(mailbox: &mut Mailbox, mm: &mut MemoryManager) -> Result<(), HypercallError> {
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
fn encode_report(payload: &mut [u8], results: &[OpResult], mm: &MemoryManager) -> (usize, usize) {
    let mut offset = 0;
    for result in results {
        result
            .encode(&mut payload[offset..offset + RESULT_RECORD_SIZE])
            .expect("record fits");
        offset += RESULT_RECORD_SIZE;
    }
    let mut spaces = 0;
    for space in mm.spaces() {
        let record = SpaceRecord {
            space: space.id(),
            cr3: space.cr3(),
        };
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
fn snapshot(
    mailbox: &mut Mailbox,
    mm: &MemoryManager,
    space: u32,
) -> Result<OpResult, HypercallError> {
    let (tree, cr3): (&RegionTree<VMObject>, u64) = if space == KERNEL_SPACE {
        (mm.kernel_tree(), mm.kernel_cr3())
    } else {
        match mm.space(space) {
            Some(s) => (s.tree(), s.cr3()),
            None => return Ok(OpResult::error(Status::NoSuchSpace)),
        }
    };
    let per_chunk = mailbox.payload_capacity() / REGION_RECORD_SIZE;
    let total = tree.len();
    let mut regions = tree.iter().peekable();
    let mut first = 0;
    loop {
        let mut count = 0;
        let payload = mailbox.payload();
        while count < per_chunk {
            let Some(region) = regions.next() else { break };
            let range = region.range().expect("regions in a tree are placed");
            let record = RegionRecord {
                base: range.base().get(),
                size: range.size(),
                access: region.access().bits() as u32,
                backed: region.is_backed() as u32,
                name: RegionRecord::name_field(region.name()),
            };
            let at = count * REGION_RECORD_SIZE;
            record
                .encode(&mut payload[at..at + REGION_RECORD_SIZE])
                .expect("record fits");
            count += 1;
        }
        let args = [space as u64, first as u64, total as u64, cr3];
        mailbox.call(
            Hypercall::Snapshot,
            count as u32,
            count * REGION_RECORD_SIZE,
            args,
        )?;
        first += count;
        if regions.peek().is_none() {
            return Ok(OpResult {
                value: total as u64,
                ..OpResult::ok()
            });
        }
    }
}
