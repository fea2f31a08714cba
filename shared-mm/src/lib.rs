//! What the guest kernel and the VMM agree on: the RegionTree, the hypercall ABI,
//! the boot-info layout, the per-CPU layout and the x86_64 page-table entry format.
//!
//! The ABI and the guest-physical layout: `docs/abi.md`; the RegionTree: `shared-mm/README.md`
//! and `docs/memory-manager.md`.
#![no_std]
// Unsafe code is opt-in per module: only `region_tree` needs it, for its intrusive gap index
// (non-owning links into regions the address index owns). Every other module forbids it.
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod abi;
pub mod address;
#[cfg(feature = "baseline")]
pub mod bench_layouts;
pub mod boot_info;
#[cfg(feature = "baseline")]
pub mod first_fit;
pub mod heartbeat;
pub mod pte;
pub mod region;
#[allow(unsafe_code)]
pub mod region_tree;
pub mod smp;
pub mod trace;
#[cfg(feature = "baseline")]
pub mod try_loop;
pub mod wire;
