//! Stops a guest that makes no hypercall for too long, by signalling the vCPU thread out of
//! KVM_RUN. Each hypercall [`Watchdog::pet`]s it, so long but busy runs (fuzzing) go on.

use crate::error::VmmError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Milliseconds from `epoch` to the last sign of life.
    last_pet_ms: Arc<AtomicU64>,
    epoch: Instant,
    expired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for the current thread: it fires once `limit` passes without a pet.
    pub fn start(limit: Duration) -> Result<Watchdog, VmmError> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(VmmError::SignalHandler)?;
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let expired = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let last_pet_ms = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (exp, stp, pet) = (expired.clone(), stop.clone(), last_pet_ms.clone());
        let thread = std::thread::spawn(move || {
            while !stp.load(Ordering::Acquire) {
                let now = Instant::now();
                let deadline = epoch
                    .checked_add(Duration::from_millis(pet.load(Ordering::Relaxed)))
                    .and_then(|pet| pet.checked_add(limit));
                // A deadline past what Instant can hold never comes.
                if deadline.is_none_or(|deadline| now < deadline) {
                    let wait = deadline.map_or(Duration::MAX, |d| d - now);
                    std::thread::park_timeout(wait.min(Duration::from_millis(100)));
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
            last_pet_ms,
            epoch,
            expired,
            stop,
            thread: Some(thread),
        })
    }

    /// Records a sign of life: the deadline moves to `limit` from now.
    pub fn pet(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_pet_ms.store(ms, Ordering::Relaxed);
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
