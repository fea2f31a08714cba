//! Port-mapped I/O: the serial console and the hypercall doorbell.

use core::arch::asm;

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the kernel only names ports the VMM emulates (COM1 and the hypercall doorbells);
    // `out` touches no memory the compiler knows about. The asm is not `nomem`, so it also acts
    // as a compiler barrier: mailbox writes before a doorbell are not reordered past it.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; `in` from an emulated port has no memory side effects.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nostack, preserves_flags)) }
    value
}
