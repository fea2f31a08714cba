//! The guest a subcommand boots, from its options: the kernel image (`--kernel`, a seeded-bug
//! or coverage variant, or the embedded guest), the backend-neutral config, and the backends
//! that boot it, with the gdb stub `--gdb` asks for; and the options a reproducer's or
//! scenario's header fills in.
#![forbid(unsafe_code)]

use crate::GuestArgs;
use anyhow::{anyhow, bail};
use bounded_io::excerpt::excerpt;
use bounded_io::files::{open_regular, read_capped, FileError};
use guest_image::variant::{build_variant_with, GuestVariant};
use guest_mm::{Bug, SeededBugs};
use mm_driver::{Backend, GuestConfig};
use mm_scenario::header::Settings;
use shared_mm::boot_info::GuestCommand;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm::gdb::GdbServer;
use vmm::{Backends, VmmError};

/// Largest kernel image `--kernel` reads.
const MAX_KERNEL_BYTES: u64 = 64 << 20;

/// The seeded bugs `features` name; every feature must be one.
pub fn seeded_bugs(features: &[String]) -> anyhow::Result<SeededBugs> {
    features.iter().try_fold(SeededBugs::NONE, |bugs, name| {
        let bug = Bug::from_feature(name).ok_or_else(|| {
            let known: Vec<&str> = Bug::ALL.iter().map(|b| b.feature()).collect();
            anyhow!(
                "unknown guest feature {:?} (the seeded bugs are {})",
                excerpt(name),
                known.join(", ")
            )
        })?;
        Ok(bugs.with(bug))
    })
}

/// The kernel image to boot under KVM and how reproducers name it: `--kernel`, a variant
/// built with `features` (and coverage), or the embedded guest.
fn kvm_kernel(args: &GuestArgs, coverage: bool) -> anyhow::Result<(Vec<u8>, String)> {
    let read = |path: &Path| -> Result<Vec<u8>, VmmError> {
        read_capped(path, MAX_KERNEL_BYTES).map_err(|e| match e {
            FileError::Io { path, source } => VmmError::KernelUnreadable { path, source },
            FileError::NotRegular { path, kind } => VmmError::KernelUnreadable {
                path,
                source: std::io::Error::other(format!("{kind}, not a regular file")),
            },
            too_large => VmmError::File(too_large),
        })
    };
    if let Some(path) = &args.kernel {
        if coverage || !args.features().is_empty() {
            bail!("--kernel cannot be combined with --coverage or --guest-features");
        }
        return Ok((read(path)?, path.display().to_string()));
    }
    if !coverage && args.features().is_empty() {
        return Ok((guest_image::EMBEDDED_KERNEL.to_vec(), "embedded".into()));
    }
    let features: Vec<&str> = args.features().iter().map(String::as_str).collect();
    let mut variant = GuestVariant::new(&features);
    if coverage {
        variant = variant.with_coverage();
    }
    eprintln!("vmm: building guest variant {}", variant.name());
    let path = build_variant_with(&variant)?;
    Ok((read(&path)?, path.display().to_string()))
}

/// The ELF gdb loads for a kernel labelled `label` (a path, or `embedded`).
fn elf_for_gdb(label: &str) -> String {
    let path = if label == "embedded" {
        guest_image::EMBEDDED_KERNEL_PATH
    } else {
        label
    };
    if Path::new(path).is_file() {
        path.to_string()
    } else {
        format!("<the guest ELF; {path} is gone>")
    }
}

/// The gdb stub `--gdb` asks for, listening, with the command line that connects to it.
fn gdb_server(args: &GuestArgs, label: &str) -> anyhow::Result<Option<GdbServer>> {
    let Some(addr) = &args.gdb else {
        return Ok(None);
    };
    if args.backend() == Backend::Sim {
        bail!("--gdb needs --backend kvm: sim runs the MM in-process, with no guest CPU to debug");
    }
    let server = GdbServer::bind(addr).map_err(VmmError::from)?;
    let at = server.local_addr();
    eprintln!(
        "vmm: gdb stub listening on {at}; connect with: gdb -q {} -ex 'target remote {at}'",
        elf_for_gdb(label)
    );
    Ok(Some(server))
}

/// The guest configuration `args` describe, the backends that boot it (with the gdb stub
/// `--gdb` asks for), and the kernel's label for reproducers.
pub fn config_with(
    args: &GuestArgs,
    command: GuestCommand,
    coverage: bool,
) -> anyhow::Result<(GuestConfig, Backends, String)> {
    let seeded = seeded_bugs(args.features())?;
    let (kernel, label, seeded_bugs) = match args.backend() {
        Backend::Kvm => {
            let (kernel, label) = kvm_kernel(args, coverage)?;
            (kernel, label, SeededBugs::NONE)
        }
        Backend::Sim => {
            if args.kernel.is_some() {
                bail!("--kernel needs --backend kvm: sim runs the MM library built into vmm");
            }
            if coverage {
                bail!("--coverage needs --backend kvm: the sim's MM is not instrumented");
            }
            // The embedded image only lays out RAM; its code does not run.
            (
                guest_image::EMBEDDED_KERNEL.to_vec(),
                "embedded".into(),
                seeded,
            )
        }
    };
    let gdb = gdb_server(args, &label)?;
    let config = GuestConfig {
        kernel,
        cpus: args.cpus(),
        // Saturates: an overflowing size is then refused by the VM's own size check.
        memory: args.memory_mib().saturating_mul(1 << 20),
        timeout: (args.timeout > 0.0)
            .then(|| Duration::try_from_secs_f64(args.timeout))
            .transpose()
            .map_err(|e| anyhow!("--timeout {}: {e}", args.timeout))?,
        echo_console: true,
        random_seed: args.seed(),
        command,
        backend: args.backend(),
        trace: true,
        seeded_bugs,
        schedule: None,
    };
    Ok((config, Backends { gdb }, label))
}

pub fn config(args: &GuestArgs, command: GuestCommand) -> anyhow::Result<(GuestConfig, Backends)> {
    config_with(args, command, false).map(|(config, backends, _)| (config, backends))
}

/// `guest` with what the command line leaves open taken from a file's header: the same seed
/// (randomized placement depends on it), RAM size, CPUs, backend, seeded bugs and kernel make
/// the same run. A recorded kernel (other than the embedded one) must be a readable regular
/// file: another kernel would not make the same run.
pub fn recorded_args(guest: &GuestArgs, recorded: &Settings) -> anyhow::Result<GuestArgs> {
    let mut guest = guest.clone();
    guest.seed = guest.seed.or(recorded.seed);
    guest.memory = guest.memory.or(recorded.memory_mib);
    guest.cpus = guest.cpus.or(recorded.cpus);
    guest.backend = guest.backend.or(recorded.backend);
    if guest.guest_features.is_none() {
        guest.guest_features.clone_from(&recorded.guest_features);
    }
    let recorded_kernel = recorded.kernel.as_deref().map(PathBuf::from);
    let variant_given = !guest.features().is_empty();
    if guest.kernel.is_none() && guest.backend() == Backend::Kvm && !variant_given {
        if let Some(path) = recorded_kernel.filter(|p| p != Path::new("embedded")) {
            open_regular(&path)
                .map_err(|e| anyhow!("recorded kernel {e} (give --kernel PATH to boot another)"))?;
            guest.kernel = Some(path);
        }
    }
    Ok(guest)
}
