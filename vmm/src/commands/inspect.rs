//! `vmm inspect`: run the built-in inspect plan, then print each address space's regions and
//! present pages (from the host's own page walk) and the checker's verdict, as a table or JSON,
//! and optionally draw the map as SVG.
#![forbid(unsafe_code)]

use super::guest::config;
use crate::GuestArgs;
use anyhow::Context;
use bounded_io::files::{write_output, Naming};
use mm_driver::GuestConfig;
use shared_mm::boot_info::GuestCommand;
use std::path::Path;
use vmm::VmmError;

/// `vmm inspect`: the report on stdout (`json` or a table), the map into `svg` if given.
pub fn inspect(guest: &GuestArgs, json: bool, svg: Option<&Path>) -> anyhow::Result<u32> {
    let (config, backends) = config(guest, GuestCommand::Serve)?;
    let config = GuestConfig {
        echo_console: false,
        ..config
    };
    let report = vmm::inspect::inspect(&backends, &config)?;
    print!(
        "{}",
        if json {
            report.to_json()
        } else {
            report.to_table()
        }
    );
    if let Some(path) = svg {
        write_output(path, report.to_svg().as_bytes(), Naming::Named)
            .context("cannot write the SVG map")?;
        eprintln!("vmm: wrote the address-space map to {}", path.display());
    }
    let problems = report.problems();
    if !problems.is_empty() {
        return Err(VmmError::SelfCheckFailed(problems).into());
    }
    Ok(report.exit_status)
}
