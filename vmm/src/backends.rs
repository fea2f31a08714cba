//! The backends the vmm binary links, behind the seam's [`Boot`]: kvm (the guest kernel under
//! KVM, with the gdb stub when `--gdb` asks for one) and sim (the MM library in-process).
#![forbid(unsafe_code)]

use crate::gdb::GdbServer;
use crate::vm::Vm;
use mm_driver::{Backend, Boot, Guest, GuestConfig, RunError};
use mm_sim::SimVm;

/// Boots guests on either backend. The first kvm guest booted with a gdb stub claims it and
/// waits for gdb; later guests (a fuzz campaign's next sessions, its shrinking) run without.
#[derive(Clone, Default)]
pub struct Backends {
    pub gdb: Option<GdbServer>,
}

impl Boot for Backends {
    fn boot(&self, config: &GuestConfig) -> Result<Box<dyn Guest>, RunError> {
        Ok(match config.backend {
            Backend::Kvm => {
                let mut vm = Vm::new(config)?;
                if let Some(server) = &self.gdb {
                    vm.claim_gdb(server);
                }
                Box::new(vm)
            }
            Backend::Sim => Box::new(SimVm::new(config)?),
        })
    }
}
