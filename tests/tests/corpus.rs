//! The fuzz corpus directory: a campaign saves the batches that reached new edges, a later one
//! starts from them, and campaigns that share the directory take each other's entries.

use guest_image::variant::{build_variant_with, GuestVariant};
use mm_driver::{Backend, GuestConfig};
use mm_fuzz::campaign::{run_campaign_with, CampaignConfig, CampaignReport, Links};
use mm_fuzz::coverage::CoverageMap;
use mm_fuzz::shrink::Budget;
use mm_fuzz::RESCAN_INTERVAL;
use mm_scenario::file::load;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vmm::Backends;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-corpus-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The coverage build of the default guest, built once per test binary.
fn coverage_kernel() -> Vec<u8> {
    static KERNEL: OnceLock<Vec<u8>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let elf = build_variant_with(&GuestVariant::default().with_coverage())
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::read(&elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()))
        })
        .clone()
}

/// A one-job campaign of `ops` on `backend` (kvm: the coverage guest).
fn campaign(name: &str, backend: Backend, seed: u64, ops: u64) -> CampaignConfig {
    let kernel = match backend {
        Backend::Kvm => coverage_kernel(),
        Backend::Sim => guest_image::EMBEDDED_KERNEL.to_vec(),
    };
    let coverage = CoverageMap::from_elf(&kernel).expect("kernel ELF parses");
    CampaignConfig {
        seed,
        ops,
        jobs: 1,
        batch: 64,
        check: true,
        shrink: false,
        shrink_budget: Budget::default(),
        shrink_on: None,
        vm: GuestConfig {
            kernel,
            backend,
            timeout: Some(Duration::from_secs(30)),
            echo_console: false,
            ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
        },
        out_dir: scratch(&format!("{name}-out")),
        kernel_label: name.to_string(),
        guest_features: Vec::new(),
        progress: false,
        pressure: false,
        placement_rules: true,
        coverage,
        max_findings: 1,
    }
}

fn run(config: &CampaignConfig, corpus: &Path, stop: Option<&AtomicBool>) -> CampaignReport {
    let links = Links {
        corpus: Some(corpus),
        stop,
    };
    let report = run_campaign_with(config, &Backends::default(), links)
        .unwrap_or_else(|e| panic!("campaign: {e}"));
    assert!(report.bugs.is_empty(), "{:#?}", report.bugs);
    report
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_campaign_starts_with_the_first_ones_corpus() {
    let dir = scratch("reload");
    let first = run(&campaign("reload-a", Backend::Kvm, 1, 640), &dir, None);
    let corpus = first.corpus.clone().expect("a corpus report");
    let files = entries(&dir);
    assert!(corpus.saved > 0, "{corpus:?}");
    assert_eq!((corpus.loaded, files.len()), (0, corpus.saved), "{files:?}");
    for file in &files {
        let entry = load(file, "corpus entry").unwrap_or_else(|e| panic!("{e}"));
        let ops = entry.steps().count();
        assert!((1..=64).contains(&ops), "{}: {ops} ops", file.display());
    }
    let (covered, total) = first.coverage.expect("coverage");

    let second = run(&campaign("reload-b", Backend::Kvm, 2, 128), &dir, None);
    let reloaded = second.corpus.expect("a corpus report");
    assert_eq!(reloaded.loaded, files.len(), "{reloaded:?}");
    assert!(reloaded.entries >= files.len(), "{reloaded:?}");
    // The entries bring the edges they reached: the second campaign's coverage starts where
    // the first one's ended.
    let (again, same_total) = second.coverage.expect("coverage");
    assert_eq!(same_total, total);
    assert!(
        again >= covered,
        "{again} edges after reload, {covered} before"
    );
    assert_eq!(entries(&dir).len(), files.len() + reloaded.saved);
}

#[test]
fn campaigns_sharing_a_directory_pick_up_each_others_entries() {
    let dir = scratch("sync");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A sim campaign with no end of its own: it reads the directory, never writes it.
        let reader = scope.spawn(|| {
            let config = campaign("sync-sim", Backend::Sim, 3, 1 << 40);
            run(&config, &dir, Some(&stop))
        });
        // Let it take its first look at the (empty) directory before the writer starts.
        std::thread::sleep(Duration::from_millis(500));
        let writer = run(&campaign("sync-kvm", Backend::Kvm, 4, 320), &dir, None);
        let written = writer.corpus.expect("a corpus report").saved;
        assert!(written > 0);
        // Two rescans later, every entry has been seen.
        let deadline = Instant::now() + 2 * RESCAN_INTERVAL + Duration::from_secs(1);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        let report = reader.join().expect("the sim campaign");
        assert!(report.interrupted);
        let synced = report.corpus.expect("a corpus report");
        assert_eq!(
            (synced.loaded, synced.picked_up, synced.saved),
            (0, written, 0),
            "{synced:?}"
        );
        assert_eq!(synced.entries, written);
    });
}
