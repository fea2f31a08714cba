//! The agent loop, on every CPU over its own mailbox: fetch a batch of MM operations from the
//! host, run them, send back the results and every address space's CR3; export region-tree
//! snapshots on request. A CPU the host has no batch for yet halts until it has.
#![forbid(unsafe_code)]

use crate::arch::x86_64::machine::TracedMachine;
use crate::arch::x86_64::{interrupts, percpu};
use crate::hypercall::{HypercallError, Mailbox};
use alloc::vec::Vec;
use guest_mm::{Cpu, MemoryManager};
use shared_mm::abi::{
    Hypercall, Op, OpResult, Status, BATCH_DONE, BATCH_WAIT, FRAMES_ALLOCATED, FRAMES_OWNED,
    FRAMES_SHARED, KERNEL_SPACE, OP_RECORD_SIZE, REGION_RECORD_SIZE, RESULT_RECORD_SIZE,
    SPACE_RECORD_SIZE,
};

/// The guest's memory manager, shared by every CPU, each with its traced machine.
pub type Mm = MemoryManager<TracedMachine>;

/// The MM, once CPU 0 brought it up. It lives on the heap: only this pointer is a static.
pub static MM: spin::Once<&'static Mm> = spin::Once::new();

/// One CPU as the MM sees it.
pub type MmCpu = Cpu<TracedMachine>;

/// Serves the host on `cpu` until it says there is no more work; returns normally then.
pub fn serve(mailbox: &mut Mailbox, mm: &Mm, cpu: &mut MmCpu) -> Result<(), HypercallError> {
    let mut results: Vec<OpResult> = Vec::new();
    loop {
        let (len, spaces, generation) = encode_report(mailbox.payload(), &results, mm, cpu);
        let reply = mailbox.call(
            Hypercall::Batch,
            results.len() as u32,
            len,
            [spaces as u64, generation, 0, 0],
        )?;
        results.clear();
        if reply.args[0] & BATCH_DONE != 0 {
            return Ok(());
        }
        if reply.args[0] & BATCH_WAIT != 0 {
            interrupts::wait_until(percpu::take_work);
            continue;
        }
        let ops: Vec<Option<Op>> = mailbox
            .payload()
            .as_chunks::<OP_RECORD_SIZE>()
            .0
            .iter()
            .take(reply.count as usize)
            .map(|record| Op::decode(record))
            .collect();
        for op in ops {
            results.push(match op {
                None => OpResult::error(Status::BadOp),
                Some(Op::Snapshot { space }) => snapshot(mailbox, mm, cpu, space)?,
                Some(Op::Frames { space }) => frames(mailbox, mm, cpu, space)?,
                Some(op) => mm.execute(cpu, op),
            });
        }
    }
}

/// Writes the results, then one record per live address space; returns the bytes, the spaces
/// and the space table's generation.
fn encode_report(
    payload: &mut [u8],
    results: &[OpResult],
    mm: &Mm,
    cpu: &mut MmCpu,
) -> (usize, usize, u64) {
    let mut offset = 0;
    for result in results {
        result
            .encode(&mut payload[offset..offset + RESULT_RECORD_SIZE])
            .expect("record fits");
        offset += RESULT_RECORD_SIZE;
    }
    let mut spaces = 0;
    let (records, generation) = mm.space_records(cpu);
    for record in records {
        match payload.get_mut(offset..offset + SPACE_RECORD_SIZE) {
            Some(slot) => record.encode(slot).expect("record fits"),
            None => break,
        };
        offset += SPACE_RECORD_SIZE;
        spaces += 1;
    }
    (offset, spaces, generation)
}

/// Sends the region tree of `space` to the host in as many chunks as it takes.
fn snapshot(
    mailbox: &mut Mailbox,
    mm: &Mm,
    cpu: &mut MmCpu,
    space: u32,
) -> Result<OpResult, HypercallError> {
    let exported = mm.export(cpu, space, |export| {
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
    });
    exported.unwrap_or(Ok(OpResult::error(Status::NoSuchSpace)))
}

/// Sends the frame report of `space`: for the kernel, the allocator's bitmap of allocated
/// frames and the reference counts of shared frames first; then the frames the space owns.
fn frames(
    mailbox: &mut Mailbox,
    mm: &Mm,
    cpu: &mut MmCpu,
    space: u32,
) -> Result<OpResult, HypercallError> {
    let Some(owned) = mm.owned_frames(cpu, space) else {
        return Ok(OpResult::error(Status::NoSuchSpace));
    };
    if space == KERNEL_SPACE {
        let words = mm.allocated_frames(cpu);
        send_words(mailbox, space, FRAMES_ALLOCATED, &words)?;
        let words: Vec<u64> = mm.shared_frames(cpu).iter().map(|r| r.to_word()).collect();
        send_words(mailbox, space, FRAMES_SHARED, &words)?;
    }
    let words: Vec<u64> = owned.iter().map(|r| r.to_word()).collect();
    send_words(mailbox, space, FRAMES_OWNED, &words)?;
    Ok(OpResult {
        value: words.len() as u64,
        ..OpResult::ok()
    })
}

/// Sends `words` as `part` of the frame report of `space`, in as many `Frames` hypercalls as it
/// takes (at least one, so an empty part arrives too).
fn send_words(
    mailbox: &mut Mailbox,
    space: u32,
    part: u64,
    words: &[u64],
) -> Result<(), HypercallError> {
    let per_chunk = mailbox.payload_capacity() / 8;
    let total = words.len() as u64;
    let mut first = 0;
    loop {
        let chunk = &words[first..(first + per_chunk).min(words.len())];
        let payload = mailbox.payload();
        for (slot, word) in payload.as_chunks_mut::<8>().0.iter_mut().zip(chunk) {
            *slot = word.to_le_bytes();
        }
        let args = [space as u64, first as u64, total, part];
        mailbox.call(Hypercall::Frames, chunk.len() as u32, chunk.len() * 8, args)?;
        first += chunk.len();
        if first >= words.len() {
            return Ok(());
        }
    }
}
