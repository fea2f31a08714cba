//! Hostile behaviours, on the host's request: the guest attacks the VMM's page walker and
//! decoders the way a compromised kernel could, so the host's tests can show it survives.
#![forbid(unsafe_code)]

use crate::agent::{Mm, MmCpu};
use crate::arch::x86_64::physmap::write_entry;
use crate::hypercall::Mailbox;
use guest_mm::page_directory::KERNEL_HALF_FIRST_SLOT;
use shared_mm::abi::{Hypercall, Op};
use shared_mm::pte::{PageTableEntry, PageTableFlags};

/// Creates space 1 and points every user-half entry of its PML4 at the PML4 itself, so a
/// walk of its tables that followed them to the end would visit 512^4 leaves.
pub fn alias_tables(mm: &Mm, cpu: &mut MmCpu) {
    mm.execute(cpu, Op::CreateSpace);
    let (spaces, _) = mm.space_records(cpu);
    let Some(space) = spaces.first().filter(|s| s.space == 1) else {
        panic!("space 1 could not be created");
    };
    let pml4 = space.cr3;
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::USER;
    let entry = PageTableEntry::new(pml4, flags).raw();
    for slot in 0..KERNEL_HALF_FIRST_SLOT {
        write_entry(pml4, slot, entry);
    }
}

/// A `Batch` hypercall announcing 2^60 space records after no results.
pub fn huge_count(mailbox: &mut Mailbox) {
    let _ = mailbox.call(Hypercall::Batch, 0, 0, [1 << 60, 0, 0, 0]);
}
