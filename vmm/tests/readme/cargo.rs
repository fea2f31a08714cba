//! The cargo command lines a page names (`cargo test -p guest-mm`, `cargo bench -p vmm --bench
//! system`): each package and target must be one of the workspace's, and each option one the
//! cargo subcommand takes.

use crate::{repo, At};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A target of a workspace package.
pub struct Target {
    /// As cargo names kinds: `lib`, `bin`, `test`, `bench`, `example`, ...
    pub kind: String,
    pub name: String,
    /// Its root source file.
    pub src: PathBuf,
}

/// Each workspace package's targets, by package name.
pub fn workspace() -> &'static HashMap<String, Vec<Target>> {
    static WORKSPACE: OnceLock<HashMap<String, Vec<Target>>> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let out = cargo()
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(repo())
            .output()
            .expect("cannot start cargo metadata");
        assert!(out.status.success(), "cargo metadata failed");
        let metadata: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
        let packages = metadata["packages"].as_array().expect("a package list");
        packages.iter().map(package_targets).collect()
    })
}

fn package_targets(package: &serde_json::Value) -> (String, Vec<Target>) {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
    let targets = package["targets"].as_array().into_iter().flatten();
    let targets = targets.flat_map(|target| {
        let kinds = target["kind"].as_array().into_iter().flatten();
        kinds.map(|kind| Target {
            kind: text(kind),
            name: text(&target["name"]),
            src: PathBuf::from(text(&target["src_path"])),
        })
    });
    (text(&package["name"]), targets.collect())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The help text of `cargo WORDS`, which lists its options (empty if cargo refuses it).
fn help(words: &[&str]) -> String {
    let out = cargo().args(words).arg("--help").output();
    let out = out.expect("cannot start cargo");
    match out.status.success() {
        true => String::from_utf8_lossy(&out.stdout).into_owned(),
        false => String::new(),
    }
}

/// Whether a script of `scripts/` installs the cargo plugin `cargo-SUBCOMMAND` where it is
/// missing (its options are then checked wherever it is installed).
fn installed_by_a_script(subcommand: &str) -> bool {
    let scripts = std::fs::read_dir(repo().join("scripts")).expect("listing scripts/");
    let install = format!("cargo install cargo-{subcommand}");
    scripts
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .any(|text| text.contains(&install))
}

/// Whether `text` is a help text: it has a usage line (`Usage:`, or `USAGE:` as cargo-fuzz
/// 0.13's nested subcommands print it).
fn is_help(text: &str) -> bool {
    text.contains("Usage") || text.contains("USAGE")
}

/// The help of the subcommand `args` run: `cargo SUB`, or `cargo SUB NESTED` for a plugin's own
/// subcommand (`cargo fuzz run`), whose options are the ones that count.
fn subcommand_help(subcommand: &str, args: &[String]) -> String {
    let nested = args.first().filter(|word| !word.starts_with('-'));
    let nested = nested.map(|word| help(&[subcommand, word.as_str()]));
    nested
        .filter(|text| is_help(text))
        .unwrap_or_else(|| help(&[subcommand]))
}

/// Options that take a value, and the target kind the value names (if it names one).
const VALUED: &[(&str, Option<&str>)] = &[
    ("-p", None),
    ("--package", None),
    ("--test", Some("test")),
    ("--bench", Some("bench")),
    ("--bin", Some("bin")),
    ("--example", Some("example")),
    ("--features", None),
    ("--target", None),
];

/// Checks `cargo ARGS` (ARGS without `cargo`): the subcommand exists and knows each option
/// given before a `--`; each package is a workspace member, each named target one of theirs.
pub fn check_cargo(at: At, args: &[String]) {
    let Some(subcommand) = args.first() else {
        panic!("{at}: `cargo` alone");
    };
    let args = &args[1..];
    let help = subcommand_help(subcommand, args);
    if !is_help(&help) {
        assert!(
            installed_by_a_script(subcommand),
            "{at}: `cargo {subcommand}` is no cargo subcommand here, and no script installs it"
        );
        return;
    }
    let args = &args[..args.iter().position(|a| a == "--").unwrap_or(args.len())];
    let mut packages = Vec::new();
    let mut targets = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if !word.starts_with('-') {
            continue;
        }
        assert!(
            help.contains(&format!("{word} ")) || help.contains(&format!("{word},")),
            "{at}: `cargo {subcommand}` has no option {word}"
        );
        if let Some((_, kind)) = VALUED.iter().find(|(option, _)| option == word) {
            let value = words
                .next()
                .unwrap_or_else(|| panic!("{at}: {word} without a value"));
            match kind {
                Some(kind) => targets.push((*kind, value.as_str())),
                None if word == "-p" || word == "--package" => packages.push(value.as_str()),
                None => {}
            }
        }
    }
    check_targets(at, &packages, &targets);
}

fn check_targets(at: At, packages: &[&str], targets: &[(&str, &str)]) {
    let workspace = workspace();
    for package in packages {
        assert!(
            workspace.contains_key(*package),
            "{at}: -p {package}: no such package in the workspace"
        );
    }
    for (kind, name) in targets {
        let mut candidates = workspace
            .iter()
            .filter(|(package, _)| packages.is_empty() || packages.contains(&package.as_str()));
        assert!(
            candidates
                .any(|(_, targets)| targets.iter().any(|t| t.kind == *kind && t.name == *name)),
            "{at}: --{kind} {name}: no such {kind} target"
        );
    }
}
