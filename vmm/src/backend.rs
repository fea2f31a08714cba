//! The two places the guest MM runs: in the guest kernel under KVM (the ground truth), or
//! in-process on the simulated machine (fast, deterministic, with a TLB you can see). The same
//! drivers, model, checker and reproducers work on both.
#![forbid(unsafe_code)]

use crate::driver::Driver;
use crate::error::VmmError;
use crate::sim::SimVm;
use crate::vm::{Vm, VmConfig};
use std::fmt;
use std::str::FromStr;
use vm_memory::GuestMemoryMmap;

/// Where the guest MM runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The guest kernel in a KVM virtual machine.
    #[default]
    Kvm,
    /// The MM library on the in-process simulated x86_64 machine.
    Sim,
}

impl Backend {
    /// The name the command line and reproducers use.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kvm => "kvm",
            Backend::Sim => "sim",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is neither `kvm` nor `sim`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend {:?} (expected kvm or sim)",
            bounded_io::excerpt::excerpt(&self.0)
        )
    }
}

impl std::error::Error for UnknownBackend {}

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Backend::Kvm),
            "sim" => Ok(Backend::Sim),
            other => Err(UnknownBackend(other.into())),
        }
    }
}

/// A booted guest on either backend.
pub enum Guest {
    Kvm(Box<Vm>),
    Sim(Box<SimVm>),
}

impl Guest {
    /// Boots a guest on `config.backend`.
    pub fn boot(config: &VmConfig) -> Result<Guest, VmmError> {
        Ok(match config.backend {
            Backend::Kvm => Guest::Kvm(Box::new(Vm::new(config)?)),
            Backend::Sim => Guest::Sim(Box::new(SimVm::new(config)?)),
        })
    }

    /// Runs the guest's MM work from `driver` until the guest exits; returns its status.
    pub fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, VmmError> {
        match self {
            Guest::Kvm(vm) => vm.run(driver),
            Guest::Sim(sim) => sim.run(driver),
        }
    }

    /// Guest RAM, for introspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        match self {
            Guest::Kvm(vm) => vm.memory(),
            Guest::Sim(sim) => sim.memory(),
        }
    }

    /// Everything the guest printed.
    pub fn console_output(&self) -> String {
        match self {
            Guest::Kvm(vm) => vm.console_output(),
            Guest::Sim(sim) => sim.console_output(),
        }
    }
}
