//! The flush trace: every machine call of the guest MM that changes what a TLB may hold, as the
//! guest appends it to a buffer in guest memory for the host to replay against its TLB model.
//!
//! The buffer at [`TRACE_ADDR`] holds a header (the number of records, a little-endian u64 at
//! offset 0) and then [`TRACE_CAPACITY`] records of [`TRACE_RECORD_SIZE`] bytes. The guest
//! appends; the host drains every record and sets the count back to 0 at every hypercall, and
//! when the guest rings [`TRACE_PORT`] because the buffer is full. Nothing is ever dropped.
#![forbid(unsafe_code)]

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
}

const PTE_WRITE: u64 = 1;
const FLUSH: u64 = 2;
const ACTIVATE: u64 = 3;
const FRAME_FREED: u64 = 4;
const ENTER_USER: u64 = 5;
const FRAME_ALLOCATED: u64 = 6;

/// The sizes an allocation may have: a frame, or a 2 MiB block.
pub const ALLOCATION_SIZES: [u64; 2] = [0x1000, 0x20_0000];

impl TraceEvent {
    /// Writes the record into `buf` (at least [`TRACE_RECORD_SIZE`] bytes).
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let (kind, a, b, c, d) = match *self {
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
        };
        let mut w = Writer::new(buf);
        for field in [kind, a, b, c, d] {
            w.put_u64(field);
        }
        w.finish()
    }

    /// Reads one record; `None` for a short buffer, an unknown kind, a level above 3 or an
    /// allocation of another size than [`ALLOCATION_SIZES`].
    pub fn decode(buf: &[u8]) -> Option<TraceEvent> {
        let mut r = Reader::new(buf);
        let (kind, a, b, c, d) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        Some(match kind & 0xff {
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
            FLUSH if kind == FLUSH => TraceEvent::Flush { va: a },
            ACTIVATE if kind == ACTIVATE => TraceEvent::Activate { directory: a },
            FRAME_FREED if kind == FRAME_FREED => TraceEvent::FrameFreed { frame: a },
            ENTER_USER if kind == ENTER_USER => TraceEvent::EnterUser,
            FRAME_ALLOCATED if kind == FRAME_ALLOCATED && ALLOCATION_SIZES.contains(&b) => {
                TraceEvent::FrameAllocated { frame: a, size: b }
            }
            _ => return None,
        })
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
        ];
        for event in events {
            let mut buf = [0u8; TRACE_RECORD_SIZE];
            assert_eq!(event.encode(&mut buf), Some(TRACE_RECORD_SIZE));
            assert_eq!(TraceEvent::decode(&buf), Some(event));
        }
    }

    #[test]
    fn malformed_records_are_refused() {
        let mut buf = [0u8; TRACE_RECORD_SIZE];
        assert_eq!(TraceEvent::decode(&buf), None, "kind 0");
        buf[0] = 1;
        buf[1] = 4;
        assert_eq!(TraceEvent::decode(&buf), None, "level 4");
        buf[0] = 2;
        buf[1] = 1;
        assert_eq!(TraceEvent::decode(&buf), None, "stray bits in a flush");
        let odd = TraceEvent::FrameAllocated {
            frame: 0x46000,
            size: 0x2000,
        };
        odd.encode(&mut buf).expect("fits");
        assert_eq!(
            TraceEvent::decode(&buf),
            None,
            "an allocation of two frames"
        );
        assert_eq!(TraceEvent::decode(&buf[..8]), None, "short");
    }
}
