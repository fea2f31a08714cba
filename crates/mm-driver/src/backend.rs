//! The two places the guest MM runs: in the guest kernel under KVM (the ground truth), or
//! in-process on the simulated machine (fast, deterministic, with a TLB you can see). The same
//! drivers, model, checker and reproducers work on both: they see a booted [`Guest`], and boot
//! one through whatever [`Boot`] the program links in (vmm: both backends; a fuzz target that
//! needs no KVM: the sim alone).
#![forbid(unsafe_code)]

use crate::config::GuestConfig;
use crate::driver::Driver;
use crate::run_error::RunError;
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

    /// Whether the backend chooses how its CPUs interleave, and so follows a
    /// [`crate::GuestConfig::schedule`]: the sim does; under kvm the hardware interleaves.
    pub fn follows_schedules(self) -> bool {
        self == Backend::Sim
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

/// A booted guest, on whichever backend booted it.
pub trait Guest {
    /// Runs the guest's MM work from `driver` until the guest exits; returns its status.
    fn run(&mut self, driver: &mut dyn Driver) -> Result<u32, RunError>;

    /// Guest RAM, for introspection.
    fn memory(&self) -> &GuestMemoryMmap;

    /// Everything the guest printed.
    fn console_output(&self) -> String;

    /// The schedule its CPUs ran, where the backend chooses it (the sim with several CPUs):
    /// every round that did not run as the default would. `None` elsewhere.
    fn schedule(&self) -> Option<crate::Schedule> {
        None
    }
}

/// What boots guests: the backends a program links in. Fuzz jobs boot from several threads,
/// so it is `Sync`.
pub trait Boot: Sync {
    /// Boots a guest as `config` says, on `config.backend`; a backend this program does not
    /// link is [`RunError::BackendUnsupported`].
    fn boot(&self, config: &GuestConfig) -> Result<Box<dyn Guest>, RunError>;
}
