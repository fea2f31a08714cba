//! Builds the guest kernel for x86_64-unknown-none for this crate to embed, so that
//! `cargo run -p vmm -- run` (and every other user of the image) needs no separate step.
#![forbid(unsafe_code)]

use std::path::Path;

// The build script needs only part of the module.
#[allow(dead_code)]
#[path = "src/variant.rs"]
mod variant;

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
    let root = variant::workspace_root();
    let guest_dir = variant::guest_dir();
    let target_dir = variant::target_root().join("guest-kernel");

    for path in [
        "src",
        "mm/src",
        "mm/Cargo.toml",
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

    let elf = variant::build_guest(&guest_dir, &target_dir, &[]).unwrap_or_else(|e| panic!("{e}"));
    println!("cargo:rustc-env=GUEST_KERNEL_ELF={}", elf.display());
}
