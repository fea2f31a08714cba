//! Guest side of the hypercall ABI: fills the mailbox, rings the doorbell, reads the response.

use crate::arch::x86_64::{physmap, port::outb};
use shared_mm::abi::{Hypercall, MailboxHeader, HEADER_SIZE, HYPERCALL_PORT};
use shared_mm::boot_info::MAILBOX_SIZE;
use shared_mm::smp::mailbox_addr;

/// A CPU's mailbox, shared with the host: request and response both live at its start.
pub struct Mailbox {
    buf: &'static mut [u8],
}

/// Why a hypercall failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallError {
    /// The request payload does not fit in the mailbox.
    PayloadTooLarge,
    /// The host's response header could not be decoded.
    BadResponse,
    /// The host rejected the request with this status.
    Rejected(u32),
}

impl Mailbox {
    /// Takes the mailbox of CPU `cpu`, at its fixed physical address. The doorbell is the same
    /// port for every CPU: the host serves the mailbox of the CPU that rang it.
    ///
    /// # Safety
    /// `cpu` must be the CPU this runs on, and only one `Mailbox` of it may be in use at a time
    /// (the panic path is the one exception: it takes over after the CPU's normal execution has
    /// stopped).
    pub unsafe fn take(cpu: u32) -> Mailbox {
        // SAFETY: the VMM marks every CPU's mailbox reserved in the memory map, so no allocator
        // hands it out; no other CPU uses this one, and the caller guarantees exclusive use here.
        let buf = unsafe { physmap::slice_mut(mailbox_addr(cpu), MAILBOX_SIZE as usize) };
        Mailbox { buf }
    }

    /// Bytes available for a payload.
    pub fn payload_capacity(&self) -> usize {
        self.buf.len() - HEADER_SIZE
    }

    /// The payload area, to fill before [`Mailbox::call`] or to read after it.
    pub fn payload(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_SIZE..]
    }

    /// Performs hypercall `call` with `len` payload bytes already written by the caller.
    /// Returns the response header; its payload is in [`Mailbox::payload`].
    pub fn call(
        &mut self,
        call: Hypercall,
        count: u32,
        len: usize,
        args: [u64; 4],
    ) -> Result<MailboxHeader, HypercallError> {
        if len > self.payload_capacity() {
            return Err(HypercallError::PayloadTooLarge);
        }
        let header = MailboxHeader {
            call: call as u32,
            status: 0,
            len: len as u32,
            count,
            args,
        };
        header
            .encode(&mut self.buf[..HEADER_SIZE])
            .ok_or(HypercallError::PayloadTooLarge)?;
        outb(HYPERCALL_PORT, 0);
        let response =
            MailboxHeader::decode(&self.buf[..HEADER_SIZE]).ok_or(HypercallError::BadResponse)?;
        if response.status != 0 {
            return Err(HypercallError::Rejected(response.status));
        }
        Ok(response)
    }

    /// Sends `text` to the host log.
    pub fn log(&mut self, text: &str) -> Result<(), HypercallError> {
        let n = text.len().min(self.payload_capacity());
        self.payload()[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.call(Hypercall::Log, 0, n, [0; 4]).map(|_| ())
    }

    /// Ends the VM with `status`; the VMM exits with it.
    pub fn exit(&mut self, status: u32) -> ! {
        let _ = self.call(Hypercall::Exit, 0, 0, [status as u64, 0, 0, 0]);
        crate::arch::x86_64::halt_forever()
    }

    /// Reports a panic (file, line, column, message); the VMM exits nonzero.
    pub fn panic(&mut self, file: &str, line: u32, column: u32, message: &str) -> ! {
        let cap = self.payload_capacity();
        let f = file.len().min(cap);
        let m = message.len().min(cap - f);
        self.payload()[..f].copy_from_slice(&file.as_bytes()[..f]);
        self.payload()[f..f + m].copy_from_slice(&message.as_bytes()[..m]);
        let args = [f as u64, line as u64, column as u64, 0];
        let _ = self.call(Hypercall::Panic, 0, f + m, args);
        crate::arch::x86_64::halt_forever()
    }
}

/// Reports the lock-order checker's finding to the host, which ends the VM with it. This CPU
/// stops here: it may hold locks another CPU waits for, in the wrong order.
pub fn report_lock_order(violation: &guest_mm::LockOrderViolation) -> ! {
    let text = BoundedText::<1024>::format(format_args!("{violation}"));
    // SAFETY: this CPU's normal execution ends here (like the panic path): nothing else uses
    // its mailbox after this.
    let mut mailbox = unsafe { Mailbox::take(crate::arch::x86_64::percpu::current()) };
    let n = text.as_str().len().min(mailbox.payload_capacity());
    mailbox.payload()[..n].copy_from_slice(&text.as_str().as_bytes()[..n]);
    let classes = [violation.now.held as u64, violation.now.taken as u64, 0, 0];
    let _ = mailbox.call(Hypercall::LockOrder, 0, n, classes);
    crate::arch::x86_64::halt_forever()
}

/// Text formatted into a fixed buffer, cut at `N` bytes (at a character boundary): what a CPU
/// that may not allocate sends the host.
pub struct BoundedText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> BoundedText<N> {
    pub fn format(args: core::fmt::Arguments<'_>) -> Self {
        let mut text = BoundedText {
            bytes: [0; N],
            len: 0,
        };
        let _ = core::fmt::Write::write_fmt(&mut text, args);
        text
    }

    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.bytes[..self.len]) {
            Ok(text) => text,
            Err(e) => core::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl<const N: usize> core::fmt::Write for BoundedText<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
