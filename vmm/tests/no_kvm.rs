//! The seam in the workspace's layout: every crate under `crates/` builds and tests without KVM,
//! so a fuzz target, or anyone who wants the checker for their own MM, can take them without
//! it. `cargo tree` (offline, with normal, build and dev dependencies) shows no kvm-ioctls or
//! kvm-bindings under any of them; `vmm` is where KVM comes in.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates that talk to KVM.
const KVM_CRATES: [&str; 2] = ["kvm-ioctls", "kvm-bindings"];

fn workspace_root() -> PathBuf {
    let vmm = Path::new(env!("CARGO_MANIFEST_DIR"));
    vmm.parent()
        .expect("vmm lives in the workspace")
        .to_path_buf()
}

/// The package names of the crates under `crates/`, from their manifests.
fn crates_dir_packages() -> Vec<String> {
    let dir = workspace_root().join("crates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path().join("Cargo.toml"))
        .filter(|manifest| manifest.is_file())
        .map(|manifest| {
            let text = std::fs::read_to_string(&manifest).expect("a readable manifest");
            let name = text.lines().find_map(|line| line.strip_prefix("name = \""));
            let name = name.unwrap_or_else(|| panic!("{}: no package name", manifest.display()));
            name.trim_end_matches('"').to_string()
        })
        .collect();
    names.sort();
    names
}

/// What `package` depends on (itself first), one `name vX.Y.Z` line each.
fn dependencies(package: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["tree", "--offline", "--package", package])
        .args([
            "--edges",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The KVM crates among `package`'s dependencies.
fn kvm_under(package: &str) -> Vec<String> {
    let kvm = |line: &String| {
        KVM_CRATES
            .iter()
            .any(|k| line.starts_with(&format!("{k} v")))
    };
    dependencies(package).into_iter().filter(kvm).collect()
}

#[test]
fn no_crate_under_crates_pulls_in_kvm() {
    let packages = crates_dir_packages();
    assert!(
        packages.len() >= 9,
        "expected the split's crates, found {packages:?}"
    );
    for package in &packages {
        let kvm = kvm_under(package);
        assert!(kvm.is_empty(), "{package} pulls in KVM: {kvm:?}");
    }
}

/// The check above can see KVM where it is: vmm pulls in both crates.
#[test]
fn vmm_is_where_kvm_comes_in() {
    let kvm = kvm_under("vmm");
    for name in KVM_CRATES {
        assert!(
            kvm.iter()
                .any(|line| line.starts_with(&format!("{name} v"))),
            "vmm's tree has no {name}: {kvm:?}"
        );
    }
}
