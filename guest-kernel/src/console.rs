//! The serial console on COM1 and the `print!`/`println!` macros.
#![forbid(unsafe_code)]

use crate::arch::x86_64::port::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const LINE_STATUS: u16 = COM1 + 5;
const THR_EMPTY: u8 = 0x20;

/// A 16550 UART on COM1, polled.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            while inb(LINE_STATUS) & THR_EMPTY == 0 {}
            outb(COM1, b);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::_print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::console::_print(format_args!("{}\n", format_args!($($arg)*))));
}
