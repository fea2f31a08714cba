//! The gdb stub (`--gdb`) driven by the real gdb client in batch mode: connecting, registers,
//! a breakpoint in an MM function with its backtrace, arguments, a local and a step, `monitor`
//! commands, a watchpoint, too many breakpoints, Ctrl-C, kill, detach and a vanished gdb after
//! which the guest runs to its normal exit, and `replay --break-at-op`, at an op given and at the
//! failing op by default. Each test prints `SKIPPED ...` and passes only where gdb is not
//! installed (`.ci/run` installs it). The command-line errors need no gdb.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Longest a `vmm` or `gdb` process may live here before it is killed and the test fails. A
/// replay that builds a seeded-bug guest first needs the most.
const LIMIT: Duration = Duration::from_secs(300);

/// The MM function the tests break on (generic functions carry the machine they run on).
const UNMAP: &str = "guest_mm::address_space::AddressSpace::unmap<guest_mm::trace::Traced<\
    guest_kernel::arch::x86_64::machine::X86Machine, guest_kernel::arch::x86_64::trace_buffer::TraceBuffer>>";

fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether gdb runs here; prints the SKIPPED line for `test` when it does not.
fn have_gdb(test: &str) -> bool {
    let found = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(test, "gdb is not installed");
    }
    found
}

/// A scratch file in the per-package directory Cargo provides to integration tests.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("writing a scratch file");
    path
}

/// Everything a process wrote, read on a thread so pipes never fill up.
fn drain(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Waits for `child` at most until `deadline`, killing it (and failing the test) after.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran longer than {LIMIT:?}; killed it");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `vmm` waiting for gdb.
struct Vmm {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    started: Instant,
    /// Where the stub listens, and the ELF it says to load, from its first line.
    addr: String,
    elf: String,
}

impl Vmm {
    /// Starts `vmm ARGS --gdb 127.0.0.1:0` and waits for the stub's listening line.
    fn start(args: &[&str]) -> Vmm {
        let started = Instant::now();
        let mut child = Command::new(VMM)
            .args(args)
            .args(["--gdb", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start vmm");
        let stdout = drain(child.stdout.take().expect("piped"));
        let (lines, stderr) = Self::watch_stderr(child.stderr.take().expect("piped"));
        let listening = loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("gdb stub listening on ") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < LIMIT => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "vmm never listened for gdb; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        // `vmm: gdb stub listening on ADDR; connect with: gdb -q ELF -ex 'target remote ADDR'`
        let addr = listening
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("an address")
            .to_string();
        let elf = listening
            .split("gdb -q ")
            .nth(1)
            .and_then(|rest| rest.split(" -ex").next())
            .expect("an ELF path")
            .to_string();
        Vmm {
            child,
            stderr,
            stdout,
            started,
            addr,
            elf,
        }
    }

    /// Collects stderr, and sends its lines as they come.
    fn watch_stderr(pipe: impl Read + Send + 'static) -> (Receiver<String>, Arc<Mutex<String>>) {
        let (tx, rx) = mpsc::channel();
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                {
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        (rx, text)
    }

    /// Waits for the VMM to end; its exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = wait_until(&mut self.child, self.started + LIMIT, "vmm");
        // The drain threads end with the pipes; give them a moment to take the last lines.
        thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        let stdout = self.stdout.lock().unwrap().clone();
        (status.code(), format!("{stderr}--- stdout\n{stdout}"))
    }
}

/// `vmm replay` of the reproducer `text` (saved as `name`) with `extra` options, waiting for gdb.
fn replay_under_gdb(name: &str, text: &str, extra: &[&str]) -> Vmm {
    let repro = scratch_file(name, text);
    let mut args = vec!["replay", repro.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    Vmm::start(&args)
}

/// gdb in batch mode on the VMM's ELF, connected to it, running `commands` in order.
fn gdb_command(vmm: &Vmm, commands: &[&str]) -> Command {
    let mut gdb = Command::new("gdb");
    // -nx: no gdbinit of the user's.
    gdb.args(["-q", "-nx", "-batch", &vmm.elf])
        .args(["-ex", &format!("target remote {}", vmm.addr)]);
    for command in commands {
        gdb.args(["-ex", command]);
    }
    gdb.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    gdb
}

/// Runs gdb with `commands` to its end; everything it printed.
fn gdb(vmm: &Vmm, commands: &[&str]) -> String {
    let mut child = gdb_command(vmm, commands)
        .spawn()
        .expect("cannot start gdb");
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    wait_until(&mut child, Instant::now() + LIMIT, "gdb");
    thread::sleep(Duration::from_millis(100));
    let text = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
    text
}

fn assert_has(text: &str, needles: &[&str], context: &str) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "missing {needle:?} in:\n{text}\n--- vmm\n{context}"
        );
    }
}

/// gdb detached, and the self-check then ran to its normal end.
fn assert_detached_and_self_checked(code: Option<i32>, stderr: &str) {
    assert_eq!(code, Some(0), "{stderr}");
    assert_has(
        stderr,
        &[
            "gdb detached",
            "MM self-check passed",
            "guest exited with status 0",
        ],
        "",
    );
}

#[test]
fn connects_stopped_at_the_entry_with_system_registers_then_detach_runs_the_guest_to_its_end() {
    if !have_gdb("connects_stopped_at_the_entry_...") {
        return;
    }
    let vmm = Vmm::start(&["run", "--memory", "64", "--timeout", "30"]);
    let out = gdb(
        &vmm,
        &[
            "info registers rip cs ss cr0 cr3 cr4 efer fs_base gs_base",
            "x/1i $pc",
            "monitor spaces",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "in _start ()",
            "cs             0x8",
            "cr0            0x80050033          [ PE MP ET NE WP AM PG ]",
            "cr3            0x20000",
            "[ LME LMA NXE ]",
            "fs_base",
            "<_start>:",
            "no user address space was live at the last batch boundary",
            "[Inferior 1 (process 1) detached]",
        ],
        &stderr,
    );
    assert_detached_and_self_checked(code, &stderr);
}

#[test]
fn breaks_in_an_mm_function_with_backtrace_arguments_a_local_and_a_step() {
    if !have_gdb("breaks_in_an_mm_function_...") {
        return;
    }
    let vmm = Vmm::start(&["run", "--memory", "64", "--timeout", "30"]);
    let out = gdb(
        &vmm,
        &[
            &format!("break {UNMAP}"),
            "continue",
            "bt",
            "info args",
            "next",
            "next",
            "print range",
            "step",
            "bt 2",
            "monitor regions",
            "monitor walk 0x7ffffffff000",
            "monitor check",
            "delete",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "Breakpoint 1, guest_mm::address_space::AddressSpace::unmap<",
            "at mm/src/address_space.rs:",
            // The backtrace runs from the op's dispatch down to the kernel's entry.
            "MemoryManager<guest_mm::trace::Traced<guest_kernel::arch::x86_64::machine::X86Machine, ",
            "guest_kernel::agent::serve",
            "in _start ()",
            "size = ",
            "= shared_mm::address::VirtualRange {base: ",
            // One step into a callee of the unmap (which one depends on the compiler's
            // inlining): `bt 2` shows the unmap as its caller.
            " in guest_mm::address_space::AddressSpace::unmap<",
            // The self-check's first space, beside its pages, judged by the checker.
            "space 1: cr3 0x",
            "  <trampoline>",
            "agreement: ok",
            "walk of 0x7ffffffff000 in space 1",
            "-> phys 0x",
            "access user r-x",
            "agreement checker over the kernel and",
        ],
        &stderr,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_has(&stderr, &["guest exited with status 0"], "");
}

/// A reproducer whose op 3 is the second of two unmaps of one region.
const TWO_UNMAPS: &str = "\
create-space
map-fixed space=1 addr=0x400000 size=0x4000 access=0xb
unmap space=1 addr=0x400000 size=0x1000
unmap space=1 addr=0x401000 size=0x2000
touch-write space=1 addr=0x403000 value=0x5
";

#[test]
fn replay_stops_when_the_guest_starts_the_op_asked_for() {
    if !have_gdb("replay_stops_when_the_guest_starts_the_op_asked_for") {
        return;
    }
    let vmm = replay_under_gdb("gdb-two-unmaps.repro", TWO_UNMAPS, &["--break-at-op", "3"]);
    let out = gdb(
        &vmm,
        &[
            "continue",
            // Before op 3: op 2 has cut the region's first page off.
            "monitor regions 1",
            &format!("break {UNMAP}"),
            "continue",
            "print/x addr",
            "print/x size",
            "delete",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "Program received signal SIGTRAP",
            "region anon 0x401000+0x3000 u-rw- (no pages present)",
            "$1 = 0x401000",
            "$2 = 0x2000",
        ],
        &stderr,
    );
    assert_has(
        &stderr,
        &[
            "stopped before op 3 (unmap space=1 addr=0x401000 size=0x2000)",
            "all 5 ops ran clean",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{stderr}");
}

/// A stale-PTE reproducer: with `bug-stale-pte`, the unmap (op 3) leaves the page mapped.
const STALE_PTE: &str = "\
create-space
map-fixed space=1 addr=0x400000 size=0x1000 access=0xb
touch-write space=1 addr=0x400000 value=0x5
unmap space=1 addr=0x400000 size=0x1000
create-space
map-fixed space=2 addr=0x400000 size=0x1000 access=0xb
";

#[test]
fn replay_stops_at_the_failing_op_by_default() {
    if !have_gdb("replay_stops_at_the_failing_op_by_default") {
        return;
    }
    let features = ["--guest-features", "bug-stale-pte"];
    let vmm = replay_under_gdb("gdb-stale-pte.repro", STALE_PTE, &features);
    let out = gdb(
        &vmm,
        &[
            "continue",
            // The page the unmap is about to leave behind, mapped as it should be before it.
            "monitor walk 1 0x400000",
            "monitor tlb 1",
            // Out of the unmap, which (with the bug) cleared the PTE without a flush.
            &format!("break {UNMAP}"),
            "continue",
            "finish",
            "monitor tlb 1",
            "delete",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "Program received signal SIGTRAP",
            "walk of 0x400000 in space 1",
            "-> phys 0x",
            // Before the unmap: the page and the trampoline, as their PTEs say.
            "is active; 2 user translation(s) may be cached, 0 of them stale",
            "  0x400000 4K -> frame 0x",
            "  0x7ffffffff000 4K -> frame 0x",
        ],
        &stderr,
    );
    // After it: the bug left the PTE behind, so the page may still be cached although the
    // unmap freed its frame (what the checker then reports).
    let cached = out.matches("  0x400000 4K -> frame 0x").count();
    assert_eq!(cached, 2, "{out}");
    assert_has(
        &stderr,
        &[
            "op 3 fails: agreement checker: frame-freed-while-cached",
            "stopped before op 3 (unmap space=1 addr=0x400000 size=0x1000)",
            "reproduced after 4 ops",
        ],
        "",
    );
    assert_eq!(code, Some(1), "the failure reproduces: {stderr}");
}

/// Touches one word twice, so a watchpoint on it sees 5 become 6.
const TWO_WRITES: &str = "\
create-space
map-fixed space=1 addr=0x400000 size=0x1000 access=0xb
touch-write space=1 addr=0x400000 value=0x5
touch-write space=1 addr=0x400000 value=0x6
";

#[test]
fn a_watchpoint_stops_where_the_value_changes_and_too_many_breakpoints_are_refused() {
    if !have_gdb("a_watchpoint_stops_where_the_value_changes_...") {
        return;
    }
    let vmm = replay_under_gdb("gdb-two-writes.repro", TWO_WRITES, &["--break-at-op", "3"]);
    let out = gdb(
        &vmm,
        &[
            "continue",
            "set language c",
            "hbreak *0xffffffff80200000",
            "hbreak *0xffffffff80200001",
            "hbreak *0xffffffff80200002",
            "hbreak *0xffffffff80200003",
            "watch *(unsigned long *)0x400000",
            // Five for four debug registers: gdb says so, and nothing runs.
            "continue",
            "delete 1",
            "continue",
            "delete",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "Could not insert hardware breakpoints:",
            "You may have requested too many hardware breakpoints/watchpoints.",
            "Hardware watchpoint 5: *(unsigned long *)0x400000",
            "Old value = 5",
            "New value = 6",
        ],
        &stderr,
    );
    assert_has(&stderr, &["all 4 debug registers (DR0-DR3) are in use"], "");
    assert_eq!(code, Some(0), "{stderr}");
}

/// A file that gdb creates right before `continue`, so the test knows the guest is running.
fn flag_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        assert!(Instant::now() < deadline, "gdb never got to `continue`");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A long fuzz campaign with `cpus` CPUs under gdb, interrupted by a Ctrl-C to gdb once it runs;
/// gdb then runs `after` and kills the guest. gdb must have printed `expected`, and the VMM
/// exits 137.
fn interrupt_a_fuzz_campaign_and_kill(name: &str, cpus: &str, after: &[&str], expected: &[&str]) {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out_dir = out_dir.to_str().expect("UTF-8 path");
    // Long enough to be running when gdb interrupts it (about 20 s alone).
    let vmm = Vmm::start(&[
        "fuzz", "--ops", "30000", "--quiet", "--out", out_dir, "--memory", "64", "--cpus", cpus,
    ]);
    let flag = flag_file(&format!("{name}.flag"));
    let touch = format!("shell touch {}", flag.display());
    let mut commands = vec![touch.as_str(), "continue"];
    commands.extend_from_slice(after);
    commands.push("kill");
    let mut child = gdb_command(&vmm, &commands)
        .spawn()
        .expect("cannot start gdb");
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    wait_for_file(&flag);
    thread::sleep(Duration::from_secs(1));
    // What a user's Ctrl-C does: SIGINT to gdb, which sends the stub 0x03.
    // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "cannot signal gdb");
    wait_until(&mut child, Instant::now() + LIMIT, "gdb");
    thread::sleep(Duration::from_millis(100));
    let gdb_out = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
    let (code, stderr) = vmm.finish();
    assert_has(&gdb_out, expected, &stderr);
    assert_eq!(code, Some(137), "{stderr}");
    assert_has(&stderr, &["vmm: error: gdb killed the guest"], "");
}

#[test]
fn ctrl_c_interrupts_the_running_guest_and_kill_ends_the_vmm() {
    if !have_gdb("ctrl_c_interrupts_the_running_guest_and_kill_ends_the_vmm") {
        return;
    }
    interrupt_a_fuzz_campaign_and_kill(
        "gdb-ctrl-c-fuzz",
        "1",
        &["bt 1", "monitor spaces"],
        &[
            "Program received signal SIGINT",
            "#0  ",
            "region trees as of batch",
        ],
    );
}

#[test]
fn ctrl_c_holds_every_cpu_and_kill_ends_every_thread() {
    if !have_gdb("ctrl_c_holds_every_cpu_and_kill_ends_every_thread") {
        return;
    }
    interrupt_a_fuzz_campaign_and_kill(
        "gdb-ctrl-c-two-cpus",
        "2",
        &["info threads", "monitor cpus"],
        &[
            "Thread 1 received signal SIGINT",
            "Thread 1.1 (cpu 0, ring ",
            "Thread 1.2 (cpu 1, ring ",
            "cpu 0: thread 1 (stopped here), rip 0x",
            "cpu 1: thread 2, rip 0x",
        ],
    );
}

#[test]
fn a_gdb_that_vanishes_mid_session_leaves_the_guest_to_run_to_its_end() {
    if !have_gdb("a_gdb_that_vanishes_mid_session_...") {
        return;
    }
    let vmm = Vmm::start(&["run", "--memory", "64", "--timeout", "30"]);
    let flag = flag_file("gdb-vanish.flag");
    let touch = format!("shell touch {}", flag.display());
    let commands = [
        &format!("break {UNMAP}") as &str,
        "continue",
        touch.as_str(),
        "shell sleep 120",
    ];
    let mut child = gdb_command(&vmm, &commands)
        .spawn()
        .expect("cannot start gdb");
    wait_for_file(&flag);
    // Stopped at the breakpoint, with gdb gone for good (SIGKILL: no detach).
    child.kill().expect("cannot kill gdb");
    let _ = child.wait();
    let (code, stderr) = vmm.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_has(
        &stderr,
        &[
            "gdb connection lost",
            "the guest runs on without gdb",
            "guest exited with status 0",
        ],
        "",
    );
}

/// A peer that sends one packet and never ends it: the stub's packet buffer has a fixed
/// capacity (gdbstub's own buffer API), so the session ends at the first byte past it instead of
/// growing the buffer with what arrives (300 MB sent grew the VMM by 321 MB), and the guest runs
/// on to its end. Needs no gdb.
#[test]
fn an_unterminated_packet_ends_the_session_at_the_buffer_s_capacity() {
    let vmm = Vmm::start(&["run", "--memory", "64", "--timeout", "30"]);
    let mut peer = std::net::TcpStream::connect(&vmm.addr).expect("connect to the stub");
    peer.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("a write timeout");
    // 1 MiB of packet body after `$`, and no `#checksum`: 256 times the buffer.
    let body = vec![b'a'; 1 << 20];
    let sent = peer.write_all(b"$").and_then(|()| peer.write_all(&body));
    let (code, stderr) = vmm.finish();
    assert_eq!(code, Some(0), "{stderr} (sent: {sent:?})");
    assert_has(
        &stderr,
        &[
            "gdb session failed (Received an oversized packet",
            "the guest runs on without gdb",
            "guest exited with status 0",
        ],
        "",
    );
}

/// Runs `vmm ARGS` to its end; exit code and stderr.
fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run vmm");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bad uses of --gdb are one `vmm: error:` line and exit 2, before any guest boots.
#[test]
fn bad_gdb_options_exit_2_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let busy = taken.local_addr().expect("its address").to_string();
    let clean = scratch_file("gdb-clean.repro", TWO_WRITES);
    let clean = clean.to_str().expect("UTF-8 path");
    let two_cpus = scratch_file("gdb-two-cpus-break.repro", TWO_CPUS);
    let two_cpus = two_cpus.to_str().expect("UTF-8 path");
    let cases: [(&[&str], &str); 7] = [
        (
            &["run", "--backend", "sim", "--gdb", ":0"],
            "--gdb needs --backend kvm",
        ),
        (
            &["fuzz", "--jobs", "2", "--ops", "10", "--gdb", ":0"],
            "--gdb needs --jobs 1",
        ),
        (
            &["run", "--gdb", "nowhere"],
            "is not an address to listen on",
        ),
        (&["run", "--gdb", &busy], "cannot listen for gdb on"),
        (
            &["replay", clean, "--break-at-op", "1"],
            "--break-at-op needs --gdb",
        ),
        (
            &["replay", clean, "--gdb", ":0", "--break-at-op", "9"],
            "the reproducer has ops 0 to 3",
        ),
        (
            &["replay", two_cpus, "--gdb", ":0", "--break-at-op", "1"],
            "--break-at-op needs a reproducer of one CPU",
        ),
    ];
    for (args, message) in cases {
        let (code, stderr) = vmm(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("vmm: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(message), "{args:?}: {stderr}");
    }
    drop(taken);
}

/// The function each AP runs once it has reported in, and CPU 0 never does.
const AP_SERVE: &str = "guest_kernel::smp::serve";

/// The shootdown handler: in the self-check's SMP part, CPU 0 changes a space CPU 1 keeps
/// loaded, and CPU 1 flushes here.
const SHOOTDOWN: &str = "guest_kernel::smp::shootdown::serve";

#[test]
fn with_two_cpus_each_vcpu_is_a_thread_and_a_stop_on_an_ap_holds_both() {
    if !have_gdb("with_two_cpus_each_vcpu_is_a_thread_...") {
        return;
    }
    let vmm = Vmm::start(&["run", "--cpus", "2", "--memory", "64", "--timeout", "60"]);
    let out = gdb(
        &vmm,
        &[
            &format!("hbreak {SHOOTDOWN}"),
            "continue",
            "info threads",
            "thread 2",
            "info registers rip",
            "x/1i $pc",
            "thread 1",
            "x/1i $pc",
            "monitor cpus",
            "delete",
            "thread 2",
            "stepi",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            // gdb names the AP's thread in the stop; CPU 0 was held too.
            "Thread 2 hit Breakpoint 1, guest_kernel::smp::shootdown::serve (me=1, sender=0)",
            "Thread 1.1 (cpu 0, ring 0, cr3 0x",
            "* 2    Thread 1.2 (cpu 1, ring 0, cr3 0x",
            "rip            0xffffffff",
            "<guest_kernel::smp::shootdown::serve+",
            "shootdown5serve",
            "cpu 0: thread 1, rip 0xffffffff",
            "cpu 1: thread 2 (stopped here), rip 0xffffffff",
            "TLB model has loaded: space ",
            "[Inferior 1 (process 1) detached]",
        ],
        &stderr,
    );
    // CPU 1 flushes a user space it has loaded: `info threads` names it.
    let ap_thread = out.lines().find(|l| l.contains("Thread 1.2 (cpu 1"));
    assert!(ap_thread.is_some_and(|l| l.contains(" (space ")), "{out}");
    assert_detached_and_self_checked(code, &stderr);
}

/// The rip `monitor cpus` printed for `cpu`, at each of its listings in `out`.
fn rips_of(out: &str, cpu: u32) -> Vec<String> {
    let prefix = format!("cpu {cpu}: thread ");
    out.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.split("rip ").nth(1)?.split(',').next().map(String::from))
        .collect()
}

#[test]
fn with_scheduler_locking_a_step_moves_only_the_stepped_cpu() {
    if !have_gdb("with_scheduler_locking_a_step_moves_only_the_stepped_cpu") {
        return;
    }
    let vmm = Vmm::start(&["run", "--cpus", "2", "--memory", "64", "--timeout", "60"]);
    let out = gdb(
        &vmm,
        &[
            &format!("hbreak {SHOOTDOWN}"),
            "continue",
            "delete",
            "monitor cpus",
            "set scheduler-locking on",
            "stepi",
            "stepi",
            "monitor cpus",
            "set scheduler-locking off",
            "detach",
        ],
    );
    let (code, stderr) = vmm.finish();
    let (cpu0, cpu1) = (rips_of(&out, 0), rips_of(&out, 1));
    assert_eq!(cpu0.len(), 2, "{out}");
    assert_eq!(cpu0[0], cpu0[1], "CPU 0 stayed parked: {out}");
    assert_ne!(cpu1[0], cpu1[1], "CPU 1 stepped: {out}");
    assert_detached_and_self_checked(code, &stderr);
}

#[test]
fn a_panic_on_an_ap_stops_gdb_in_that_cpu_s_thread() {
    if !have_gdb("a_panic_on_an_ap_stops_gdb_in_that_cpu_s_thread") {
        return;
    }
    let vmm = Vmm::start(&[
        "run",
        "--cpus",
        "2",
        "--misbehave",
        "ap-panic",
        "--memory",
        "64",
        "--timeout",
        "60",
    ]);
    let out = gdb(&vmm, &["continue", "bt 3", "continue"]);
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "[Switching to Thread 1.2]",
            "Thread 2 received signal SIGABRT",
            "guest_kernel::hypercall::Mailbox::panic",
            "Program terminated with signal SIGABRT",
        ],
        &stderr,
    );
    assert_eq!(code, Some(101), "{stderr}");
    assert_has(&stderr, &["vmm: error: on cpu 1: guest panicked"], "");
}

/// A reproducer of two CPUs: CPU 1 writes the page CPU 0 mapped, in the second round.
const TWO_CPUS: &str = "\
# cpus: 2
create-space
map-fixed space=1 addr=0x400000 size=0x1000 access=0xb
---
@cpu1 touch-write space=1 addr=0x400000 value=0x5
";

#[test]
fn a_reproducer_of_two_cpus_replays_under_gdb_with_both_threads() {
    if !have_gdb("a_reproducer_of_two_cpus_replays_under_gdb_with_both_threads") {
        return;
    }
    let vmm = replay_under_gdb("gdb-two-cpus.repro", TWO_CPUS, &[]);
    let out = gdb(
        &vmm,
        &[
            &format!("hbreak {AP_SERVE}"),
            "continue",
            "info threads",
            "delete",
            "continue",
        ],
    );
    let (code, stderr) = vmm.finish();
    assert_has(
        &out,
        &[
            "Thread 2 hit Breakpoint 1, guest_kernel::smp::serve (cpu=1",
            "Thread 1.1 (cpu 0, ring 0",
            "[Inferior 1 (process 1) exited normally]",
        ],
        &stderr,
    );
    assert_eq!(code, Some(0), "the reproducer has no failure: {stderr}");
}
