//! A driver's request to stop the guest for a debugger before it runs on: `vmm replay
//! --break-at-op N` makes one when it hands out op N, and the kvm backend's gdb stub takes it.
//! Without a debugger attached it does nothing.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

/// A request from a driver to stop the guest under gdb before it runs on: `vmm replay
/// --break-at-op N` makes one when it hands out op N. Without a gdb session it does nothing.
#[derive(Clone, Debug, Default)]
pub struct StopRequest(Arc<Mutex<Option<String>>>);

impl StopRequest {
    /// Asks for a stop at the next point the guest would run, saying why.
    pub fn request(&self, why: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// The pending request, if any, which this takes.
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
