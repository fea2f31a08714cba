//! CPUID for the vCPU: what KVM supports, passed through (without it EFER writes fault here).

use crate::error::VmmError;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// Sets the vCPU's CPUID to `KVM_GET_SUPPORTED_CPUID`; returns the table KVM applied, read back
/// with `KVM_GET_CPUID2` (some backends, PVM among them, rewrite feature bits on the way in).
pub fn set_supported_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    fill_brand_string(&mut cpuid);
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
