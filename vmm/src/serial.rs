//! The COM1 serial console (vm-superio's 16550), streaming guest output to stdout and a capture.

use std::io::Write;
use std::sync::{Arc, Mutex};
use vm_superio::{Serial, Trigger};

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of COM1 registers.
pub const COM1_LEN: u16 = 8;

/// The guest has no interrupt controller; it polls the line status register.
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Where serial bytes go: optionally stdout, always an in-memory capture for tests and reports.
#[derive(Clone)]
pub struct ConsoleSink {
    echo: bool,
    captured: Arc<Mutex<Vec<u8>>>,
}

impl ConsoleSink {
    pub fn new(echo: bool) -> Self {
        ConsoleSink {
            echo,
            captured: Arc::default(),
        }
    }

    /// Everything the guest printed so far.
    pub fn captured(&self) -> String {
        let bytes = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        if self.echo {
            let mut out = std::io::stdout().lock();
            out.write_all(buf)?;
            if buf.contains(&b'\n') {
                out.flush()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// COM1 as the guest sees it.
pub struct SerialConsole {
    uart: Serial<NoInterrupt, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialConsole {
    pub fn new(sink: ConsoleSink) -> Self {
        SerialConsole {
            uart: Serial::new(NoInterrupt, sink),
        }
    }

    /// Handles a guest `out` to COM1 register `offset`.
    pub fn write(&mut self, offset: u8, value: u8) -> std::io::Result<()> {
        self.uart
            .write(offset, value)
            .map_err(|e| std::io::Error::other(format!("serial write: {e:?}")))
    }

    /// Handles a guest `in` from COM1 register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn sink(&self) -> &ConsoleSink {
        self.uart.writer()
    }
}
