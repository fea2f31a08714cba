//! Ctrl-C while the guest runs. KVM_RUN blocks the vCPU thread, so a watcher thread waits for
//! bytes from gdb (epoll on the connection, which reads nothing) and then kicks the vCPU thread
//! out of KVM_RUN with a signal, re-sending until the stub has taken note. The stub reads the
//! bytes between two runs, on the vCPU thread, and gdbstub turns a `0x03` into a stop.

use super::GdbError;
use crate::kick::Kick;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// How long the watcher waits for bytes before it looks at its flags again.
const POLL_MS: i32 = 50;
/// How often it re-sends the kick while the vCPU thread has not seen it (a signal that lands
/// outside KVM_RUN is lost).
const RESEND: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Flags {
    /// The guest is running: bytes from gdb must interrupt it.
    running: AtomicBool,
    /// gdb sent bytes while the guest ran; the stub has not read them yet.
    pending: AtomicBool,
    stop: AtomicBool,
}

/// The watcher thread; stopped and joined on drop.
pub struct InterruptWatch {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl InterruptWatch {
    /// Watches `conn` (a clone of the gdb connection) for the thread `kick` names.
    pub fn start(conn: TcpStream, kick: Kick) -> Result<InterruptWatch, GdbError> {
        let epoll = Epoll::new().map_err(GdbError::Interrupt)?;
        let events = EventSet::IN | EventSet::READ_HANG_UP;
        epoll
            .ctl(
                ControlOperation::Add,
                conn.as_raw_fd(),
                EpollEvent::new(events, 0),
            )
            .map_err(GdbError::Interrupt)?;
        let flags = Arc::new(Flags::default());
        let shared = flags.clone();
        let thread = std::thread::spawn(move || watch(&epoll, &conn, &shared, kick));
        Ok(InterruptWatch {
            flags,
            thread: Some(thread),
        })
    }

    /// The guest runs from now on (`true`), or is held stopped (`false`, which also forgets a
    /// pending interrupt: the stub reads the connection itself then).
    pub fn set_running(&self, running: bool) {
        if !running {
            self.flags.pending.store(false, Ordering::Release);
        }
        self.flags.running.store(running, Ordering::Release);
    }

    /// Whether gdb sent bytes while the guest ran; clears the note.
    pub fn take_pending(&self) -> bool {
        self.flags.pending.swap(false, Ordering::AcqRel)
    }
}

impl Drop for InterruptWatch {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The watcher's loop. `_conn` keeps the watched descriptor open.
fn watch(epoll: &Epoll, _conn: &TcpStream, flags: &Flags, kick: Kick) {
    let mut events = [EpollEvent::default(); 1];
    let live =
        |flag: &AtomicBool| flag.load(Ordering::Acquire) && !flags.stop.load(Ordering::Acquire);
    while !flags.stop.load(Ordering::Acquire) {
        if !flags.running.load(Ordering::Acquire) {
            // Bytes stay readable while the stub is stopped and reading: do not spin on them.
            std::thread::park_timeout(Duration::from_millis(POLL_MS as u64));
            continue;
        }
        match epoll.wait(POLL_MS, &mut events) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        if !live(&flags.running) {
            continue;
        }
        flags.pending.store(true, Ordering::Release);
        // The vCPU thread outlives this one: the stub joins us (on drop) before it returns.
        while live(&flags.pending) && live(&flags.running) {
            kick.send();
            std::thread::park_timeout(RESEND);
        }
    }
}
