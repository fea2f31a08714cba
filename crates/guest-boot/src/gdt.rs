//! The entry GDT the VMM writes for the guest's first instructions (values a C probe proved on
//! this host), and the selectors of its two segments.
#![forbid(unsafe_code)]

/// Kernel 64-bit code segment selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data segment selector.
pub const KERNEL_DS: u16 = 0x10;

/// GDT entries: null, code64, data (the guest installs its own GDT with user segments and a TSS).
pub const ENTRY_GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
