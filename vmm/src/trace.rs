//! The kvm backend's side of the flush trace: draining the guest's trace buffer
//! (attacker-controlled: its count and every record are checked).
#![forbid(unsafe_code)]

use crate::error::VmmError;
use mm_driver::protocol_error::ProtocolError;
use shared_mm::trace::{
    TraceRecord, TRACE_ADDR, TRACE_CAPACITY, TRACE_HEADER_SIZE, TRACE_RECORD_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Takes every record out of the guest's trace buffer, in order, and empties it.
pub fn drain<M: GuestMemory>(mem: &M) -> Result<Vec<TraceRecord>, VmmError> {
    let events = peek(mem)?;
    if !events.is_empty() {
        mem.write_obj(0u64, GuestAddress(TRACE_ADDR))
            .map_err(|source| VmmError::GuestMemory {
                what: "emptying the flush trace",
                source,
            })?;
    }
    Ok(events)
}

/// Every record in the guest's trace buffer, in order, leaving it as it is (for a debugger
/// looking at a stopped guest, whose buffer the run loop drains later).
pub fn peek<M: GuestMemory>(mem: &M) -> Result<Vec<TraceRecord>, VmmError> {
    let count: u64 =
        mem.read_obj(GuestAddress(TRACE_ADDR))
            .map_err(|source| VmmError::GuestMemory {
                what: "reading the trace count",
                source,
            })?;
    if count == 0 {
        return Ok(Vec::new());
    }
    if count > TRACE_CAPACITY as u64 {
        return Err(VmmError::from(ProtocolError::TraceCount { count }));
    }
    let mut records = vec![0u8; count as usize * TRACE_RECORD_SIZE];
    mem.read_slice(
        &mut records,
        GuestAddress(TRACE_ADDR + TRACE_HEADER_SIZE as u64),
    )
    .map_err(|source| VmmError::GuestMemory {
        what: "reading the flush trace",
        source,
    })?;
    let events = records
        .chunks_exact(TRACE_RECORD_SIZE)
        .enumerate()
        .map(|(i, record)| {
            TraceRecord::decode(record).ok_or(VmmError::from(ProtocolError::MalformedTraceRecord {
                index: i,
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_driver::RunError;
    use shared_mm::trace::TraceEvent;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("1 MiB")
    }

    #[test]
    fn drain_takes_every_record_and_empties_the_buffer() {
        let mem = memory();
        let events = [TraceEvent::Flush { va: 0x1000 }, TraceEvent::EnterUser];
        let records = events.map(|event| TraceRecord { cpu: 0, event });
        for (i, event) in records.iter().enumerate() {
            let mut record = [0u8; TRACE_RECORD_SIZE];
            event.encode(&mut record).expect("fits");
            let at = TRACE_ADDR + (TRACE_HEADER_SIZE + i * TRACE_RECORD_SIZE) as u64;
            mem.write_slice(&record, GuestAddress(at)).expect("in RAM");
        }
        mem.write_obj(2u64, GuestAddress(TRACE_ADDR))
            .expect("in RAM");
        assert_eq!(drain(&mem).expect("valid"), records);
        assert!(drain(&mem).expect("valid").is_empty(), "drained");
    }

    #[test]
    fn a_hostile_count_or_record_is_a_protocol_error() {
        let mem = memory();
        mem.write_obj(u64::MAX, GuestAddress(TRACE_ADDR))
            .expect("in RAM");
        assert!(matches!(
            drain(&mem),
            Err(VmmError::Run(RunError::GuestProtocol(_)))
        ));
        mem.write_obj(1u64, GuestAddress(TRACE_ADDR))
            .expect("in RAM");
        assert!(
            matches!(drain(&mem), Err(VmmError::Run(RunError::GuestProtocol(_)))),
            "kind 0 record"
        );
    }
}
