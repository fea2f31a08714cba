//! The `vmm inspect` command line: JSON on stdout, the SVG file, and a clean error for a bad path.
#![forbid(unsafe_code)]

use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// `vmm inspect` with a small guest and the guest's own time limit, so it always ends.
fn inspect(extra: &[&str]) -> Output {
    Command::new(VMM)
        .args(["inspect", "--memory", "64", "--timeout", "10"])
        .args(extra)
        .output()
        .expect("cannot start vmm")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn json_goes_to_stdout_alone() {
    let out = inspect(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)));
    let names: Vec<&str> = doc["spaces"]
        .as_array()
        .expect("spaces")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["space 1", "space 2", "space 3", "space 4", "kernel"]
    );
}

/// With two CPUs the AP reads a page of space 1 before the snapshots, so the TLB line and the
/// JSON name both CPUs for that space (the AP keeps it loaded, lazily), and CPU 0 alone for none.
#[test]
fn with_two_cpus_each_space_names_the_cpus_that_may_cache_it() {
    let out = inspect(&["--cpus", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tlb: 11 translations possibly cached (loaded on cpus 0, 1)"),
        "{}",
        describe(&out)
    );
    let out = inspect(&["--cpus", "2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)));
    let cpus: Vec<String> = doc["spaces"]
        .as_array()
        .expect("spaces")
        .iter()
        .map(|s| s["cpus"].to_string())
        .collect();
    assert_eq!(cpus, ["[0,1]", "[]", "[]", "[]", "[]"]);
}

#[test]
fn table_and_svg_file() {
    let path = std::env::temp_dir().join(format!("vmm-inspect-{}.svg", std::process::id()));
    let out = inspect(&["--svg", path.to_str().expect("utf-8 temp dir")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("space 1: cr3 0x"), "{}", describe(&out));
    assert!(stdout.contains("<trampoline>"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    let svg = std::fs::read_to_string(&path).expect("the SVG was written");
    std::fs::remove_file(&path).expect("remove the SVG");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn unwritable_svg_path_is_a_clean_error() {
    let out = inspect(&["--svg", "/nonexistent-dir/x.svg"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vmm: error: cannot write the SVG map: /nonexistent-dir/x.svg"),
        "{}",
        describe(&out)
    );
}

/// A device named as the SVG file is written in place: a full one is an error (exit 2) and stays
/// a device, never renamed over; `/dev/stdout` (a pipe here) gets the map after the table.
#[test]
fn an_svg_into_a_device_is_written_in_place() {
    let out = inspect(&["--svg", "/dev/full"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vmm: error: cannot write the SVG map: /dev/full: No space left on device"),
        "{}",
        describe(&out)
    );
    let full = std::fs::metadata("/dev/full").expect("/dev/full");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &full.file_type()
    ));
    let out = inspect(&["--svg", "/dev/stdout"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("space 1: cr3 0x") && stdout.trim_end().ends_with("</svg>"),
        "{}",
        describe(&out)
    );
}
