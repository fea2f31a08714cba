//! `vmm fuzz`: a fuzz campaign on the backend the options name (with a sim twin to shrink a kvm
//! guest's failures on), its corpus and Ctrl-C linked in, and its summary on stderr.
#![forbid(unsafe_code)]

use super::guest::{config_with, seeded_bugs};
use crate::{FuzzArgs, GuestArgs};
use anyhow::{bail, Context};
use mm_driver::{Backend, GuestConfig};
use mm_fuzz::campaign::{run_campaign_with, CampaignConfig, CampaignReport, Links};
use mm_fuzz::coverage::CoverageMap;
use mm_fuzz::shrink::Budget;
use shared_mm::boot_info::GuestCommand;
use vmm::{Backends, VmmError};

/// `vmm fuzz`: a campaign as `guest` and `args` describe it; exits 1 with findings, 130 when
/// Ctrl-C ended it.
pub fn fuzz(guest: &GuestArgs, args: &FuzzArgs) -> anyhow::Result<u32> {
    if guest.gdb.is_some() && args.jobs != 1 {
        bail!("--gdb needs --jobs 1: one gdb debugs one guest");
    }
    let (campaign, backends) = campaign(guest, args)?;
    let links = Links {
        corpus: args.corpus.as_deref(),
        stop: Some(vmm::interrupt::install()?),
    };
    let report = run_campaign_with(&campaign, &backends, links).map_err(VmmError::from)?;
    summary(&report, guest, args.jobs, campaign.check);
    Ok(if report.interrupted {
        vmm::interrupt::EXIT_INTERRUPTED
    } else {
        u32::from(!report.bugs.is_empty())
    })
}

/// The campaign `guest` and `args` describe, and the backends that boot its guests.
fn campaign(guest: &GuestArgs, args: &FuzzArgs) -> anyhow::Result<(CampaignConfig, Backends)> {
    let coverage = args.coverage;
    let (mut vm, backends, kernel_label) = config_with(guest, GuestCommand::Serve, coverage)?;
    vm.echo_console = false;
    let counters = match guest.backend() {
        Backend::Kvm => {
            CoverageMap::from_elf(&vm.kernel).context("reading the kernel's coverage counters")?
        }
        Backend::Sim => None,
    };
    if coverage && counters.is_none() {
        bail!("the coverage guest has no sanitizer-coverage counters");
    }
    // A KVM guest whose MM is the library with known seeded bugs has a sim twin, on as many
    // CPUs: failures shrink there, fast, and are confirmed on KVM.
    let shrink_on =
        (guest.backend() == Backend::Kvm && guest.kernel.is_none()).then(|| GuestConfig {
            backend: Backend::Sim,
            seeded_bugs: seeded_bugs(guest.features()).unwrap_or_default(),
            ..vm.clone()
        });
    let campaign = CampaignConfig {
        seed: guest.seed(),
        ops: args.ops,
        jobs: args.jobs.into(),
        batch: args.batch.into(),
        check: !args.no_check,
        shrink: !args.no_shrink,
        shrink_budget: Budget {
            max_replays: args.shrink_budget,
        },
        vm,
        shrink_on,
        out_dir: args.out.clone(),
        kernel_label,
        guest_features: guest.features().to_vec(),
        progress: !args.quiet,
        coverage: counters,
        max_findings: usize::try_from(args.max_findings).unwrap_or(usize::MAX),
        pressure: args.pressure,
        placement_rules: true,
    };
    Ok((campaign, backends))
}

/// The summary of a campaign, on stderr.
fn summary(report: &CampaignReport, guest: &GuestArgs, jobs: u16, check: bool) {
    if report.interrupted {
        eprintln!("vmm fuzz: interrupted by Ctrl-C");
    }
    eprintln!(
        "vmm fuzz: {} ops in {:.1} s ({:.1} s of it shrinking; {:.0} ops/s fuzzing) on {} guest boot(s) ({}), seed {}, {} job(s), checker {}",
        report.ops_executed,
        report.elapsed.as_secs_f64(),
        report.shrinking.as_secs_f64(),
        report.ops_per_second(),
        report.guests_booted,
        guest.backend(),
        guest.seed(),
        jobs,
        if check { "on" } else { "off" }
    );
    if report.out_of_memory > 0 {
        eprintln!(
            "vmm fuzz: {} ops ran out of guest frames (each judged by the model)",
            report.out_of_memory
        );
    }
    if report.uniformity_tests > 0 {
        eprintln!(
            "vmm fuzz: {} placement uniformity tests (chi-square; false-alarm rate at most {:.0e} for the campaign)",
            report.uniformity_tests,
            mm_fuzz::uniformity::CAMPAIGN_ALPHA
        );
    }
    if let Some((covered, total)) = report.coverage {
        eprintln!(
            "vmm fuzz: coverage {covered} of {total} guest edges ({:.1}%)",
            100.0 * covered as f64 / total as f64
        );
    }
    if let Some(corpus) = &report.corpus {
        eprintln!(
            "vmm fuzz: corpus {}: {} entries at the start, {} saved, {} picked up from other campaigns; {} in the largest job's corpus",
            corpus.dir.display(),
            corpus.loaded,
            corpus.saved,
            corpus.picked_up,
            corpus.entries
        );
    }
    if report.bugs.is_empty() {
        eprintln!("vmm fuzz: no findings");
        return;
    }
    eprintln!("vmm fuzz: {} distinct finding(s):", report.bugs.len());
    for bug in &report.bugs {
        eprintln!(
            "  {} (hit {}x; first after {} ops / {:.2} s in job {}); reproducer {} with {} ops (from {}){}\n    {}",
            bug.signature,
            bug.hits,
            bug.ops_to_find,
            bug.time_to_find.as_secs_f64(),
            bug.job,
            bug.repro_path.display(),
            bug.repro_len,
            bug.original_len,
            bug.reproduced.map_or(String::new(), |count| format!(
                "; {count} replays on {} showed it",
                guest.backend()
            )),
            bug.description.lines().next().unwrap_or("")
        );
    }
}
