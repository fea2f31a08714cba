//! `vmm::inspect` in-process: the built-in scenario's spaces, their present pages as the host
//! walks them, the agreement verdict, and the table, JSON and SVG views agreeing with each other.
#![forbid(unsafe_code)]

use guest_image::variant::build_variant;
use integration_tests::config;
use mm_checker::Rule;
use mm_driver::GuestConfig;
use serde_json::Value;
use shared_mm::abi::access_bits::{EXECUTE, READ, USER, WRITE};
use shared_mm::abi::KERNEL_SPACE;
use shared_mm::boot_info::GuestCommand;
use std::sync::OnceLock;
use vmm::inspect::{inspect, Owner, Report, Row, Sharing, SpaceReport};
use vmm::Backends;

/// One inspection of the embedded guest, shared by the tests of this file.
fn report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        inspect(&Backends::default(), &config(GuestCommand::Serve))
            .unwrap_or_else(|e| panic!("inspect failed: {e}"))
    })
}

fn space(id: u32) -> &'static SpaceReport {
    report()
        .space(id)
        .unwrap_or_else(|| panic!("space {id} missing"))
}

/// The rows of the region at `base` of space `id`, as (start, size, perms).
fn rows_of(id: u32, base: u64) -> Vec<(u64, u64, String)> {
    let space = space(id);
    let (index, _) = space.region_at(base).unwrap_or_else(|| {
        panic!(
            "space {id} has no region at {base:#x}: {:#x?}",
            space.regions
        )
    });
    space
        .rows_in(index)
        .map(|r| (r.run.range_base, r.run.size, r.perms()))
        .collect()
}

fn row(start: u64, size: u64, perms: &str) -> (u64, u64, String) {
    (start, size, perms.to_string())
}

#[test]
fn every_scenario_space_and_the_kernel_appear() {
    let ids: Vec<u32> = report().spaces.iter().map(|s| s.space).collect();
    assert_eq!(ids, [1, 2, 3, 4, KERNEL_SPACE]);
    assert!(report().spaces.iter().all(|s| s.cr3 != 0));
    assert!(report().steps > 30);
    assert_eq!(report().exit_status, 0);
}

#[test]
fn a_correct_guest_gives_expected_results_and_no_findings() {
    assert!(report().problems().is_empty(), "{:#?}", report().problems());
    let table = report().to_table();
    assert_eq!(table.matches("  agreement: ok\n").count(), 5, "{table}");
    assert!(table.contains("scenario: all "), "{table}");
}

#[test]
fn touched_pages_show_their_effective_perms() {
    // Executed page of the u-r-x region; its second page was never touched.
    assert_eq!(rows_of(1, 0x60_0000), [row(0x60_0000, 0x1000, "ur-x")]);
    // Space 2 read one page of its u-r-- region at the address where space 1 has its own.
    assert_eq!(rows_of(2, 0x40_0000), [row(0x40_1000, 0x1000, "ur--")]);
    assert_eq!(rows_of(2, 0x1000), [row(0x1000, 0x1000, "ur-x")]);
    // Two pages written in the middle of a 1 MiB region, read-only since the fork.
    assert_eq!(
        rows_of(3, 0x1000_0000),
        [
            row(0x1008_0000, 0x1000, "ur--"),
            row(0x1008_1000, 0x1000, "ur--")
        ]
    );
    for id in [1, 2, 3] {
        let trampoline: Vec<&Row> = space(id)
            .rows
            .iter()
            .filter(|r| r.owner == Owner::Trampoline)
            .collect();
        assert_eq!(trampoline.len(), 1, "space {id}");
        assert_eq!(trampoline[0].perms(), "ur-x");
    }
}

/// The rows of the region at `base` of space `id`, as (start, perms, sharing).
fn sharing_of(id: u32, base: u64) -> Vec<(u64, String, Sharing)> {
    let space = space(id);
    let (index, _) = space.region_at(base).expect("region");
    space
        .rows_in(index)
        .map(|r| (r.run.range_base, r.perms(), r.sharing))
        .collect()
}

#[test]
fn a_fork_shows_copy_on_write_and_shared_pages_in_both_spaces() {
    let cow = |va, perms: &str, sharing| (va, perms.to_string(), sharing);
    // The page only read since the fork is one frame in both spaces, read-only in both; the
    // one the child wrote is a copy of its own, and the parent's frame is private again
    // (read-only until the parent writes).
    assert_eq!(
        sharing_of(3, 0x1000_0000),
        [
            cow(0x1008_0000, "ur--", Sharing::CopyOnWrite),
            cow(0x1008_1000, "ur--", Sharing::Private),
        ]
    );
    assert_eq!(
        sharing_of(4, 0x1000_0000),
        [
            cow(0x1008_0000, "ur--", Sharing::CopyOnWrite),
            cow(0x1008_1000, "urw-", Sharing::Private),
        ]
    );
    // Shared memory stays writable: the parent wrote page 0 before the fork, the child page 1.
    assert_eq!(
        sharing_of(3, 0x2000_0000),
        [cow(0x2000_0000, "urw-", Sharing::Shared)]
    );
    assert_eq!(
        sharing_of(4, 0x2000_0000),
        [cow(0x2000_1000, "urw-", Sharing::Shared)]
    );
    let table = report().to_table();
    assert!(table.contains("u-rw- [cow]\n"), "{table}");
    assert!(table.contains("usrw- [shared]\n"), "{table}");
    let doc: Value = serde_json::from_str(&report().to_json()).expect("valid JSON");
    let marks: Vec<&str> = doc["spaces"]
        .as_array()
        .expect("spaces")
        .iter()
        .flat_map(|s| s["runs"].as_array().expect("runs"))
        .filter_map(|r| r["sharing"].as_str())
        .filter(|&m| m != "private")
        .collect();
    assert_eq!(marks, ["cow", "shared", "cow", "shared"]);
    let svg = report().to_svg();
    assert!(
        svg.contains("stripe: copy-on-write page"),
        "no legend entry"
    );
    assert!(
        svg.contains("><title>cow 0x10080000-0x10081000"),
        "no cow stripe"
    );
    assert!(
        svg.contains("><title>shared 0x20000000-0x20002000"),
        "no shared stripe"
    );
}

#[test]
fn protect_and_unmap_split_regions_and_keep_touched_pages() {
    let regions: Vec<(u64, u64, u32)> = space(1)
        .regions
        .iter()
        .map(|r| (r.base, r.size, r.access))
        .filter(|&(base, ..)| (0x40_0000..0x40_8000).contains(&base))
        .collect();
    let urw = USER | READ | WRITE;
    assert_eq!(
        regions,
        [
            (0x40_0000, 0x2000, urw),
            (0x40_2000, 0x2000, USER | READ),
            (0x40_4000, 0x2000, urw),
            (0x40_7000, 0x1000, urw),
        ]
    );
    assert_eq!(rows_of(1, 0x40_0000), [row(0x40_0000, 0x2000, "urw-")]);
    // Written before the protect, so present, now read-only.
    assert_eq!(rows_of(1, 0x40_2000), [row(0x40_2000, 0x2000, "ur--")]);
    assert_eq!(rows_of(1, 0x40_4000), [row(0x40_4000, 0x1000, "urw-")]);
}

#[test]
fn untouched_kernel_only_and_prot_none_regions_have_no_present_pages() {
    let s1 = space(1);
    for (base, access) in [
        (0x40_7000, USER | READ | WRITE),
        (0x70_0000, READ | WRITE),
        (0x80_0000, USER),
    ] {
        let (index, region) = s1.region_at(base).expect("region");
        assert_eq!(region.access, access, "{base:#x}");
        assert_eq!(s1.region_pages(index), 0, "{base:#x}");
    }
    let table = report().to_table();
    assert!(
        table.contains("  region anon 0x800000+0x2000 u---- (no pages present)\n"),
        "{table}"
    );
    // The untouched 2 MiB random region of space 2 and the top page of space 3.
    let s2 = space(2);
    let (index, _) = s2
        .regions
        .iter()
        .enumerate()
        .find(|(_, r)| r.size == 2 << 20)
        .expect("2 MiB region in space 2");
    assert_eq!(s2.region_pages(index), 0);
    assert_eq!(rows_of(3, 0x7fff_ffff_e000), []);
}

#[test]
fn runs_are_split_at_region_boundaries() {
    // One coalesced run 0x901000-0x903000 crosses from one region into the adjacent one.
    assert_eq!(rows_of(1, 0x90_0000), [row(0x90_1000, 0x1000, "urw-")]);
    assert_eq!(rows_of(1, 0x90_2000), [row(0x90_2000, 0x1000, "urw-")]);
    for s in &report().spaces {
        assert!(
            s.rows.iter().all(|r| r.owner != Owner::Hole),
            "{} has present pages in a hole",
            s.name()
        );
    }
}

#[test]
fn placed_regions_are_aligned_and_their_touched_pages_present() {
    let s1 = space(1);
    let anywhere = s1
        .regions
        .iter()
        .find(|r| r.size == 0x4000 && r.base % (2 << 20) == 0)
        .expect("4 pages placed anywhere, 2 MiB aligned");
    assert_eq!(
        rows_of(1, anywhere.base),
        [row(anywhere.base + 0x1000, 0x1000, "urw-")]
    );
    let random = s1
        .regions
        .iter()
        .find(|r| r.size == 0x1_0000)
        .expect("16 pages placed at random");
    assert_eq!(random.base % 0x1_0000, 0);
    assert_eq!(random.access, USER | READ);
    assert_eq!(
        rows_of(1, random.base),
        [row(random.base + 0x8000, 0x1000, "ur--")]
    );
}

#[test]
fn kernel_section_lists_its_reservations_with_present_pages() {
    let kernel = space(KERNEL_SPACE);
    assert!(kernel.is_kernel());
    for name in ["physmap", "kernel image", "kmalloc"] {
        let (index, region) = kernel
            .regions
            .iter()
            .enumerate()
            .find(|(_, r)| r.name_str() == name)
            .unwrap_or_else(|| panic!("no {name} region"));
        assert!(
            kernel.region_pages(index) > 0,
            "{name} has no present pages"
        );
        assert!(kernel.rows_in(index).all(|r| !r.run.user), "{name}");
        assert_eq!(region.access & USER, 0, "{name}");
        // Only the kernel image holds code; the direct map and the heap are no-execute.
        let code = name == "kernel image";
        assert_eq!(region.access & EXECUTE != 0, code, "{name}");
        assert!(
            kernel.rows_in(index).all(|r| r.run.executable == code),
            "{name}"
        );
    }
    let table = report().to_table();
    let section = table
        .split("\n\n")
        .find(|s| s.starts_with("kernel: cr3 "))
        .expect("kernel section");
    for name in ["physmap 0x", "kernel image 0x", "kmalloc 0x"] {
        assert!(section.contains(name), "{section}");
    }
}

fn hex(value: &Value) -> u64 {
    let text = value.as_str().expect("addresses are strings");
    u64::from_str_radix(text.strip_prefix("0x").expect("0x prefix"), 16).expect("hex")
}

#[test]
fn json_parses_and_agrees_with_the_table() {
    let doc: Value = serde_json::from_str(&report().to_json()).expect("valid JSON");
    let table = report().to_table();
    let sections: Vec<&str> = table.split("\n\n").collect();
    let spaces = doc["spaces"].as_array().expect("spaces");
    assert_eq!(spaces.len(), report().spaces.len());
    for (json, space) in spaces.iter().zip(&report().spaces) {
        assert_eq!(json["space"].as_u64(), Some(u64::from(space.space)));
        assert_eq!(hex(&json["cr3"]), space.cr3);
        let header = format!("{}: cr3 {:#x}, ", space.name(), space.cr3);
        let section = sections
            .iter()
            .find(|s| s.starts_with(&header))
            .unwrap_or_else(|| panic!("no table section for {header}"));
        let table_rows: Vec<&str> = section
            .lines()
            .filter(|l| l.len() > 19 && l.as_bytes()[18] == b'-' && l.starts_with("  "))
            .collect();
        let runs = json["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), table_rows.len(), "{section}");
        for (run, line) in runs.iter().zip(&table_rows) {
            let start = hex(&run["start"]);
            let end = hex(&run["end"]);
            let perms = run["perms"].as_str().expect("perms");
            let prefix = format!(
                "  {start:016x}-{end:016x} {:016x} {perms}  ",
                end.wrapping_sub(start)
            );
            assert!(line.starts_with(&prefix), "{line:?} vs {prefix:?}");
            let flags = [&run["user"], &run["writable"], &run["executable"]].map(|v| v.as_bool());
            let expected = [
                perms.starts_with('u'),
                &perms[2..3] == "w",
                perms.ends_with('x'),
            ];
            assert_eq!(flags, expected.map(Some), "{run}");
            match run["region_base"].as_str() {
                Some(base) => {
                    let region = json["regions"]
                        .as_array()
                        .expect("regions")
                        .iter()
                        .find(|r| r["base"] == base)
                        .expect("region_base names a region");
                    let label = format!(
                        "{} {base}+{}",
                        region["name"].as_str().unwrap(),
                        region["size"].as_str().unwrap()
                    );
                    let mark = match run["sharing"].as_str().expect("sharing") {
                        "private" => String::new(),
                        sharing => format!(" [{sharing}]"),
                    };
                    let access = region["access"].as_str().unwrap();
                    assert!(line.ends_with(&format!("{label} {access}{mark}")), "{line}");
                }
                None => assert!(
                    line.ends_with("<trampoline>") || line.ends_with("<hole>"),
                    "{line}"
                ),
            }
        }
        for region in json["regions"].as_array().expect("regions") {
            let label = format!(
                "region {} {}+{} {} (no pages present)",
                region["name"].as_str().unwrap(),
                region["base"].as_str().unwrap(),
                region["size"].as_str().unwrap(),
                region["access"].as_str().unwrap()
            );
            let empty = region["present_pages"].as_u64() == Some(0);
            assert_eq!(section.contains(&label), empty, "{label} in\n{section}");
        }
        assert_eq!(json["findings"].as_array().map(Vec::len), Some(0));
    }
}

/// Checks that `xml` is well-formed: one root element, balanced tags, quoted attributes, and
/// no bare `<` or `&` in text or attribute values.
fn assert_well_formed(xml: &str) {
    fn check_text(text: &str) {
        assert!(!text.contains('<'), "bare < in {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |j| i + j + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bad entity {entity:?}"
            );
        }
    }
    fn check_attributes(mut attrs: &str) {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return;
            }
            let (name, rest) = attrs
                .split_once("=\"")
                .unwrap_or_else(|| panic!("unquoted attribute in {attrs:?}"));
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-:_".contains(c)),
                "attribute name {name:?}"
            );
            let (value, rest) = rest.split_once('"').expect("closing quote");
            check_text(value);
            attrs = rest;
        }
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        let text = &rest[..lt];
        assert!(
            !stack.is_empty() || text.trim().is_empty(),
            "text outside the root: {text:?}"
        );
        check_text(text);
        let (tag, after) = rest[lt + 1..].split_once('>').expect("unclosed tag");
        rest = after;
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "unbalanced </{name}>");
            continue;
        }
        let body = tag.strip_suffix('/').unwrap_or(tag);
        let name = body.split_whitespace().next().expect("tag name");
        check_attributes(&body[name.len()..]);
        if stack.is_empty() {
            roots += 1;
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    assert_eq!(roots, 1, "one root element");
}

#[test]
fn svg_is_well_formed_and_labels_every_region() {
    let svg = report().to_svg();
    assert!(svg.starts_with("<svg "), "{}", &svg[..40]);
    assert_well_formed(&svg);
    // Red outlines only in the legend: no region has a finding.
    assert_eq!(svg.matches(r##"stroke="#d50000""##).count(), 1);
    for space in &report().spaces {
        assert!(svg.contains(&format!("{}: cr3 {:#x}", space.name(), space.cr3)));
        for region in &space.regions {
            assert!(
                svg.contains(&format!(">{}<", region.name_str())),
                "{region:?}"
            );
            assert!(svg.contains(&format!(">{:#x}<", region.base)), "{region:?}");
        }
    }
}

#[test]
fn the_well_formedness_check_catches_broken_xml() {
    for broken in [
        "<svg><g></svg>",
        "<svg a=1/>",
        "<svg>a & b</svg>",
        "<svg/><svg/>",
    ] {
        let caught = std::panic::catch_unwind(|| assert_well_formed(broken));
        assert!(caught.is_err(), "{broken} passed");
    }
    assert_well_formed(r#"<svg x="a &amp; b"><g/><text>1 &lt; 2</text></svg>"#);
}

#[test]
fn inspect_shows_a_seeded_bug_in_the_table_and_json() {
    // Protect to read-only keeps the pages writable: the written pages of the u-r-- piece
    // show `urw-` there, and the checker flags them.
    let elf = build_variant(&["bug-keep-writable"]).unwrap_or_else(|e| panic!("{e}"));
    let config = GuestConfig {
        kernel: std::fs::read(&elf).expect("read the variant"),
        ..config(GuestCommand::Serve)
    };
    let report =
        inspect(&Backends::default(), &config).unwrap_or_else(|e| panic!("inspect failed: {e}"));
    let s1 = report.space(1).expect("space 1");
    let (index, _) = s1.region_at(0x40_2000).expect("u-r-- piece");
    let perms: Vec<String> = s1.rows_in(index).map(Row::perms).collect();
    assert_eq!(perms, ["urw-"]);
    assert!(
        s1.findings
            .iter()
            .any(|f| f.rule == Rule::PteExceedsRegion && f.va == Some(0x40_2000)),
        "{:#?}",
        s1.findings
    );
    assert!(
        !report.mismatches.is_empty(),
        "the write to the read-only piece succeeded"
    );
    let table = report.to_table();
    assert!(table.contains("  agreement: 2 finding(s)\n"), "{table}");
    let doc: Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(
        doc["spaces"][0]["findings"].as_array().map(Vec::len),
        Some(2)
    );
    let svg = report.to_svg();
    assert!(
        svg.contains(r##"fill="#d50000">space 1: cr3"##),
        "a space with findings gets a red title"
    );
    assert!(
        svg.contains(r##"fill="#bbdefb" stroke="#d50000""##),
        "the u-r-- region with the finding gets a red outline"
    );
}

#[test]
fn only_the_active_space_has_possibly_cached_translations() {
    let cached: Vec<(u32, usize)> = report()
        .spaces
        .iter()
        .filter(|s| s.possibly_cached > 0)
        .map(|s| (s.space, s.possibly_cached))
        .collect();
    // The last op ran in space 1 (a CR3 load dropped the others): every present user page of
    // it may be cached, trampoline included.
    assert_eq!(
        cached,
        [(1, space(1).present_pages() as usize)],
        "{cached:?}"
    );
    let doc: Value = serde_json::from_str(&report().to_json()).expect("valid JSON");
    assert_eq!(
        doc["spaces"][0]["possibly_cached"].as_u64(),
        Some(space(1).present_pages())
    );
    assert!(report()
        .to_table()
        .contains("  tlb: nothing possibly cached"));
}

#[test]
fn inspect_shows_a_flush_trace_finding_with_its_events_on_the_sim() {
    // Unmap flushes the neighbouring page: the written page 6 of 0x400000 stays cached.
    let config = GuestConfig {
        backend: mm_driver::Backend::Sim,
        seeded_bugs: guest_mm::SeededBugs::NONE.with(guest_mm::Bug::FlushWrongPage),
        ..config(GuestCommand::Serve)
    };
    let report =
        inspect(&Backends::default(), &config).unwrap_or_else(|e| panic!("inspect failed: {e}"));
    let stale = report
        .space(1)
        .and_then(|s| s.findings.iter().find(|f| f.rule == Rule::StaleTlbEntry))
        .unwrap_or_else(|| panic!("no stale-tlb-entry: {}", report.to_table()));
    assert_eq!(stale.va, Some(0x40_6000));
    let table = report.to_table();
    for event in ["pte-write", "flush va 0x407000", "enter-user"] {
        assert!(table.contains(event), "{event} missing from\n{table}");
    }
    let doc: Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    let traced = &doc["spaces"][0]["trace_findings"];
    assert!(
        traced
            .as_array()
            .is_some_and(
                |a| a.iter().any(|f| f["events"].as_array().is_some_and(|e| e
                    .iter()
                    .any(|e| e.as_str().is_some_and(|e| e.contains("flush va 0x407000")))))
            ),
        "{traced}"
    );
}
