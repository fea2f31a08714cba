//! CPUID for the vCPU: what KVM supports, passed through (without it EFER writes fault here).

use crate::error::VmmError;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// Sets the vCPU's CPUID to `KVM_GET_SUPPORTED_CPUID`; returns the table that was set.
pub fn set_supported_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<CpuId, VmmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    vcpu.set_cpuid2(&cpuid).map_err(|source| VmmError::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })?;
    Ok(cpuid)
}

/// The registers of one CPUID leaf (sub-leaf 0) in `cpuid`, if present.
pub fn leaf(cpuid: &CpuId, function: u32) -> Option<[u32; 4]> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == 0)
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
}
