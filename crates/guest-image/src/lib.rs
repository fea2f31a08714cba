//! The guest kernel image every backend lays out in RAM: the default guest, built from
//! `guest-kernel/` by this crate's build script and embedded, and variants (seeded bugs,
//! sanitizer coverage) built on demand. The kvm backend runs the image; the sim only lays it
//! out, so that the same seed gives the same results on both. Where it sits among the crates:
//! `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod variant;

/// The default guest kernel, built by this crate's build script and embedded.
pub static EMBEDDED_KERNEL: &[u8] = include_bytes!(env!("GUEST_KERNEL_ELF"));

/// Where the build script left that ELF, with its debug info, for gdb.
pub const EMBEDDED_KERNEL_PATH: &str = env!("GUEST_KERNEL_ELF");
