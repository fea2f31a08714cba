//! `vmm fuzz` stopped by Ctrl-C: the jobs stop at a batch boundary, the summary is printed, the
//! exit code is 130, and the reproducers and corpus entries written so far stay.

use mm_fuzz::repro::Reproducer;
use mm_scenario::file::load;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Longest wait for a file to appear (the first kvm run may build the coverage guest) and for
/// the process to end after Ctrl-C.
const LIMIT: Duration = Duration::from_secs(240);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-cli-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A `vmm fuzz` that would run for a very long time, with `extra` arguments; its stderr is
/// collected by a thread.
fn start(extra: &[&str]) -> (Child, JoinHandle<String>) {
    let mut child = Command::new(VMM)
        .args([
            "fuzz",
            "--ops",
            "1000000000000",
            "--quiet",
            "--timeout",
            "30",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start vmm fuzz");
    let mut pipe = child.stderr.take().expect("piped stderr");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    (child, stderr)
}

/// The files in `dir` once `enough` of them are there, or a test failure after [`LIMIT`]. A
/// file being written atomically (`.NAME.PID.tmp`, renamed once complete) is not one yet.
fn wait_for_files(child: &mut Child, dir: &Path, enough: usize) -> Vec<PathBuf> {
    let started = Instant::now();
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        let files: Vec<PathBuf> = files
            .into_iter()
            .filter(|f| {
                f.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        if files.len() >= enough {
            return files;
        }
        if let Some(status) = child.try_wait().expect("waiting for vmm fuzz") {
            panic!(
                "vmm fuzz ended ({status}) before {enough} file(s) in {}",
                dir.display()
            );
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("no {enough} file(s) in {} after {LIMIT:?}", dir.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGINT to `child`, waits for it to end, and returns its exit code and stderr.
fn interrupt(mut child: Child, stderr: JoinHandle<String>) -> (Option<i32>, String) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill takes no pointers; `pid` is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "kill");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for vmm fuzz") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("vmm fuzz did not stop within {LIMIT:?} of Ctrl-C");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status.code(), stderr.join().expect("stderr reader"))
}

#[test]
fn ctrl_c_keeps_the_reproducers_and_prints_the_summary() {
    let (out, corpus) = (scratch("repro-out"), scratch("repro-corpus"));
    std::fs::create_dir_all(&corpus).unwrap();
    // A hand-written entry: on sim the corpus is read, never written.
    std::fs::write(
        corpus.join("seed.scn"),
        "create-space\ntouch-read space=1 addr=0x1000\n",
    )
    .unwrap();
    let (mut child, stderr) = start(&[
        "--backend",
        "sim",
        "--guest-features",
        "bug-stale-pte",
        "--out",
        out.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
    ]);
    let repros = wait_for_files(&mut child, &out, 1);
    let (code, stderr) = interrupt(child, stderr);
    assert_eq!(code, Some(130), "{stderr}");
    for needle in [
        "vmm fuzz: interrupted; stopping at the next batch",
        "vmm fuzz: interrupted by Ctrl-C",
        " ops in ",
        // At least the one saved before the Ctrl-C; another may be found before it lands.
        " distinct finding(s):",
        "1 entries at the start, 0 saved, 0 picked up",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    let repro = repros[0].to_str().unwrap();
    assert!(
        stderr.contains(&format!("reproducer {repro} with ")),
        "{stderr}"
    );
    let text = std::fs::read_to_string(repro).expect("the reproducer stays");
    assert!(!Reproducer::parse(&text).expect("it parses").ops.is_empty());
    assert_eq!(std::fs::read_dir(&corpus).unwrap().count(), 1);
}

#[test]
fn ctrl_c_keeps_the_corpus_of_a_coverage_campaign() {
    let (out, corpus) = (scratch("cov-out"), scratch("cov-corpus"));
    let (mut child, stderr) = start(&[
        "--coverage",
        "--out",
        out.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
    ]);
    let seen = wait_for_files(&mut child, &corpus, 2).len();
    let (code, stderr) = interrupt(child, stderr);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("vmm fuzz: interrupted by Ctrl-C"),
        "{stderr}"
    );
    assert!(stderr.contains("vmm fuzz: coverage "), "{stderr}");
    let files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= seen, "{files:?}");
    let summary = format!("0 entries at the start, {} saved", files.len());
    assert!(stderr.contains(&summary), "no {summary:?} in:\n{stderr}");
    for file in files {
        let entry = load(&file, "corpus entry").unwrap_or_else(|e| panic!("{e}"));
        assert!(entry.steps().count() > 0, "{}", file.display());
        assert!(
            entry.header.iter().any(|(k, _)| k == "new-edges"),
            "{}",
            file.display()
        );
    }
}
