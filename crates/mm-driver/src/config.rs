//! How to boot a guest, whichever backend runs it: the kernel image, RAM, CPUs, time limit,
//! seed, boot command, flush trace and seeded bugs. Backend-specific attachments (the kvm
//! backend's gdb stub) belong to the backend that boots it, not here.
#![forbid(unsafe_code)]

use crate::backend::Backend;
use crate::schedule::Schedule;
use guest_boot::BootSpec;
use guest_mm::SeededBugs;
use shared_mm::boot_info::GuestCommand;
use std::time::Duration;

/// Guest RAM of [`GuestConfig::new`].
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// How to boot a guest.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The kernel ELF image (the sim only lays it out in RAM, so that both backends start from
    /// the same RAM).
    pub kernel: Vec<u8>,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// CPUs (1 to [`MAX_CPUS`](shared_mm::smp::MAX_CPUS)). With more than one, the VM has the
    /// in-kernel irqchip and one thread per vCPU (KVM only).
    pub cpus: u32,
    /// Stop a guest that runs this long; `None` lets it run forever.
    pub timeout: Option<Duration>,
    /// Stream guest console output to stdout (it is always captured too).
    pub echo_console: bool,
    /// Seed for the guest's randomized placement.
    pub random_seed: u64,
    /// What the guest does after boot.
    pub command: GuestCommand,
    /// Where the guest MM runs.
    pub backend: Backend,
    /// Whether the MM writes the flush trace (the TLB coherence checker needs it; the bench
    /// turns it off to measure its cost).
    pub trace: bool,
    /// Seeded bugs the sim backend plants at run time. Under KVM the kernel image carries its
    /// bugs (as cargo features), and this is ignored.
    pub seeded_bugs: SeededBugs,
    /// With several CPUs on the sim: the schedule to follow (a reproducer's, or one written by
    /// hand); the rounds it leaves out run as [`Schedule`] says. `None`: the PCT scheduler,
    /// seeded from `random_seed`, chooses every round.
    pub schedule: Option<Schedule>,
}

impl GuestConfig {
    /// A guest of `kernel` with the defaults: 256 MiB, one CPU, a 60 s time limit, no echo,
    /// seed 0x5eed, the MM agent, the kvm backend, the flush trace on, no seeded bugs, the sim's schedules chosen by PCT.
    pub fn new(kernel: Vec<u8>) -> Self {
        GuestConfig {
            kernel,
            memory: DEFAULT_MEMORY,
            cpus: 1,
            timeout: Some(Duration::from_secs(60)),
            echo_console: false,
            random_seed: 0x5eed,
            command: GuestCommand::Serve,
            backend: Backend::Kvm,
            trace: true,
            seeded_bugs: SeededBugs::NONE,
            schedule: None,
        }
    }

    /// What booting this guest lays out in RAM.
    pub fn boot_spec(&self) -> BootSpec<'_> {
        BootSpec {
            kernel: &self.kernel,
            memory: self.memory,
            cpus: self.cpus,
            random_seed: self.random_seed,
            command: self.command,
            trace: self.trace,
        }
    }
}
