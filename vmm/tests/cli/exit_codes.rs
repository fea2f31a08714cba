//! The exit codes that fit what went wrong: a recorded kernel that is missing or not a kernel,
//! an entry point outside the loaded segments, a reproducer with nothing to replay (all exit
//! 2), and a guest that exits before its work is done (exit 103, naming its status).

use super::{assert_fails, path_of, scratch_file, vmm, vmm_run};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_guest_that_exits_before_the_self_check_is_named_with_its_status() {
    let outcome = vmm_run(&["--misbehave", "exit-early"]);
    assert_fails(
        &outcome,
        103,
        &["vmm: error: the guest exited with status 7 after 0 of the 93 steps of its self-check"],
    );
}

#[test]
fn a_missing_or_invalid_recorded_kernel_exits_2() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("recorded-kernels");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.elf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text = scratch_file("recorded-text.elf", b"not an ELF\n");
    let cases = [
        (
            "/nonexistent/guest.elf".to_string(),
            "No such file or directory",
        ),
        (path_of(&dir).to_string(), "a directory, not a regular file"),
        (path_of(&fifo).to_string(), "a FIFO, not a regular file"),
        (
            "/dev/zero".to_string(),
            "a character device, not a regular file",
        ),
        (path_of(&text).to_string(), "not an x86_64 ELF executable"),
    ];
    for (kernel, why) in cases {
        let repro = scratch_file(
            "recorded-kernel.repro",
            format!("# kernel: {kernel}\n# memory-mib: 64\ncreate-space\n").as_bytes(),
        );
        let outcome = vmm(&["replay", path_of(&repro), "--timeout", "10"]);
        assert_fails(&outcome, 2, &[why]);
        assert!(
            !outcome.stderr.contains("using the embedded"),
            "{}",
            outcome.describe()
        );
    }
}

#[test]
fn an_entry_point_outside_the_loaded_segments_exits_2_before_the_guest_runs() {
    let mut image = guest_image::EMBEDDED_KERNEL.to_vec();
    image[24..32].copy_from_slice(&0xffff_ffff_8000_0000u64.to_le_bytes());
    let kernel = scratch_file("entry-outside.elf", &image);
    let outcome = vmm_run(&["--kernel", path_of(&kernel)]);
    assert_fails(
        &outcome,
        2,
        &["kernel ELF entry point 0xffffffff80000000 lies outside every loadable segment"],
    );
    assert!(!outcome.stdout.contains("booted"), "{}", outcome.describe());
}

#[test]
fn a_reproducer_with_no_operations_exits_2() {
    for (name, text) in [
        ("empty.repro", ""),
        ("header-only.repro", "# failure: x\n# seed: 1\n"),
    ] {
        let repro = scratch_file(name, text.as_bytes());
        let outcome = vmm(&["replay", path_of(&repro)]);
        let why = format!(
            "{}: the reproducer has no operations to replay",
            repro.display()
        );
        assert_fails(&outcome, 2, &[&why]);
    }
}
