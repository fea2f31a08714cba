//! The `info mem`-style text view of a [`Report`].

use super::{region_label, Owner, Report, Row, Sharing, SpaceReport};
use mm_checker::trace_events::describe;
use std::fmt::Write;

impl Row {
    /// The owner column: the region's label, `<trampoline>` or `<hole>`; ` [cow]` or
    /// ` [shared]` after it for shared pages.
    fn owner_label(&self, space: &SpaceReport) -> String {
        let owner = match self.owner {
            Owner::Region(i) => region_label(&space.regions[i]),
            Owner::Trampoline => "<trampoline>".into(),
            Owner::Hole => "<hole>".into(),
        };
        match self.sharing {
            Sharing::Private => owner,
            sharing => format!("{owner} [{}]", sharing.name()),
        }
    }
}

fn write_space(out: &mut String, space: &SpaceReport) {
    let _ = writeln!(out, "{}", space.summary());
    let _ = writeln!(
        out,
        "  {:<16} {:<16} {:<16} {:<4}  region",
        "start", "end", "size", "perm"
    );
    for row in &space.rows {
        let _ = writeln!(out, "  {}  {}", row.run, row.owner_label(space));
    }
    for (i, region) in space.regions.iter().enumerate() {
        if space.region_pages(i) == 0 {
            let _ = writeln!(out, "  region {} (no pages present)", region_label(region));
        }
    }
    let _ = writeln!(out, "  {}", space.verdict());
    for finding in &space.findings {
        let _ = writeln!(out, "    {finding}");
        for event in &finding.events {
            let _ = writeln!(out, "      trace {}", describe(event));
        }
    }
    let _ = writeln!(out, "  {}", space.tlb_line());
}

impl SpaceReport {
    /// This space's section of [`Report::to_table`].
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        write_space(&mut out, self);
        out
    }
}

impl Report {
    /// One section per space and the kernel: a header, the present runs with their owners, the
    /// regions without present pages and the agreement checker's verdict; then the scenario's.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for space in &self.spaces {
            write_space(&mut out, space);
            out.push('\n');
        }
        if self.mismatches.is_empty() {
            let _ = writeln!(
                out,
                "scenario: all {} steps gave the expected result",
                self.steps
            );
        } else {
            let _ = writeln!(
                out,
                "scenario: {} of {} steps gave an unexpected result",
                self.mismatches.len(),
                self.steps
            );
            for line in &self.mismatches {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}
