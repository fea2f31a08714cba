//! The libFuzzer target `mm_ops`: each input is decoded into MM operations
//! (`mm_fuzz::libfuzzer::input`) and run on a fresh sim guest with the model and the checker
//! after every batch; a failure prints its reproducer as a scenario and aborts, so libFuzzer
//! saves the input (`vmm replay` runs it again). `MM_FUZZ_BUGS=bug-a,bug-b` plants seeded bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_fuzz::libfuzzer::Target;
use std::sync::OnceLock;

static TARGET: OnceLock<Target> = OnceLock::new();

/// The target `MM_FUZZ_BUGS` asks for; a name that is no seeded bug ends the process (exit 2).
fn target() -> &'static Target {
    TARGET.get_or_init(|| {
        Target::from_env(guest_image::EMBEDDED_KERNEL.to_vec()).unwrap_or_else(|e| {
            eprintln!("mm_ops: {e}");
            std::process::exit(2)
        })
    })
}

/// Runs one input; a failure is printed as a scenario, then a panic makes libFuzzer save it.
fn run(data: &[u8]) {
    let found = target()
        .run(&mm_sim::Sim, data)
        .unwrap_or_else(|e| panic!("mm_ops: the guest could not run: {e}"));
    let Some(repro) = found else {
        return;
    };
    eprintln!("{}", repro.to_text());
    let bugs = target().features().join(",");
    let with = match bugs.as_str() {
        "" => String::new(),
        bugs => format!(" --guest-features {bugs}"),
    };
    eprintln!("mm_ops: replay the crash artifact libFuzzer writes with: vmm replay{with} ARTIFACT");
    let failure = repro.header_value("failure").unwrap_or("a failure");
    panic!("mm_ops: {failure}");
}

fuzz_target!(init: { target(); }, |data: &[u8]| run(data));
