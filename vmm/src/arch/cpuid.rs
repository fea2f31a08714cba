//! CPUID for each vCPU: what KVM supports, passed through (without it EFER writes fault here),
//! with the vCPU's own APIC id.

use crate::error::VmmError;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// `KVM_GET_SUPPORTED_CPUID`, with the host's brand string where KVM reports none: the table
/// every vCPU starts from.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    fill_brand_string(&mut cpuid);
    Ok(cpuid)
}

/// Sets the CPUID of vCPU `cpu` to `supported` with its APIC id (`cpu`, the id KVM's local
/// APIC has) in leaf 1 `EBX[31:24]` and in EDX of every sub-leaf of leaves 0xB and 0x1F; returns
/// the table KVM applied, read back with `KVM_GET_CPUID2` (some backends, PVM among them,
/// rewrite feature bits on the way in).
pub fn set_cpuid(vcpu: &VcpuFd, supported: &CpuId, cpu: u32) -> Result<CpuId, VmmError> {
    let mut cpuid = supported.clone();
    set_apic_id(&mut cpuid, cpu);
    vcpu.set_cpuid2(&cpuid).map_err(|source| VmmError::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })?;
    vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_CPUID2",
            source,
        })
}

/// The registers of one CPUID leaf (sub-leaf 0) in `cpuid`, if present.
pub fn leaf(cpuid: &CpuId, function: u32) -> Option<[u32; 4]> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == 0)
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
}

fn set_apic_id(cpuid: &mut CpuId, apic_id: u32) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (apic_id << 24),
            0xb | 0x1f => entry.edx = apic_id,
            _ => {}
        }
    }
}

/// Some KVM backends (this host's PVM among them) report the brand-string leaves as zeros;
/// pass the host CPU's brand string through instead, as a physical CPU would show one.
fn fill_brand_string(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        let is_brand_leaf = (0x8000_0002..=0x8000_0004).contains(&entry.function);
        if is_brand_leaf
            && entry.index == 0
            && [entry.eax, entry.ebx, entry.ecx, entry.edx] == [0; 4]
        {
            let host = std::arch::x86_64::__cpuid(entry.function);
            (entry.eax, entry.ebx, entry.ecx, entry.edx) = (host.eax, host.ebx, host.ecx, host.edx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn the_apic_id_goes_in_leaf_1_and_the_topology_leaves_only() {
        let entry = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x11,
            ebx: 0x00aa_bbcc,
            ecx: 0x22,
            edx: 0x33,
            ..Default::default()
        };
        let entries = [
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x1f, 0),
            entry(7, 0),
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("a small table");
        set_apic_id(&mut cpuid, 3);
        let got: Vec<_> = cpuid.as_slice().iter().map(|e| (e.ebx, e.edx)).collect();
        assert_eq!(
            got,
            [
                (0x03aa_bbcc, 0x33),
                (0x00aa_bbcc, 3),
                (0x00aa_bbcc, 3),
                (0x00aa_bbcc, 3),
                (0x00aa_bbcc, 0x33)
            ]
        );
    }
}
