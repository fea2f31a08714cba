//! Stops a guest that makes no progress for too long, by signalling the vCPU thread out of
//! KVM_RUN. Each hypercall [`Watchdog::pet`]s it, and so does every change of the guest's
//! heartbeat counter (`shared_mm::heartbeat`), which its long loops bump: a slow guest that is
//! making progress (a large populate on an emulating host) runs on, and a guest stuck in a loop
//! is stopped. Time a debugger holds the guest stopped ([`Watchdog::pause`]) does not count.

use crate::error::VmmError;
use crate::kick::Kick;
use shared_mm::heartbeat::HEARTBEAT_ADDR;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How often the watchdog re-sends its signal after the deadline, in case one arrived while
/// the vCPU thread was outside KVM_RUN.
const RESEND: Duration = Duration::from_millis(20);

/// A sign of progress the watchdog reads by itself, without the guest stopping: the value of
/// a counter the guest bumps. Any change since the last read counts as a pet.
pub type Heartbeat = Box<dyn Fn() -> u64 + Send>;

/// The heartbeat of a guest whose RAM is `mem`: the counter at `HEARTBEAT_ADDR` (a read that
/// fails, impossible for RAM the VM was built with, reads as no progress).
pub fn guest_heartbeat(mem: GuestMemoryMmap) -> Heartbeat {
    Box::new(move || {
        mem.load(GuestAddress(HEARTBEAT_ADDR), Ordering::Relaxed)
            .unwrap_or(0)
    })
}

/// A timer thread that interrupts the calling thread's KVM_RUN once `limit` has passed.
pub struct Watchdog {
    limit: Duration,
    /// Milliseconds from `epoch` to the last sign of life.
    last_pet_ms: Arc<AtomicU64>,
    epoch: Instant,
    expired: Arc<AtomicBool>,
    /// Set while a debugger holds the guest stopped: the deadline does not run out then.
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The watchdog's clock stands still until this is dropped; see [`Watchdog::pause`].
pub struct Paused<'w> {
    watchdog: &'w Watchdog,
    since: Instant,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        // The time paused moves the deadline; the last sign of life stays what it was.
        let ms = self.since.elapsed().as_millis() as u64;
        self.watchdog.last_pet_ms.fetch_add(ms, Ordering::Relaxed);
        self.watchdog.paused.store(false, Ordering::Release);
    }
}

impl Watchdog {
    /// Arms a watchdog for the current thread: it fires once `limit` passes without a pet,
    /// where a change of `heartbeat` (read at least every 100 ms) is a pet too.
    pub fn start(limit: Duration, heartbeat: Option<Heartbeat>) -> Result<Watchdog, VmmError> {
        let kick = Kick::current_thread()?;
        let expired = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let last_pet_ms = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (exp, held, stp, pet) = (
            expired.clone(),
            paused.clone(),
            stop.clone(),
            last_pet_ms.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut beats = heartbeat.as_ref().map(|read| read());
            while !stp.load(Ordering::Acquire) {
                if held.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(100));
                    continue;
                }
                if let Some(read) = &heartbeat {
                    let now = read();
                    if beats != Some(now) {
                        beats = Some(now);
                        pet.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
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
                // The vCPU thread outlives this thread: `stop` joins us before returning.
                kick.send();
                std::thread::park_timeout(RESEND);
            }
        });
        Ok(Watchdog {
            limit,
            last_pet_ms,
            epoch,
            expired,
            paused,
            stop,
            thread: Some(thread),
        })
    }

    /// Records a sign of life: the deadline moves to `limit` from now.
    pub fn pet(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_pet_ms.store(ms, Ordering::Relaxed);
    }

    /// Stops the clock until the guard is dropped: a guest held stopped by a debugger makes no
    /// hypercalls, and that is not a hang.
    pub fn pause(&self) -> Paused<'_> {
        self.paused.store(true, Ordering::Release);
        Paused {
            watchdog: self,
            since: Instant::now(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::sleep;

    #[test]
    fn a_changing_heartbeat_keeps_the_guest_alive_and_a_still_one_does_not() {
        let limit = Duration::from_millis(500);
        let beats = Arc::new(AtomicU64::new(0));
        let read = beats.clone();
        let heartbeat: Heartbeat = Box::new(move || read.load(Ordering::Relaxed));
        let watchdog = Watchdog::start(limit, Some(heartbeat)).expect("watchdog");
        // Four times the limit without a pet, but with progress all along.
        for _ in 0..40 {
            sleep(limit / 10);
            beats.fetch_add(1, Ordering::Relaxed);
        }
        assert!(!watchdog.expired(), "stopped a guest that made progress");
        // Then no progress for three times the limit: a hang.
        sleep(3 * limit);
        assert!(watchdog.expired(), "a still heartbeat went unnoticed");
        watchdog.stop();
    }
}
