//! The KVM segment descriptors that match the entry GDT ([`guest_boot::gdt`]).

use kvm_bindings::kvm_segment;

/// Decodes a GDT entry into the segment KVM expects in `kvm_sregs`.
pub fn segment_from_entry(selector: u16, entry: u64) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let mut limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_boot::gdt::{ENTRY_GDT, KERNEL_CS, KERNEL_DS};

    #[test]
    fn code64_decodes_to_a_long_mode_segment() {
        let cs = segment_from_entry(KERNEL_CS, ENTRY_GDT[1]);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.dpl, cs.s, cs.type_),
            (1, 0, 1, 0, 1, 0xa)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_entry(KERNEL_DS, ENTRY_GDT[2]);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 0x2));
    }
}
