//! Kicks a vCPU thread out of a blocking KVM_RUN with a signal whose handler does nothing, so
//! KVM_RUN returns `EINTR` and the run loop looks at why (the watchdog, a gdb Ctrl-C).

use crate::error::VmmError;

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// A way to interrupt one thread's blocking system call (KVM_RUN) from another thread.
///
/// A kick that arrives while the target is outside KVM_RUN is lost: senders re-send until the
/// target has seen the reason for it.
#[derive(Clone, Copy, Debug)]
pub struct Kick {
    target: libc::pthread_t,
}

impl Kick {
    /// A kick aimed at the calling thread. Installs the (empty) signal handler first, so a kick
    /// never kills the process.
    pub fn current_thread() -> Result<Kick, VmmError> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(VmmError::SignalHandler)?;
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        Ok(Kick { target })
    }

    /// Sends the signal. The caller must make sure the target thread is still alive (both users
    /// join their sending thread before the vCPU thread moves on).
    pub fn send(&self) {
        // SAFETY: `target` is a live thread (see above), and the signal's handler does nothing,
        // so its only effect is to interrupt a blocking call with EINTR.
        unsafe { libc::pthread_kill(self.target, kick_signal()) };
    }
}
