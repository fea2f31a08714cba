//! `vmm fuzz --backend kvm --cpus 2`: batches run as rounds over both CPUs, a correct guest runs
//! clean, a shootdown bug is found, and its reproducer names each op's CPU and round and
//! reproduces under `vmm replay`.
#![forbid(unsafe_code)]

use mm_fuzz::repro::Reproducer;
use mm_scenario::file::load;
use std::path::{Path, PathBuf};
use std::process::Command;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-smp-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `vmm ARGS`: its exit code and stderr.
fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(VMM)
        .args(args)
        .output()
        .expect("cannot start vmm");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// `vmm fuzz` on kvm with two CPUs, seed 1, `ops` ops, `extra` arguments, into `out`.
fn fuzz_two_cpus(ops: &str, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = out.to_str().expect("UTF-8 path");
    let mut args = vec![
        "fuzz",
        "--backend",
        "kvm",
        "--cpus",
        "2",
        "--seed",
        "1",
        "--ops",
        ops,
        "--quiet",
        "--timeout",
        "60",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    vmm(&args)
}

#[test]
fn a_correct_guest_fuzzed_on_two_cpus_runs_clean() {
    let out = scratch("clean");
    let (code, stderr) = fuzz_two_cpus("1500", &out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("vmm fuzz: no findings"), "{stderr}");
}

/// The per-CPU replay sees the missed shootdown whenever its paths run; the campaign saves the
/// failure in its rounds, and the replay of those rounds shows it again.
#[test]
fn a_missed_lazy_shootdown_is_found_and_its_rounds_replay() {
    let out = scratch("lazy");
    let bug = ["--guest-features", "bug-shootdown-misses-lazy"];
    let (code, stderr) =
        fuzz_two_cpus("3000", &out, &[&bug[..], &["--max-findings", "1"]].concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("frame-freed-while-cached"), "{stderr}");
    let repro = out.join("repro-seed1-1.txt");
    let saved = Reproducer::from(load(&repro, "reproducer").expect("the reproducer loads"));
    let rounds = saved.cpu_rounds().expect("the reproducer keeps its rounds");
    assert!(
        rounds.iter().flatten().any(|batch| batch.cpu == 1),
        "some op ran on CPU 1"
    );
    let (code, stderr) = vmm(&["replay", repro.to_str().expect("UTF-8 path")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("vmm replay: reproduced in its"), "{stderr}");
}
