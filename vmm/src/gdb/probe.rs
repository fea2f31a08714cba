//! What this KVM's guest debugging delivers, measured in a throwaway VM rather than assumed:
//! whether an `int3` in guest ring 0 comes back as a breakpoint exit (`KVM_GUESTDBG_USE_SW_BP`),
//! and whether a data breakpoint in DR0 fires on a ring-0 store. Hardware-assisted KVM does
//! both; an emulating backend such as `kvm_pvm` ends the `int3` in `KVM_EXIT_INTERNAL_ERROR` and
//! never fires data breakpoints (it checks instruction breakpoints only). Each probe runs once,
//! the first time the stub needs its answer. Whether a step can block interrupts is KVM's own
//! answer (`KVM_CAP_SET_GUEST_DEBUG2`).

use super::breakpoints::{Breakpoints, Hit, Planted, Watching};
use crate::vm::Vm;
use crate::VmmError;
use gdbstub::target::ext::breakpoints::WatchKind;
use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, KVM_CAP_SET_GUEST_DEBUG2, KVM_GUESTDBG_BLOCKIRQ,
};
use kvm_ioctls::VcpuExit;
use mm_driver::GuestConfig;
use shared_mm::boot_info::{KERNEL_VIRT_BASE, MAILBOX_ADDR, MIN_GUEST_RAM, PHYSMAP_BASE};
use vm_memory::{Bytes, GuestAddress};

/// The #BP vector.
pub const BREAKPOINT_VECTOR: u32 = 3;
/// The `int3` instruction.
pub const INT3: u8 = 0xcc;

/// Whether `KVM_SET_GUEST_DEBUG` takes `KVM_GUESTDBG_BLOCKIRQ` here (KVM lists the flags it
/// takes as `KVM_CAP_SET_GUEST_DEBUG2`); no when KVM cannot be asked.
pub fn steps_can_block_interrupts() -> bool {
    let flags = kvm_ioctls::Kvm::new()
        .map(|kvm| kvm.check_extension_raw(KVM_CAP_SET_GUEST_DEBUG2.into()))
        .unwrap_or(0);
    u32::try_from(flags).is_ok_and(|flags| flags & KVM_GUESTDBG_BLOCKIRQ != 0)
}

/// Runs `code` at the kernel entry point of a throwaway VM with `debug` armed; whether its first
/// exit is a debug exit that `expect` accepts. Anything else (an internal error, a halt, a
/// shutdown) is a no: the probe code ends in `hlt`, and a fault meets an empty IDT and shuts the
/// VM down, so the probe cannot hang.
fn probe(
    code: &[u8],
    debug: impl FnOnce(u64) -> kvm_guest_debug,
    expect: impl FnOnce(&kvm_debug_exit_arch, u64) -> bool,
) -> Result<bool, VmmError> {
    let config = GuestConfig {
        memory: MIN_GUEST_RAM,
        timeout: None,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    };
    let mut vm = Vm::new(&config)?;
    let entry = vm.kernel().entry;
    vm.memory()
        .write_slice(code, GuestAddress(entry.wrapping_sub(KERNEL_VIRT_BASE)))
        .map_err(|source| VmmError::GuestMemory {
            what: "writing the probe's code",
            source,
        })?;
    let vcpu = vm.vcpu_mut();
    vcpu.set_guest_debug(&debug(entry))
        .map_err(|source| VmmError::Kvm {
            what: "KVM_SET_GUEST_DEBUG",
            source,
        })?;
    Ok(match vcpu.run() {
        Ok(VcpuExit::Debug(exit)) => expect(&exit, entry),
        _ => false,
    })
}

/// Whether `int3` in guest ring 0 stops as a software breakpoint.
pub fn software_breakpoints_work() -> Result<bool, VmmError> {
    probe(
        &[INT3, 0xf4],
        |entry| {
            let mut planted = Breakpoints::default();
            planted.plant(entry, Planted { phys: 0, saved: 0 });
            planted.guest_debug(false)
        },
        |exit, entry| exit.exception == BREAKPOINT_VECTOR && exit.pc == entry,
    )
}

/// Whether a write watchpoint in a debug register fires on a ring-0 store.
pub fn data_breakpoints_work() -> Result<bool, VmmError> {
    let target = PHYSMAP_BASE + MAILBOX_ADDR;
    let mut code = vec![0x48, 0xb8]; // movabs rax, target
    code.extend_from_slice(&target.to_le_bytes());
    code.extend_from_slice(&[0x48, 0x89, 0x00, 0xf4]); // mov [rax], rax; hlt
    let mut watch = Breakpoints::default();
    watch.add_watch(target, 8, WatchKind::Write, Watching::Register);
    probe(
        &code,
        |_| watch.guest_debug(false),
        |exit, _| watch.hit(exit.dr6).is_some_and(|hit| hit != Hit::Step),
    )
}
