//! Builds the guest kernel for x86_64-unknown-none, optionally with cargo features (the seeded
//! bugs) and sanitizer coverage. Shared by this crate's build script, which embeds the default
//! guest, and by the CLI, tests and tools that need a variant. Uses std only, so the build
//! script can include it by path.
#![forbid(unsafe_code)]

use std::env;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The guest's target triple.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Environment the outer cargo sets for host builds that must not leak into the guest build
/// (its flags live in guest-kernel/.cargo/config.toml).
const HOST_ONLY_ENV: [&str; 9] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "CARGO_LLVM_COV",
    "CARGO_PROFILE_RELEASE_DEBUG",
];

/// Why a guest could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The toolchain lacks the guest target, and rustup could not add it.
    NoGuestTarget(io::Result<ExitStatus>),
    /// The stale output of a coverage wrapper whose flags changed could not be removed.
    StaleOutput { path: PathBuf, source: io::Error },
    /// The coverage wrapper script could not be written.
    Wrapper { path: PathBuf, source: io::Error },
    /// cargo could not be started.
    CannotRunCargo(io::Error),
    /// cargo ran and failed.
    Failed { variant: String, status: ExitStatus },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoGuestTarget(rustup) => write!(
                f,
                "the Rust target {GUEST_TARGET} is missing and `rustup target add {GUEST_TARGET}` failed ({rustup:?})"
            ),
            BuildError::StaleOutput { path, source } => {
                write!(f, "cannot remove the stale {}: {source}", path.display())
            }
            BuildError::Wrapper { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            BuildError::CannotRunCargo(e) => write!(f, "cannot run cargo to build the guest: {e}"),
            BuildError::Failed { variant, status } => {
                write!(f, "building the guest kernel ({variant}) failed: {status}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// The workspace root of this checkout.
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .nth(2)
        .expect("guest-image lives in crates/ of the workspace")
        .to_path_buf()
}

/// The guest-kernel source directory of this checkout.
pub fn guest_dir() -> PathBuf {
    workspace_root().join("guest-kernel")
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, or the workspace's `target/`.
pub fn target_root() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn rustc_sysroot() -> Option<PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
}

/// Installs the guest target with rustup when the toolchain lacks it (rust-toolchain.toml names
/// it, but older rustup versions do not install targets on first use).
pub fn ensure_guest_target() -> Result<(), BuildError> {
    let Some(sysroot) = rustc_sysroot() else {
        return Ok(());
    };
    if sysroot.join("lib/rustlib").join(GUEST_TARGET).exists() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        other => Err(BuildError::NoGuestTarget(other)),
    }
}

/// The rustc flags of a coverage build: an 8-bit counter per edge in section `__sancov_cntrs`
/// (bracketed by `__start___sancov_cntrs`/`__stop___sancov_cntrs` in linker.ld), with no
/// callbacks and no constructor, so the guest needs no runtime and the host reads the counters.
///
/// The instrumented crates are built as one codegen unit. With the default sixteen the
/// coverage guest kept 389 local functions out of line against the normal guest's 325
/// (`BTreeMap` search, iterator adapters, small MM methods), and every call costs emulated
/// ring-0 instructions here; with one unit it keeps 312. The likely reason: rustc inlines
/// across a crate's units (its local ThinLTO) after the sancov pass, where the counters make
/// callees look too big. README, Fuzzing, has the ops/s before and after.
pub const COVERAGE_RUSTFLAGS: [&str; 5] = [
    "-Ccodegen-units=1",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=3",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-drop-ctors",
];

/// The crates a coverage build instruments: the MM library and the `RegionTree` crate, which
/// is what the fuzzer aims at. The rest of the kernel (agent loop, mailbox codec, heap allocator,
/// console) is left out: under this host's emulating KVM every counter costs guest time, and the
/// whole kernel instrumented ran about 1.6× slower than the normal guest, these two crates
/// about 1.15× (README, Fuzzing).
pub const COVERAGE_CRATES: [&str; 2] = ["guest_mm", "shared_mm"];

/// Writes a `RUSTC_WRAPPER` script into `target_dir` that runs rustc with
/// [`COVERAGE_RUSTFLAGS`] for the [`COVERAGE_CRATES`] and unchanged for every other crate (cargo
/// has no stable per-crate rustflags), and returns its path.
fn coverage_wrapper(target_dir: &Path) -> Result<PathBuf, BuildError> {
    let script = format!(
        "#!/bin/sh\n\
         # Written by guest-image (variant.rs): rustc, with sanitizer coverage for {crates}.\n\
         rustc=\"$1\"; shift\n\
         name=; prev=\n\
         for arg in \"$@\"; do\n\
         \x20 [ \"$prev\" = --crate-name ] && name=$arg\n\
         \x20 prev=$arg\n\
         done\n\
         case \"$name\" in\n\
         \x20 {cases}) exec \"$rustc\" \"$@\" {flags} ;;\n\
         esac\n\
         exec \"$rustc\" \"$@\"\n",
        crates = COVERAGE_CRATES.join(" and "),
        cases = COVERAGE_CRATES.join("|"),
        flags = COVERAGE_RUSTFLAGS.join(" "),
    );
    let path = target_dir.join("sancov-rustc.sh");
    // Cargo does not fingerprint the wrapper's contents: when the flags change, the crates it
    // built before must be built again.
    let stale = std::fs::read_to_string(&path).is_ok_and(|old| old != script);
    let built = target_dir.join(GUEST_TARGET);
    if stale && built.exists() {
        std::fs::remove_dir_all(&built).map_err(|source| BuildError::StaleOutput {
            path: built.clone(),
            source,
        })?;
    }
    let written = std::fs::create_dir_all(target_dir)
        .and_then(|()| std::fs::write(&path, script))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        });
    written.map_err(|source| BuildError::Wrapper {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Which guest to build: cargo features (for example `bug-stale-pte`) and whether to instrument
/// it with per-edge coverage counters ([`COVERAGE_RUSTFLAGS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestVariant {
    pub features: Vec<String>,
    pub coverage: bool,
}

impl GuestVariant {
    /// The variant with `features`, without coverage.
    pub fn new(features: &[&str]) -> Self {
        GuestVariant {
            features: features.iter().map(|f| f.to_string()).collect(),
            coverage: false,
        }
    }

    /// The same variant, instrumented for coverage.
    pub fn with_coverage(self) -> Self {
        GuestVariant {
            coverage: true,
            ..self
        }
    }

    /// A name unique per variant, for its target directory: `default`, `bug-a+bug-b`,
    /// `default+coverage`, `bug-a+coverage`.
    pub fn name(&self) -> String {
        let mut name = if self.features.is_empty() {
            "default".to_string()
        } else {
            self.features.join("+")
        };
        if self.coverage {
            name.push_str("+coverage");
        }
        name
    }
}

/// Builds the guest in release mode with `features` into `target_dir`; returns the ELF's path.
pub fn build_guest(
    guest_dir: &Path,
    target_dir: &Path,
    features: &[&str],
) -> Result<PathBuf, BuildError> {
    build_guest_with(guest_dir, target_dir, &GuestVariant::new(features))
}

/// Builds `variant` of the guest in release mode into `target_dir`; returns the ELF's path.
///
/// Coverage flags go in through a `RUSTC_WRAPPER` (`coverage_wrapper`) that adds them to the
/// [`COVERAGE_CRATES`] only; the rustflags of guest-kernel/.cargo/config.toml (the code model and
/// relocation model the kernel needs) stay as they are for every crate.
pub fn build_guest_with(
    guest_dir: &Path,
    target_dir: &Path,
    variant: &GuestVariant,
) -> Result<PathBuf, BuildError> {
    ensure_guest_target()?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guest_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(target_dir);
    if !variant.features.is_empty() {
        cmd.args(["--features", &variant.features.join(",")]);
    }
    for var in HOST_ONLY_ENV {
        cmd.env_remove(var);
    }
    if variant.coverage {
        cmd.env("RUSTC_WRAPPER", coverage_wrapper(target_dir)?);
    }
    let status = cmd.status().map_err(BuildError::CannotRunCargo)?;
    if !status.success() {
        return Err(BuildError::Failed {
            variant: variant.name(),
            status,
        });
    }
    Ok(target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-kernel"))
}

/// Builds a guest variant with `features` (for example `["bug-stale-pte"]`) in its own target
/// directory under `target/guest-variants/`, so variants never overwrite each other.
pub fn build_variant(features: &[&str]) -> Result<PathBuf, BuildError> {
    build_variant_with(&GuestVariant::new(features))
}

/// Builds `variant` in its own target directory, `target/guest-variants/<variant name>/`.
pub fn build_variant_with(variant: &GuestVariant) -> Result<PathBuf, BuildError> {
    let target_dir = target_root().join("guest-variants").join(variant.name());
    build_guest_with(&guest_dir(), &target_dir, variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapper written with other flags leaves crates built with them: they are removed, and
    /// a wrapper that is unchanged keeps what was built.
    #[test]
    fn a_changed_coverage_wrapper_clears_what_it_built() {
        let dir =
            std::env::temp_dir().join(format!("guest-image-wrapper-test-{}", std::process::id()));
        let built = dir.join(GUEST_TARGET).join("release");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(dir.join("sancov-rustc.sh"), "#!/bin/sh\n# older flags\n").unwrap();
        coverage_wrapper(&dir).unwrap();
        assert!(!dir.join(GUEST_TARGET).exists());
        std::fs::create_dir_all(&built).unwrap();
        coverage_wrapper(&dir).unwrap();
        assert!(built.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variant_names_are_distinct_per_target_dir() {
        let names = [
            GuestVariant::default(),
            GuestVariant::new(&["bug-a", "bug-b"]),
            GuestVariant::default().with_coverage(),
            GuestVariant::new(&["bug-a"]).with_coverage(),
        ]
        .map(|v| v.name());
        assert_eq!(
            names,
            [
                "default",
                "bug-a+bug-b",
                "default+coverage",
                "bug-a+coverage"
            ]
        );
    }
}
