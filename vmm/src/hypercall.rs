//! Host side of the hypercall ABI: decodes the guest's mailbox, serves the call, writes the reply.

use crate::driver::Driver;
use crate::error::VmmError;
use shared_mm::abi::{
    Hypercall, MailboxHeader, OpResult, RegionRecord, SpaceRecord, BATCH_DONE, HEADER_SIZE,
    MAX_BATCH, OP_RECORD_SIZE, REGION_RECORD_SIZE, RESULT_RECORD_SIZE, SPACE_RECORD_SIZE,
};
use shared_mm::boot_info::{MAILBOX_ADDR, MAILBOX_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What the run loop does after a hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Resume,
    Exit(u32),
}

fn protocol(why: impl Into<String>) -> VmmError {
    VmmError::GuestProtocol(why.into())
}

fn decode_records<T>(
    payload: &[u8],
    count: usize,
    size: usize,
    what: &str,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Result<Vec<T>, VmmError> {
    let bytes = payload
        .get(..count * size)
        .ok_or_else(|| protocol(format!("{count} {what} records do not fit the payload")))?;
    bytes
        .chunks_exact(size)
        .enumerate()
        .map(|(i, rec)| {
            decode(rec).ok_or_else(|| protocol(format!("{what} record {i} is malformed")))
        })
        .collect()
}

/// Serves the hypercall the guest just signalled.
pub fn handle(
    mem: &GuestMemoryMmap,
    log: &mut dyn std::io::Write,
    driver: &mut dyn Driver,
) -> Result<Next, VmmError> {
    let mut head = [0u8; HEADER_SIZE];
    mem.read_slice(&mut head, GuestAddress(MAILBOX_ADDR))
        .map_err(|e| VmmError::GuestMemory(format!("reading the mailbox: {e}")))?;
    let header = MailboxHeader::decode(&head).ok_or_else(|| protocol("short mailbox header"))?;
    let len = header.len as usize;
    if len > MAILBOX_SIZE as usize - HEADER_SIZE {
        return Err(protocol(format!(
            "payload length {len} exceeds the mailbox"
        )));
    }
    let mut payload = vec![0u8; len];
    mem.read_slice(
        &mut payload,
        GuestAddress(MAILBOX_ADDR + HEADER_SIZE as u64),
    )
    .map_err(|e| VmmError::GuestMemory(format!("reading the mailbox payload: {e}")))?;
    let payload = payload.as_slice();
    let call = Hypercall::from_u32(header.call)
        .ok_or_else(|| protocol(format!("unknown hypercall number {}", header.call)))?;
    let mut reply = MailboxHeader {
        call: header.call,
        ..Default::default()
    };
    let mut reply_payload: Vec<u8> = Vec::new();
    match call {
        Hypercall::Log => {
            let text = String::from_utf8_lossy(payload);
            writeln!(log, "{text}").map_err(|e| VmmError::Driver(format!("console: {e}")))?;
        }
        Hypercall::Panic => {
            let file_len = (header.args[0] as usize).min(payload.len());
            return Err(VmmError::GuestPanic {
                file: String::from_utf8_lossy(&payload[..file_len]).into_owned(),
                message: String::from_utf8_lossy(&payload[file_len..]).into_owned(),
                line: header.args[1],
                column: header.args[2],
            });
        }
        Hypercall::Exit => return Ok(Next::Exit(header.args[0] as u32)),
        // An empty reply: the cost of the hypercall path, for the `system` bench.
        Hypercall::Ping => {}
        Hypercall::Batch => {
            let n_results = header.count as usize;
            let results = decode_records(
                payload,
                n_results,
                RESULT_RECORD_SIZE,
                "result",
                OpResult::decode,
            )?;
            let spaces = decode_records(
                &payload[n_results * RESULT_RECORD_SIZE..],
                header.args[0] as usize,
                SPACE_RECORD_SIZE,
                "space",
                SpaceRecord::decode,
            )?;
            match driver
                .next_batch(mem, &results, &spaces)
                .map_err(VmmError::Driver)?
            {
                None => reply.args[0] = BATCH_DONE,
                Some(ops) => {
                    if ops.len() > MAX_BATCH {
                        return Err(VmmError::Driver(format!(
                            "batch of {} ops exceeds {MAX_BATCH}",
                            ops.len()
                        )));
                    }
                    reply_payload = vec![0u8; ops.len() * OP_RECORD_SIZE];
                    for (op, rec) in ops
                        .iter()
                        .zip(reply_payload.as_chunks_mut::<OP_RECORD_SIZE>().0)
                    {
                        op.encode(rec).expect("record buffer is OP_RECORD_SIZE");
                    }
                    reply.count = ops.len() as u32;
                }
            }
        }
        Hypercall::Snapshot => {
            let regions = decode_records(
                payload,
                header.count as usize,
                REGION_RECORD_SIZE,
                "region",
                RegionRecord::decode,
            )?;
            let [space, first, total, cr3] = header.args;
            driver
                .snapshot(mem, space as u32, cr3, first, total, &regions)
                .map_err(VmmError::Driver)?;
        }
    }
    reply.len = reply_payload.len() as u32;
    let mut out = vec![0u8; HEADER_SIZE + reply_payload.len()];
    reply.encode(&mut out[..HEADER_SIZE]).expect("header fits");
    out[HEADER_SIZE..].copy_from_slice(&reply_payload);
    mem.write_slice(&out, GuestAddress(MAILBOX_ADDR))
        .map_err(|e| VmmError::GuestMemory(format!("writing the mailbox: {e}")))?;
    Ok(Next::Resume)
}
