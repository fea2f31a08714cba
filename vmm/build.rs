//! Builds the guest kernel for x86_64-unknown-none and embeds it in the vmm binary, so that
//! `cargo run -p vmm -- run` needs no separate step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

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
fn ensure_guest_target() {
    let Some(sysroot) = rustc_sysroot() else {
        return;
    };
    if sysroot.join("lib/rustlib").join(GUEST_TARGET).exists() {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => panic!(
            "the Rust target {GUEST_TARGET} is missing and `rustup target add {GUEST_TARGET}` failed ({other:?}); install it and rebuild"
        ),
    }
}

fn rerun_if_changed_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rerun_if_changed_tree(&path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("vmm lives in the workspace")
        .to_path_buf();
    let guest_dir = root.join("guest-kernel");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest-kernel");

    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "linker.ld",
        "build.rs",
        ".cargo",
    ] {
        rerun_if_changed_tree(&guest_dir.join(path));
    }
    rerun_if_changed_tree(&root.join("shared-mm/src"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("shared-mm/Cargo.toml").display()
    );

    ensure_guest_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's flags and wrappers are for the host; the guest has its own in
    // guest-kernel/.cargo/config.toml.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_LLVM_COV",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the guest kernel");
    assert!(
        status.success(),
        "building the guest kernel failed (see the errors above)"
    );
    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-kernel");
    println!("cargo:rustc-env=GUEST_KERNEL_ELF={}", elf.display());
}
