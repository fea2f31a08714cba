//! Host side of the hypercall ABI: decodes the mailbox of the CPU that rang, serves the call,
//! writes the reply. The calls about CPUs are decoded here and served by [`crate::cpus`].
//!
//! Everything in the mailbox is attacker-controlled: every count and length is checked with
//! checked arithmetic against the payload it claims to describe before anything is allocated
//! for it, and any violation is a [`ProtocolError`] (exit 103).
#![forbid(unsafe_code)]

use crate::cpus::rounds::{Answer, Report, Rounds};
use crate::error::VmmError;
use mm_driver::driver::{Driver, FramesChunk, FramesPart, SnapshotChunk};
use mm_driver::protocol_error::ProtocolError;
use mm_driver::RunError;
use shared_mm::abi::{
    Hypercall, MailboxHeader, Op, OpResult, RegionRecord, SpaceRecord, BATCH_DONE, BATCH_WAIT,
    FRAMES_ALLOCATED, FRAMES_OWNED, FRAMES_SHARED, HEADER_SIZE, MAX_BATCH, OP_RECORD_SIZE,
    REGION_RECORD_SIZE, RESULT_RECORD_SIZE, SPACE_RECORD_SIZE,
};
use shared_mm::boot_info::MAILBOX_SIZE;
use shared_mm::smp::mailbox_addr;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What the run loop does after a hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Resume,
    Exit(u32),
    /// A call about the VM's CPUs, for the run loop to serve (its reply is already written).
    Cpus(CpuCall),
}

/// The hypercalls about CPUs, decoded (and not yet checked against the VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuCall {
    /// `StartCpus`: start every other CPU; the caller's APIC id.
    Start { apic_id: u64 },
    /// `CpuOnline`: the index and APIC id the caller reports.
    Online { cpu: u64, apic_id: u64 },
    /// `IpiRoundTrip`: what CPU 0 measured.
    RoundTrip(IpiReport),
}

/// An `IpiRoundTrip` hypercall's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpiReport {
    /// Pings sent to every target.
    pub pings: u64,
    /// The median round trip, in TSC cycles.
    pub median: u64,
    /// The median cost of reading the TSC, in TSC cycles.
    pub tsc_read: u64,
    /// The CPUs pinged, as a `CpuSet` mask.
    pub targets: u64,
    /// The pings each CPU served, CPU 0 first.
    pub served: Vec<u64>,
}

/// A reply to write back: the header's `count` and `args[0]`, and the payload.
#[derive(Default)]
struct Reply {
    count: u32,
    flags: u64,
    payload: Vec<u8>,
}

fn protocol(e: ProtocolError) -> VmmError {
    VmmError::from(e)
}

/// The `count` records of `size` bytes at the start of `payload`, decoded.
fn decode_records<T>(
    payload: &[u8],
    count: u64,
    size: usize,
    what: &'static str,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Result<Vec<T>, VmmError> {
    let bytes = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(size))
        .and_then(|n| payload.get(..n))
        .ok_or(protocol(ProtocolError::RecordsDoNotFit { what, count }))?;
    bytes
        .chunks_exact(size)
        .enumerate()
        .map(|(index, rec)| {
            decode(rec).ok_or(protocol(ProtocolError::MalformedRecord { what, index }))
        })
        .collect()
}

fn read_mailbox(mem: &GuestMemoryMmap, at: u64) -> Result<(MailboxHeader, Vec<u8>), VmmError> {
    let mut head = [0u8; HEADER_SIZE];
    mem.read_slice(&mut head, GuestAddress(at))
        .map_err(|source| VmmError::GuestMemory {
            what: "reading the mailbox",
            source,
        })?;
    let header = MailboxHeader::decode(&head).ok_or(protocol(ProtocolError::ShortHeader))?;
    let len = header.len as usize;
    if len > MAILBOX_SIZE as usize - HEADER_SIZE {
        return Err(protocol(ProtocolError::PayloadTooLong { len: header.len }));
    }
    let mut payload = vec![0u8; len];
    mem.read_slice(&mut payload, GuestAddress(at + HEADER_SIZE as u64))
        .map_err(|source| VmmError::GuestMemory {
            what: "reading the mailbox payload",
            source,
        })?;
    Ok((header, payload))
}

fn write_reply(mem: &GuestMemoryMmap, at: u64, call: u32, reply: Reply) -> Result<(), VmmError> {
    let header = MailboxHeader {
        call,
        count: reply.count,
        len: reply.payload.len() as u32,
        args: [reply.flags, 0, 0, 0],
        ..Default::default()
    };
    let mut out = vec![0u8; HEADER_SIZE + reply.payload.len()];
    header.encode(&mut out[..HEADER_SIZE]).expect("header fits");
    out[HEADER_SIZE..].copy_from_slice(&reply.payload);
    mem.write_slice(&out, GuestAddress(at))
        .map_err(|source| VmmError::GuestMemory {
            what: "writing the mailbox",
            source,
        })
}

/// `Panic`: the payload is the file name (`args[0]` bytes) and then the message.
fn guest_panic(header: &MailboxHeader, payload: &[u8]) -> VmmError {
    let file_len = usize::try_from(header.args[0]).map_or(payload.len(), |n| n.min(payload.len()));
    VmmError::Run(RunError::GuestPanic {
        file: String::from_utf8_lossy(&payload[..file_len]).into_owned(),
        message: String::from_utf8_lossy(&payload[file_len..]).into_owned(),
        line: header.args[1],
        column: header.args[2],
    })
}

/// A `Batch` request's results and live spaces.
fn batch_report(
    header: &MailboxHeader,
    payload: &[u8],
) -> Result<(Vec<OpResult>, Vec<SpaceRecord>), VmmError> {
    if header.count as usize > MAX_BATCH {
        return Err(protocol(ProtocolError::TooManyResults {
            count: header.count,
        }));
    }
    let n_results = u64::from(header.count);
    let results = decode_records(payload, n_results, RESULT_RECORD_SIZE, "result", |r| {
        OpResult::decode(r)
    })?;
    let after_results = &payload[results.len() * RESULT_RECORD_SIZE..];
    let spaces = decode_records(
        after_results,
        header.args[0],
        SPACE_RECORD_SIZE,
        "space",
        SpaceRecord::decode,
    )?;
    Ok((results, spaces))
}

/// `Batch` with several CPUs: CPU `cpu`'s results go to the round, and it is told what to do
/// next. A CPU that ended a round wakes CPU 0, which hands the next one out.
fn round_batch(
    mem: &GuestMemoryMmap,
    cpu: u32,
    header: &MailboxHeader,
    payload: &[u8],
    rounds: &Rounds<'_>,
    driver: Option<&mut dyn Driver>,
) -> Result<Reply, VmmError> {
    let (results, spaces) = batch_report(header, payload)?;
    let report = Report {
        cpu,
        results,
        spaces,
        generation: header.args[1],
    };
    let (answer, ended) = rounds.report(report, mem, driver)?;
    if ended {
        rounds.wake(shared_mm::smp::CpuSet::EMPTY.with(0))?;
    }
    Ok(match answer {
        Answer::Batch(ops) if ops.len() > MAX_BATCH => {
            return Err(VmmError::from(RunError::BatchTooLarge { ops: ops.len() }))
        }
        Answer::Batch(ops) => Reply {
            count: ops.len() as u32,
            flags: 0,
            payload: encode_ops(&ops),
        },
        Answer::Wait => Reply {
            flags: BATCH_WAIT,
            ..Reply::default()
        },
        Answer::Done => Reply {
            flags: BATCH_DONE,
            ..Reply::default()
        },
    })
}

/// `Batch`: the results of the last batch and the live spaces in, the next batch out.
fn batch(
    mem: &GuestMemoryMmap,
    header: &MailboxHeader,
    payload: &[u8],
    driver: &mut dyn Driver,
) -> Result<Reply, VmmError> {
    let (results, spaces) = batch_report(header, payload)?;
    let ops = match driver
        .next_batch(mem, &results, &spaces)
        .map_err(VmmError::from)?
    {
        None => {
            return Ok(Reply {
                flags: BATCH_DONE,
                ..Reply::default()
            })
        }
        Some(ops) if ops.len() > MAX_BATCH => {
            return Err(RunError::BatchTooLarge { ops: ops.len() }.into())
        }
        Some(ops) => ops,
    };
    Ok(Reply {
        count: ops.len() as u32,
        flags: 0,
        payload: encode_ops(&ops),
    })
}

fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut payload = vec![0u8; ops.len() * OP_RECORD_SIZE];
    for (op, rec) in ops.iter().zip(payload.as_chunks_mut::<OP_RECORD_SIZE>().0) {
        op.encode(rec).expect("record buffer is OP_RECORD_SIZE");
    }
    payload
}

/// `Snapshot`: one chunk of a region tree.
fn snapshot(
    mem: &GuestMemoryMmap,
    header: &MailboxHeader,
    payload: &[u8],
    driver: &mut dyn Driver,
) -> Result<Reply, VmmError> {
    let regions = decode_records(
        payload,
        u64::from(header.count),
        REGION_RECORD_SIZE,
        "region",
        RegionRecord::decode,
    )?;
    let [space, first, total, cr3] = header.args;
    let space = u32::try_from(space)
        .map_err(|_| protocol(ProtocolError::SpaceIdOutOfRange { id: space }))?;
    driver
        .snapshot(
            mem,
            SnapshotChunk {
                space,
                cr3,
                first,
                total,
                regions: &regions,
            },
        )
        .map_err(VmmError::from)?;
    Ok(Reply::default())
}

/// `Frames`: one chunk of a frame report.
fn frames(
    mem: &GuestMemoryMmap,
    header: &MailboxHeader,
    payload: &[u8],
    driver: &mut dyn Driver,
) -> Result<Reply, VmmError> {
    let words = decode_records(payload, u64::from(header.count), 8, "frame", |w| {
        Some(u64::from_le_bytes(w.try_into().ok()?))
    })?;
    let [space, first, total, part] = header.args;
    let space = u32::try_from(space)
        .map_err(|_| protocol(ProtocolError::SpaceIdOutOfRange { id: space }))?;
    let part = match part {
        FRAMES_ALLOCATED => FramesPart::Allocated,
        FRAMES_OWNED => FramesPart::Owned,
        FRAMES_SHARED => FramesPart::Shared,
        other => return Err(protocol(ProtocolError::UnknownFramesPart(other))),
    };
    let chunk = FramesChunk {
        space,
        part,
        first,
        total,
        words: &words,
    };
    driver.frames(mem, chunk).map_err(VmmError::from)?;
    Ok(Reply::default())
}

/// `IpiRoundTrip`: the measurement and the ping counts (words, bounded by the payload).
fn ipi_report(header: &MailboxHeader, payload: &[u8]) -> Result<IpiReport, VmmError> {
    let served = decode_records(payload, u64::from(header.count), 8, "ping count", |w| {
        Some(u64::from_le_bytes(w.try_into().ok()?))
    })?;
    let [pings, median, tsc_read, targets] = header.args;
    Ok(IpiReport {
        pings,
        median,
        tsc_read,
        targets,
        served,
    })
}

/// Serves the hypercall CPU `cpu` just signalled, in its mailbox. MM work goes to `driver`,
/// which only CPU 0's thread has: with one CPU every batch, with several (`rounds`) the rounds
/// each CPU's batches come in; snapshots and frame reports come from CPU 0 only.
pub fn handle(
    mem: &GuestMemoryMmap,
    cpu: u32,
    log: &mut dyn std::io::Write,
    driver: Option<&mut dyn Driver>,
    rounds: Option<&Rounds<'_>>,
) -> Result<Next, VmmError> {
    let at = mailbox_addr(cpu);
    let (header, payload) = read_mailbox(mem, at)?;
    let call = Hypercall::from_u32(header.call)
        .ok_or(protocol(ProtocolError::UnknownHypercall(header.call)))?;
    if let (Hypercall::Batch, Some(rounds)) = (call, rounds) {
        let reply = round_batch(mem, cpu, &header, &payload, rounds, driver)?;
        write_reply(mem, at, header.call, reply)?;
        return Ok(Next::Resume);
    }
    let work = |name| {
        let driver = driver.ok_or(protocol(ProtocolError::MmWorkOffCpu0 { cpu, call: name }))?;
        if let Some(rounds) = rounds {
            // CPU 0 alone runs a round with reports: the trace is quiescent.
            rounds.deliver_trace(mem, driver)?;
        }
        Ok::<_, VmmError>(driver)
    };
    let (reply, next) = match call {
        Hypercall::Log => {
            writeln!(log, "{}", String::from_utf8_lossy(&payload)).map_err(VmmError::Console)?;
            (Reply::default(), Next::Resume)
        }
        Hypercall::Panic => return Err(guest_panic(&header, &payload)),
        Hypercall::LockOrder => {
            return Err(VmmError::from(RunError::LockOrder {
                cpu,
                finding: String::from_utf8_lossy(&payload).into_owned(),
            }))
        }
        Hypercall::Exit => return Ok(Next::Exit(header.args[0] as u32)),
        // An empty reply: the cost of the hypercall path, for the `system` bench.
        Hypercall::Ping => (Reply::default(), Next::Resume),
        Hypercall::Batch => (batch(mem, &header, &payload, work("Batch")?)?, Next::Resume),
        Hypercall::Snapshot => (
            snapshot(mem, &header, &payload, work("Snapshot")?)?,
            Next::Resume,
        ),
        Hypercall::Frames => (
            frames(mem, &header, &payload, work("Frames")?)?,
            Next::Resume,
        ),
        Hypercall::StartCpus => {
            let apic_id = header.args[0];
            (Reply::default(), Next::Cpus(CpuCall::Start { apic_id }))
        }
        Hypercall::CpuOnline => {
            let [cpu, apic_id, ..] = header.args;
            (
                Reply::default(),
                Next::Cpus(CpuCall::Online { cpu, apic_id }),
            )
        }
        Hypercall::IpiRoundTrip => {
            let report = ipi_report(&header, &payload)?;
            (Reply::default(), Next::Cpus(CpuCall::RoundTrip(report)))
        }
    };
    write_reply(mem, at, header.call, reply)?;
    Ok(next)
}
