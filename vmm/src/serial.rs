//! The COM1 serial console (vm-superio's 16550), writing guest output to a [`ConsoleSink`].
#![forbid(unsafe_code)]

use mm_driver::console::ConsoleSink;
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
