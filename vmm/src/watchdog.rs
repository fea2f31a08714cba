//! Stops a guest that runs past its time limit by signalling the vCPU thread out of KVM_RUN.

use crate::error::VmmError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the watchdog re-sends its signal after the deadline, in case one arrived while
/// the vCPU thread was outside KVM_RUN.
const RESEND: Duration = Duration::from_millis(20);

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// A timer thread that interrupts the calling thread's KVM_RUN once `limit` has passed.
pub struct Watchdog {
    limit: Duration,
    expired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for the current thread.
    pub fn start(limit: Duration) -> Result<Watchdog, VmmError> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| {
            VmmError::Driver(format!("cannot install the timeout signal handler: {e}"))
        })?;
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let expired = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (exp, stp) = (expired.clone(), stop.clone());
        let deadline = Instant::now() + limit;
        let thread = std::thread::spawn(move || {
            while !stp.load(Ordering::Acquire) {
                let now = Instant::now();
                if now < deadline {
                    std::thread::park_timeout((deadline - now).min(Duration::from_millis(100)));
                    continue;
                }
                exp.store(true, Ordering::Release);
                // SAFETY: `target` is the vCPU thread, which outlives this thread: `stop` joins
                // us before returning, and the signal's handler does nothing.
                unsafe { libc::pthread_kill(target, kick_signal()) };
                std::thread::park_timeout(RESEND);
            }
        });
        Ok(Watchdog {
            limit,
            expired,
            stop,
            thread: Some(thread),
        })
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Disarms the watchdog and joins its thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
