//! The sim's flush trace: the events the MM's traced machines record, every CPU's in the order
//! they happened, collected in-process until the sim hands them to the driver (under KVM the
//! guest writes them to a buffer in its RAM instead, which the host drains).
#![forbid(unsafe_code)]

use guest_mm::trace::TraceSink;
use shared_mm::trace::TraceRecord;
use std::cell::RefCell;
use std::rc::Rc;

/// The sim's trace sink: one log every CPU's handle writes to, until the host takes it.
#[derive(Clone, Debug, Default)]
pub struct TraceLog {
    records: Rc<RefCell<Vec<TraceRecord>>>,
}

impl TraceLog {
    /// Every record since the last call, in order.
    pub fn take(&self) -> Vec<TraceRecord> {
        std::mem::take(&mut *self.records.borrow_mut())
    }
}

impl TraceSink for TraceLog {
    fn record(&mut self, record: TraceRecord) {
        self.records.borrow_mut().push(record);
    }
}
