//! The sim's flush trace: the events the MM's traced machine records, collected in-process
//! until the sim hands them to the driver (under KVM the guest writes them to a buffer in its
//! RAM instead, which the host drains).
#![forbid(unsafe_code)]

use guest_mm::trace::TraceSink;
use shared_mm::trace::TraceRecord;

/// The sim's trace sink: records collected in-process until the host takes them.
#[derive(Debug, Default)]
pub struct TraceLog {
    records: Vec<TraceRecord>,
}

impl TraceLog {
    /// Every record since the last call, in order.
    pub fn take(&mut self) -> Vec<TraceRecord> {
        std::mem::take(&mut self.records)
    }
}

impl TraceSink for TraceLog {
    fn record(&mut self, record: TraceRecord) {
        self.records.push(record);
    }
}
