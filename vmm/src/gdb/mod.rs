//! The gdb stub (`--gdb ADDR`): gdb debugs the guest kernel through the `gdbstub` crate.
//!
//! One concept per file: `registers` (what gdb sees of the vCPU), `memory` (reads and writes at
//! virtual addresses, through the host's own page walker), `breakpoints` (DR0-DR3 and `int3`),
//! `probe` (whether `int3` works in guest ring 0 on this KVM), `observer` (the view of the MM the
//! host keeps from the hypercalls, with the `snapshot_round` it takes after each batch), `monitor`
//! (the `monitor` commands), `cpu_listing` (`monitor cpus` and `info threads`), `target` (the
//! gdbstub target over all of them, each vCPU a thread), `interrupt` (Ctrl-C while the guest
//! runs) and `session` (the connection and the stops, at CPU 0's run loop's two call-out points;
//! the other vCPUs park in [`crate::cpus::hold`]).

mod breakpoints;
mod cpu_listing;
mod interrupt;
mod memory;
mod monitor;
mod observer;
mod probe;
mod registers;
mod session;
mod snapshot_round;
mod target;
mod tlb_listing;

pub use observer::{MmView, Observed};
pub use registers::VcpuState;
pub use session::{Stub, PACKET_BUFFER};

use bounded_io::excerpt::excerpt;
use mm_driver::stop::StopRequest;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Mutex};

/// Why the gdb stub could not do its work.
#[derive(Debug)]
pub enum GdbError {
    /// `--gdb ADDR` does not name a socket address.
    BadAddress { addr: String, why: String },
    /// The address could not be listened on (in use, not local, not allowed).
    Bind { addr: String, source: io::Error },
    /// Waiting for gdb to connect failed.
    Accept(io::Error),
    /// The stub could not start its Ctrl-C watcher.
    Interrupt(io::Error),
    /// A KVM call the stub needs failed.
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The stub was asked for the vCPU's state while the guest runs (a protocol slip of gdb's).
    NotStopped,
    /// gdb killed the guest (`kill`).
    Killed,
}

impl fmt::Display for GdbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GdbError::BadAddress { addr, why } => write!(
                f,
                "--gdb {:?} is not an address to listen on (HOST:PORT or :PORT): {why}",
                excerpt(addr)
            ),
            GdbError::Bind { addr, source } => {
                write!(f, "cannot listen for gdb on {}: {source}", excerpt(addr))
            }
            GdbError::Accept(e) => write!(f, "waiting for gdb to connect failed: {e}"),
            GdbError::Interrupt(e) => write!(f, "cannot watch the gdb connection for Ctrl-C: {e}"),
            GdbError::Kvm { what, source } => write!(f, "gdb stub: KVM {what} failed: {source}"),
            GdbError::NotStopped => f.write_str("gdb stub: the vCPU is running, not stopped"),
            GdbError::Killed => f.write_str("gdb killed the guest"),
        }
    }
}

impl std::error::Error for GdbError {}

impl GdbError {
    /// Maps a failed KVM call `what` to its error.
    fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> GdbError {
        move |source| GdbError::Kvm { what, source }
    }
}

/// A listening gdb stub, waiting for the first guest of a command to boot. Clones share it:
/// the first guest that boots with it claims it (it then waits for gdb before its first
/// instruction), later guests (a fuzz campaign's next sessions, its shrinking) run without.
#[derive(Clone)]
pub struct GdbServer {
    listener: Arc<Mutex<Option<TcpListener>>>,
    addr: SocketAddr,
    stop: StopRequest,
}

impl fmt::Debug for GdbServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GdbServer({})", self.addr)
    }
}

impl GdbServer {
    /// Listens on `addr` (`HOST:PORT`, or `:PORT` for the loopback address; port 0 picks a
    /// free one, see [`GdbServer::local_addr`]).
    pub fn bind(addr: &str) -> Result<GdbServer, GdbError> {
        let full = match addr.strip_prefix(':') {
            Some(port) => format!("127.0.0.1:{port}"),
            None => addr.to_string(),
        };
        let bad = |why: String| GdbError::BadAddress {
            addr: addr.to_string(),
            why,
        };
        let candidates: Vec<SocketAddr> = full
            .to_socket_addrs()
            .map_err(|e| bad(e.to_string()))?
            .collect();
        if candidates.is_empty() {
            return Err(bad("it resolves to no address".into()));
        }
        let listener = TcpListener::bind(&candidates[..]).map_err(|source| GdbError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| GdbError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        Ok(GdbServer {
            listener: Arc::new(Mutex::new(Some(listener))),
            addr: bound,
            stop: StopRequest::default(),
        })
    }

    /// The address gdb connects to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The stop request the session of this server obeys.
    pub fn stop_request(&self) -> StopRequest {
        self.stop.clone()
    }

    /// The listener, for the first guest that asks; `None` for every later one.
    pub(crate) fn claim(&self) -> Option<Claim> {
        let mut slot = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        slot.take().map(|listener| Claim {
            listener,
            stop: self.stop.clone(),
        })
    }
}

/// A [`GdbServer`]'s listener, claimed by one guest, with the stop request its session obeys.
pub struct Claim {
    listener: TcpListener,
    stop: StopRequest,
}
