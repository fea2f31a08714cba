//! Builds the guest kernel for x86_64-unknown-none, optionally with cargo features (the seeded
//! bugs). Shared by vmm/build.rs, which embeds the default guest, and by tests and tools that
//! need a variant. Uses std only, so the build script can include it by path.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The workspace root of this checkout.
pub fn workspace_root() -> PathBuf {
    let vmm_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    vmm_dir
        .parent()
        .expect("vmm lives in the workspace")
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
pub fn ensure_guest_target() -> Result<(), String> {
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
        other => Err(format!(
            "the Rust target {GUEST_TARGET} is missing and `rustup target add {GUEST_TARGET}` failed ({other:?})"
        )),
    }
}

/// Builds the guest in release mode with `features` into `target_dir`; returns the ELF's path.
pub fn build_guest(
    guest_dir: &Path,
    target_dir: &Path,
    features: &[&str],
) -> Result<PathBuf, String> {
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
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    for var in HOST_ONLY_ENV {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build the guest: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the guest kernel (features {features:?}) failed: {status}"
        ));
    }
    Ok(target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-kernel"))
}

/// Builds a guest variant with `features` (for example `["bug-stale-pte"]`) in its own target
/// directory under `target/guest-variants/`, so variants never overwrite each other.
pub fn build_variant(features: &[&str]) -> Result<PathBuf, String> {
    let name = if features.is_empty() {
        "default".to_string()
    } else {
        features.join("+")
    };
    let target_dir = target_root().join("guest-variants").join(name);
    build_guest(&guest_dir(), &target_dir, features)
}
