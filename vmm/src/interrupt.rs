//! Ctrl-C for long campaigns: the first SIGINT sets a flag the jobs poll at batch boundaries
//! (so the summary and everything found so far survive); a second one exits at once.

use crate::error::VmmError;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first Ctrl-C.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run that Ctrl-C stopped, as shells report a SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: u32 = 130;

extern "C" fn on_interrupt(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and takes no pointers; a second Ctrl-C is a request
        // to quit at once, without the summary.
        unsafe { libc::_exit(EXIT_INTERRUPTED as libc::c_int) };
    }
    let note =
        b"\nvmm fuzz: interrupted; stopping at the next batch (Ctrl-C again quits at once)\n";
    // SAFETY: write is async-signal-safe; the buffer is a static byte string of that length.
    // Nothing can be done if it fails.
    let _ = unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
}

/// Installs the SIGINT handler; returns the flag it sets.
pub fn install() -> Result<&'static AtomicBool, VmmError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGINT, on_interrupt)
        .map_err(VmmError::SignalHandler)?;
    Ok(&INTERRUPTED)
}
