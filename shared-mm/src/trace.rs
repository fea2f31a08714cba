//! The flush trace: every machine call of the guest MM that changes what a TLB may hold, as the
//! guest appends it to a buffer in guest memory for the host to replay against its TLB model.
//! Each record names the CPU that made it; with several CPUs they append to the one buffer under
//! a lock, so the order of the records is an order in which the events really happened.
//!
//! The buffer at [`TRACE_ADDR`] holds a header (the number of records, a little-endian u64 at
//! offset 0) and then [`TRACE_CAPACITY`] records of [`TRACE_RECORD_SIZE`] bytes. The guest
//! appends; the host drains every record and sets the count back to 0 when every CPU is
//! quiescent (at every hypercall with one CPU, between rounds with several), and when the guest
//! rings [`TRACE_PORT`] because the buffer is full (the ringing CPU holds the buffer's lock, so
//! no other CPU appends meanwhile). Nothing is ever dropped.
#![forbid(unsafe_code)]

use crate::smp::{CpuSet, MAX_CPUS};
use crate::wire::{Reader, Writer};

/// Guest-physical address of the trace buffer.
pub const TRACE_ADDR: u64 = 0x40000;
/// Size of the trace buffer in bytes (16 pages).
pub const TRACE_SIZE: u64 = 0x10000;
/// Port-I/O doorbell: the trace buffer is full; the host drains it before the guest resumes.
pub const TRACE_PORT: u16 = 0x512;
/// Bytes before the first record (the count, then reserved space).
pub const TRACE_HEADER_SIZE: usize = 64;
/// Encoded size of one [`TraceEvent`].
pub const TRACE_RECORD_SIZE: usize = 40;
/// Records the buffer holds.
pub const TRACE_CAPACITY: usize = (TRACE_SIZE as usize - TRACE_HEADER_SIZE) / TRACE_RECORD_SIZE;

/// One event of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// A page-table entry of `directory` (its PML4) changed from `old` to `new`. The entry is at
    /// `level` (0 = PML4 .. 3 = PT) and maps from `va`.
    PteWrite {
        directory: u64,
        va: u64,
        level: u8,
        old: u64,
        new: u64,
    },
    /// `invlpg va` in the active directory.
    Flush { va: u64 },
    /// A CR3 load of `directory`.
    Activate { directory: u64 },
    /// `frame` went back to the frame allocator.
    FrameFreed { frame: u64 },
    /// `size` bytes at `frame` (one 4 KiB frame, or a 2 MiB block of them) were taken from the
    /// frame allocator, before the MM wrote to them: a host that knows the memory map can name
    /// a frame that is not usable RAM before its contents are overwritten.
    FrameAllocated { frame: u64, size: u64 },
    /// Ring 3 was entered on the active directory.
    EnterUser,
    /// A CR3 reload of the active directory: every non-global entry is gone.
    FlushAll,
    /// A TLB shootdown of `directory`'s translations was sent to `targets` (never the sender);
    /// the sender waits for each target's [`TraceEvent::ShootdownAck`].
    ShootdownRequest {
        directory: u64,
        targets: CpuSet,
        scope: FlushScope,
    },
    /// This CPU ran the shootdown `sender` asked for (its flushes are the records before this
    /// one) and acknowledges it.
    ShootdownAck { sender: u32 },
}

/// What a shootdown asks each target to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushScope {
    /// These many pages, each with `invlpg` (the request lists them; the trace records the
    /// targets' own flushes).
    Pages(u32),
    /// Every translation of the directory: a CR3 reload.
    All,
    /// The directory is being destroyed: a target that has it loaded loads the kernel's.
    Destroy,
}

impl FlushScope {
    fn encode(self) -> (u64, u64) {
        match self {
            FlushScope::Pages(n) => (0, u64::from(n)),
            FlushScope::All => (1, 0),
            FlushScope::Destroy => (2, 0),
        }
    }

    fn decode(kind: u64, count: u64) -> Option<FlushScope> {
        match (kind, count) {
            (0, n) => Some(FlushScope::Pages(u32::try_from(n).ok()?)),
            (1, 0) => Some(FlushScope::All),
            (2, 0) => Some(FlushScope::Destroy),
            _ => None,
        }
    }
}

/// One record of the trace: an event and the CPU that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    pub cpu: u32,
    pub event: TraceEvent,
}

const PTE_WRITE: u64 = 1;
const FLUSH: u64 = 2;
const ACTIVATE: u64 = 3;
const FRAME_FREED: u64 = 4;
const ENTER_USER: u64 = 5;
const FRAME_ALLOCATED: u64 = 6;
const FLUSH_ALL: u64 = 7;
const SHOOTDOWN_REQUEST: u64 = 8;
const SHOOTDOWN_ACK: u64 = 9;
/// The CPU's index sits in bits 16-23 of a record's kind word.
const CPU_SHIFT: u32 = 16;

/// The sizes an allocation may have: a frame, or a 2 MiB block.
pub const ALLOCATION_SIZES: [u64; 2] = [0x1000, 0x20_0000];

impl TraceRecord {
    /// Writes the record into `buf` (at least [`TRACE_RECORD_SIZE`] bytes); `None` if it is
    /// short or the CPU is past [`MAX_CPUS`].
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        if self.cpu >= MAX_CPUS {
            return None;
        }
        let (kind, a, b, c, d) = match self.event {
            TraceEvent::PteWrite {
                directory,
                va,
                level,
                old,
                new,
            } => (PTE_WRITE | (u64::from(level) << 8), directory, va, old, new),
            TraceEvent::Flush { va } => (FLUSH, va, 0, 0, 0),
            TraceEvent::Activate { directory } => (ACTIVATE, directory, 0, 0, 0),
            TraceEvent::FrameFreed { frame } => (FRAME_FREED, frame, 0, 0, 0),
            TraceEvent::EnterUser => (ENTER_USER, 0, 0, 0, 0),
            TraceEvent::FrameAllocated { frame, size } => (FRAME_ALLOCATED, frame, size, 0, 0),
            TraceEvent::FlushAll => (FLUSH_ALL, 0, 0, 0, 0),
            TraceEvent::ShootdownRequest {
                directory,
                targets,
                scope,
            } => {
                let (scope, count) = scope.encode();
                let targets = u64::from(targets.bits());
                (SHOOTDOWN_REQUEST, directory, targets, scope, count)
            }
            TraceEvent::ShootdownAck { sender } => (SHOOTDOWN_ACK, u64::from(sender), 0, 0, 0),
        };
        let mut w = Writer::new(buf);
        for field in [kind | (u64::from(self.cpu) << CPU_SHIFT), a, b, c, d] {
            w.put_u64(field);
        }
        w.finish()
    }

    /// Reads one record; `None` for a short buffer, an unknown kind, a CPU past [`MAX_CPUS`],
    /// a level above 3, an allocation of another size than [`ALLOCATION_SIZES`], or stray bits.
    pub fn decode(buf: &[u8]) -> Option<TraceRecord> {
        let mut r = Reader::new(buf);
        let (word, a, b, c, d) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let cpu = u32::try_from(word >> CPU_SHIFT)
            .ok()
            .filter(|&c| c < MAX_CPUS)?;
        let kind = word & ((1 << CPU_SHIFT) - 1);
        let bare = |event| (kind & !0xff == 0).then_some(event);
        let event = match kind & 0xff {
            PTE_WRITE => {
                let level = u8::try_from(kind >> 8).ok().filter(|&l| l <= 3)?;
                TraceEvent::PteWrite {
                    directory: a,
                    va: b,
                    level,
                    old: c,
                    new: d,
                }
            }
            FLUSH => bare(TraceEvent::Flush { va: a })?,
            ACTIVATE => bare(TraceEvent::Activate { directory: a })?,
            FRAME_FREED => bare(TraceEvent::FrameFreed { frame: a })?,
            ENTER_USER => bare(TraceEvent::EnterUser)?,
            FRAME_ALLOCATED if ALLOCATION_SIZES.contains(&b) => {
                bare(TraceEvent::FrameAllocated { frame: a, size: b })?
            }
            FLUSH_ALL => bare(TraceEvent::FlushAll)?,
            SHOOTDOWN_REQUEST => bare(TraceEvent::ShootdownRequest {
                directory: a,
                targets: CpuSet::from_bits(u32::try_from(b).ok()?),
                scope: FlushScope::decode(c, d)?,
            })?,
            SHOOTDOWN_ACK => bare(TraceEvent::ShootdownAck {
                sender: u32::try_from(a).ok().filter(|&s| s < MAX_CPUS)?,
            })?,
            _ => return None,
        };
        Some(TraceRecord { cpu, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let events = [
            TraceEvent::PteWrite {
                directory: 0x42000,
                va: 0x40_0000,
                level: 3,
                old: 0x8000_0000_0004_6007,
                new: 0,
            },
            TraceEvent::Flush { va: 0x40_0000 },
            TraceEvent::Activate { directory: 0x42000 },
            TraceEvent::FrameFreed { frame: 0x46000 },
            TraceEvent::EnterUser,
            TraceEvent::FrameAllocated {
                frame: 0x20_0000,
                size: 0x20_0000,
            },
            TraceEvent::FlushAll,
            TraceEvent::ShootdownRequest {
                directory: 0x42000,
                targets: CpuSet::from_bits(0b110),
                scope: FlushScope::Pages(3),
            },
            TraceEvent::ShootdownRequest {
                directory: 0x42000,
                targets: CpuSet::from_bits(1),
                scope: FlushScope::Destroy,
            },
            TraceEvent::ShootdownAck { sender: 1 },
        ];
        for (cpu, event) in (0..).zip(events) {
            let record = TraceRecord {
                cpu: cpu % MAX_CPUS,
                event,
            };
            let mut buf = [0u8; TRACE_RECORD_SIZE];
            assert_eq!(record.encode(&mut buf), Some(TRACE_RECORD_SIZE));
            assert_eq!(TraceRecord::decode(&buf), Some(record));
        }
    }

    #[test]
    fn malformed_records_are_refused() {
        let mut buf = [0u8; TRACE_RECORD_SIZE];
        assert_eq!(TraceRecord::decode(&buf), None, "kind 0");
        buf[0] = 1;
        buf[1] = 4;
        assert_eq!(TraceRecord::decode(&buf), None, "level 4");
        buf[0] = 2;
        buf[1] = 1;
        assert_eq!(TraceRecord::decode(&buf), None, "stray bits in a flush");
        let odd = TraceRecord {
            cpu: 0,
            event: TraceEvent::FrameAllocated {
                frame: 0x46000,
                size: 0x2000,
            },
        };
        odd.encode(&mut buf).expect("fits");
        assert_eq!(
            TraceRecord::decode(&buf),
            None,
            "an allocation of two frames"
        );
        buf.fill(0);
        buf[0] = 2;
        buf[1] = 0;
        buf[2] = MAX_CPUS as u8;
        assert_eq!(TraceRecord::decode(&buf), None, "no such CPU");
        buf[2] = 0;
        buf[0] = 8;
        buf[24] = 3;
        assert_eq!(TraceRecord::decode(&buf), None, "no such flush scope");
        assert_eq!(TraceRecord::decode(&buf[..8]), None, "short");
        let too_far = TraceRecord {
            cpu: MAX_CPUS,
            event: TraceEvent::FlushAll,
        };
        assert_eq!(too_far.encode(&mut buf), None);
    }
}
