//! The JSON view of a [`Report`]; addresses and sizes are `0x...` strings, since they exceed
//! the integers a JSON reader is guaranteed to keep exactly.

use super::{Owner, Report, Row, SpaceReport};
use mm_checker::access_string;
use mm_checker::trace_events::describe;
use serde_json::{json, Value};

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn row(space: &SpaceReport, row: &Row) -> Value {
    let (owner, region_base) = match row.owner {
        Owner::Region(i) => ("region", Some(hex(space.regions[i].base))),
        Owner::Trampoline => ("trampoline", None),
        Owner::Hole => ("hole", None),
    };
    json!({
        "start": hex(row.run.range_base),
        "end": hex(row.end()),
        "size": hex(row.run.size),
        "user": row.run.user,
        "writable": row.run.writable,
        "executable": row.run.executable,
        "perms": row.perms(),
        "owner": owner,
        "region_base": region_base,
        "sharing": row.sharing.name(),
    })
}

fn space(space: &SpaceReport) -> Value {
    let regions: Vec<Value> = space
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "base": hex(r.base),
                "size": hex(r.size),
                "access": access_string(r.access),
                "name": r.name_str(),
                "backed": r.backed != 0,
                "present_pages": space.region_pages(i),
            })
        })
        .collect();
    let runs: Vec<Value> = space.rows.iter().map(|r| row(space, r)).collect();
    let findings: Vec<String> = space.findings.iter().map(ToString::to_string).collect();
    let trace_findings: Vec<Value> = space
        .findings
        .iter()
        .filter(|f| !f.events.is_empty())
        .map(|f| {
            let events: Vec<String> = f.events.iter().map(describe).collect();
            json!({ "finding": f.to_string(), "events": events })
        })
        .collect();
    json!({
        "space": space.space,
        "name": space.name(),
        "cr3": hex(space.cr3),
        "present_pages": space.present_pages(),
        "regions": regions,
        "runs": runs,
        "findings": findings,
        "possibly_cached": space.possibly_cached,
        "cpus": space.cpus.iter().collect::<Vec<u32>>(),
        "trace_findings": trace_findings,
    })
}

impl Report {
    /// `{"spaces": [...], "steps": N, "mismatches": [...], "exit_status": N}`; each space has
    /// `space` (the kernel's id is 4294967295), `name`, `cr3`, `present_pages`, `regions`,
    /// `runs` (with `region_base`, or null in a hole or on the trampoline), `findings`,
    /// `possibly_cached` (translations the TLB model holds as possibly cached), `cpus` (the CPUs
    /// that have the space loaded, whose TLBs may cache it) and
    /// `trace_findings` (each flush-trace finding with the trace events behind it).
    pub fn to_json(&self) -> String {
        let spaces: Vec<Value> = self.spaces.iter().map(space).collect();
        let doc = json!({
            "spaces": spaces,
            "steps": self.steps,
            "mismatches": self.mismatches,
            "exit_status": self.exit_status,
        });
        let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value always serializes");
        text.push('\n');
        text
    }
}
