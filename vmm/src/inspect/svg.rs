//! The SVG map of a [`Report`]: one band per address space, its regions as boxes in address
//! order (width growing with log2 of the size, so a single page stays visible next to a 64 MiB
//! region), present pages as marks inside them, holes as fixed-width breaks labelled with their
//! size, colours by access, stripes over copy-on-write and shared pages, and a legend.

use super::{human_size, Owner, Report, Sharing, SpaceReport, PAGE};
use mm_checker::access_string;
use shared_mm::abi::access_bits::{EXECUTE, READ, USER, WRITE};
use shared_mm::abi::{KERNEL_SPACE_BASE, USER_SPACE_BASE, USER_TRAMPOLINE};
use std::fmt::Write;

const MARGIN: f64 = 20.0;
/// Advance of one 10 px monospace character, rounded up.
const CHAR_W: f64 = 6.2;
const MIN_BOX: f64 = 90.0;
/// Extra box width per doubling of a region's size.
const PER_DOUBLING: f64 = 8.0;
const HOLE_W: f64 = 64.0;
const TOP: f64 = 40.0;
const TITLE_H: f64 = 22.0;
const BOX_H: f64 = 58.0;
const MARK_H: f64 = 12.0;
const BAND_H: f64 = TITLE_H + BOX_H + 36.0;
const LEGEND_ROW: f64 = 22.0;
const LEGEND_COLUMN: f64 = 300.0;
/// The mark of a present page where no region is: always a bug.
const BUG: &str = "#d50000";
/// The stripe over a copy-on-write page's mark.
const COW: &str = "#6a1b9a";
/// The stripe over the mark of a page of shared memory.
const SHARED_MEMORY: &str = "#00838f";

/// Box fill, page-mark colour and legend text of each access class.
const PALETTE: [(&str, &str, &str); 7] = [
    ("#c8e6c9", "#2e7d32", "u-rw-  user read-write"),
    ("#bbdefb", "#1565c0", "u-r--  user read-only"),
    ("#ffe0b2", "#e65100", "u-r-x  user read-execute"),
    ("#f8bbd0", "#ad1457", "u-rwx  user read-write-execute"),
    ("#eeeeee", "#616161", "u----  PROT_NONE (dashed outline)"),
    ("#d1c4e9", "#4527a0", "--rw-  kernel-only: no u (any rwx)"),
    ("#fff59d", "#f9a825", "trampoline page (no region)"),
];
const NO_ACCESS: usize = 4;
const TRAMPOLINE: usize = 6;

/// The palette entry for an access.
fn class(user: bool, read: bool, write: bool, exec: bool) -> usize {
    match (read, user, write, exec) {
        (false, ..) => NO_ACCESS,
        (_, false, ..) => 5,
        (_, _, true, true) => 3,
        (_, _, true, false) => 0,
        (_, _, false, true) => 2,
        (_, _, false, false) => 1,
    }
}

fn access_class(access: u32) -> usize {
    let has = |bit| access & bit != 0;
    class(has(USER), has(READ), has(WRITE), has(EXECUTE))
}

/// Text escaped for XML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Region(usize),
    Trampoline,
    Hole,
}

/// A stretch of a band: a region, the trampoline or a hole, and where it is drawn.
struct Segment {
    start: u128,
    end: u128,
    kind: Kind,
    x: f64,
    w: f64,
}

/// The three text lines of a box.
fn box_lines(space: &SpaceReport, kind: Kind, start: u128, end: u128) -> [String; 3] {
    let size = human_size(end - start);
    match kind {
        Kind::Region(i) => {
            let r = &space.regions[i];
            [
                format!("{:#x}", r.base),
                r.name_str().to_string(),
                format!("{} {size}", access_string(r.access)),
            ]
        }
        _ => [format!("{start:#x}"), "trampoline".into(), size],
    }
}

fn box_width(lines: &[String; 3], size: u128) -> f64 {
    let pages = (size / u128::from(PAGE)).max(1) as f64;
    let text = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    (MIN_BOX + PER_DOUBLING * pages.log2()).max(text * CHAR_W + 10.0)
}

/// The band's address range: the user half up to the trampoline, or the kernel half.
fn band_range(space: &SpaceReport) -> (u128, u128) {
    if space.is_kernel() {
        (u128::from(KERNEL_SPACE_BASE), 1 << 64)
    } else {
        (
            u128::from(USER_SPACE_BASE),
            u128::from(USER_TRAMPOLINE + PAGE),
        )
    }
}

/// Lays a band out left to right in address order.
fn layout(space: &SpaceReport) -> Vec<Segment> {
    let mut items: Vec<(u128, u128, Kind)> = space
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let base = u128::from(r.base);
            (base, base + u128::from(r.size), Kind::Region(i))
        })
        .collect();
    if !space.is_kernel() {
        let tramp = u128::from(USER_TRAMPOLINE);
        items.push((tramp, tramp + u128::from(PAGE), Kind::Trampoline));
    }
    items.sort_by_key(|item| item.0);
    let (low, high) = band_range(space);
    let mut segments = Vec::new();
    let mut x = MARGIN;
    let mut at = items.first().map_or(low, |item| item.0.min(low));
    let hole = |start, end, x| Segment {
        start,
        end,
        kind: Kind::Hole,
        x,
        w: HOLE_W,
    };
    for (start, end, kind) in items {
        if start > at {
            segments.push(hole(at, start, x));
            x += HOLE_W;
        }
        let w = box_width(&box_lines(space, kind, start, end), end - start);
        segments.push(Segment {
            start,
            end,
            kind,
            x,
            w,
        });
        x += w;
        at = at.max(end);
    }
    if at < high {
        segments.push(hole(at, high, x));
    }
    segments
}

fn band_title(space: &SpaceReport) -> String {
    format!("{}, {}", space.summary(), space.verdict())
}

fn draw_segment(out: &mut String, space: &SpaceReport, seg: &Segment, y: f64) {
    let (x, w) = (seg.x, seg.w);
    if seg.kind == Kind::Hole {
        let mid = y + BOX_H / 2.0;
        let cx = x + w / 2.0;
        let _ = write!(
            out,
            r##"<g><title>hole {:#x}-{:#x} ({})</title><line x1="{x:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="#9e9e9e" stroke-dasharray="3 3"/><path d="M{:.1} {:.1} l6 -16 M{:.1} {:.1} l6 -16" stroke="#424242" stroke-width="1.5" fill="none"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#424242">{}</text></g>"##,
            seg.start,
            seg.end,
            human_size(seg.end - seg.start),
            x + w,
            cx - 7.0,
            mid + 8.0,
            cx + 1.0,
            mid + 8.0,
            y + BOX_H + 14.0,
            esc(&human_size(seg.end - seg.start)),
        );
        out.push('\n');
        return;
    }
    let (colour, dashed) = match seg.kind {
        Kind::Region(i) => {
            let c = access_class(space.regions[i].access);
            (c, c == NO_ACCESS)
        }
        _ => (TRAMPOLINE, false),
    };
    let lines = box_lines(space, seg.kind, seg.start, seg.end);
    let dash = if dashed {
        r#" stroke-dasharray="4 2""#
    } else {
        ""
    };
    let flagged = match seg.kind {
        Kind::Region(i) => {
            let base = space.regions[i].base;
            space
                .findings
                .iter()
                .any(|f| f.region.is_some_and(|r| r.base == base))
        }
        _ => false,
    };
    let stroke = if flagged {
        format!(r#"stroke="{BUG}" stroke-width="2.5""#)
    } else {
        r##"stroke="#455a64""##.to_string()
    };
    let _ = write!(
        out,
        r##"<g><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BOX_H}" fill="{}" {stroke}{dash}/>"##,
        esc(&lines.join(" ")),
        PALETTE[colour].0,
    );
    for (n, line) in lines.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 5.0,
            y + 14.0 + 13.0 * n as f64,
            esc(line)
        );
    }
    let strip = y + BOX_H - MARK_H - 2.0;
    let _ = write!(
        out,
        r##"<rect x="{:.1}" y="{strip:.1}" width="{:.1}" height="{MARK_H}" fill="white" fill-opacity="0.6"/></g>"##,
        x + 1.0,
        w - 2.0,
    );
    out.push('\n');
}

/// The segment a row is drawn in.
fn segment_of(segments: &[Segment], owner: Owner, va: u64) -> Option<&Segment> {
    let want = match owner {
        Owner::Region(i) => Kind::Region(i),
        Owner::Trampoline => Kind::Trampoline,
        Owner::Hole => Kind::Hole,
    };
    let va = u128::from(va);
    segments
        .iter()
        .find(|s| s.kind == want && (want != Kind::Hole || (s.start..s.end).contains(&va)))
}

fn draw_marks(out: &mut String, space: &SpaceReport, segments: &[Segment], y: f64) {
    for row in &space.rows {
        let Some(seg) = segment_of(segments, row.owner, row.run.range_base) else {
            continue;
        };
        let title = esc(&format!(
            "{:#x}-{:#x} {} ({})",
            row.run.range_base,
            row.end(),
            row.perms(),
            human_size(u128::from(row.run.size))
        ));
        if row.owner == Owner::Hole {
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{y:.1}" width="8" height="{BOX_H}" fill="{BUG}"><title>present in a hole: {title}</title></rect>"#,
                seg.x + seg.w / 2.0 - 4.0,
            );
            continue;
        }
        let span = (seg.end - seg.start) as f64;
        let from = (u128::from(row.run.range_base) - seg.start) as f64 / span;
        let x = seg.x + 1.0 + from * (seg.w - 2.0);
        let w = (row.run.size as f64 / span * (seg.w - 2.0)).max(2.0);
        let w = w.min(seg.x + seg.w - 1.0 - x).max(1.0);
        let colour = class(row.run.user, true, row.run.writable, row.run.executable);
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{MARK_H}" fill="{}"><title>{title}</title></rect>"#,
            y + BOX_H - MARK_H - 2.0,
            PALETTE[colour].1,
        );
        if let Some(stripe) = sharing_stripe(row.sharing) {
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="3" fill="{stripe}"><title>{} {title}</title></rect>"#,
                y + BOX_H - MARK_H - 6.0,
                row.sharing.name(),
            );
        }
    }
}

/// The colour of the stripe above a page mark that is shared: copy-on-write or shared memory.
fn sharing_stripe(sharing: Sharing) -> Option<&'static str> {
    match sharing {
        Sharing::Private => None,
        Sharing::CopyOnWrite => Some(COW),
        Sharing::Shared => Some(SHARED_MEMORY),
    }
}

fn draw_legend(out: &mut String, y: f64, width: f64) -> f64 {
    let per_row = (((width - 2.0 * MARGIN) / LEGEND_COLUMN).floor() as usize).max(1);
    let mut entries: Vec<String> = PALETTE
        .iter()
        .enumerate()
        .map(|(i, (fill, _, text))| {
            let dash = if i == NO_ACCESS {
                r#" stroke-dasharray="4 2""#
            } else {
                ""
            };
            format!(
                r##"<rect width="22" height="14" fill="{fill}" stroke="#455a64"{dash}/><text x="30" y="11">{}</text>"##,
                esc(text)
            )
        })
        .collect();
    let marks: String = PALETTE
        .iter()
        .take(TRAMPOLINE)
        .enumerate()
        .map(|(i, (_, mark, _))| {
            format!(
                r#"<rect x="{}" y="4" width="3" height="10" fill="{mark}"/>"#,
                1 + 4 * i
            )
        })
        .collect();
    entries.push(format!(
        r##"<rect width="26" height="14" fill="white" stroke="#455a64"/>{marks}<text x="34" y="11">present pages: colour = page perms</text>"##
    ));
    entries.push(format!(
        r##"<rect width="22" height="14" fill="white" stroke="#455a64"/><rect x="2" y="3" width="18" height="3" fill="{COW}"/><text x="30" y="11">stripe: copy-on-write page (after fork)</text>"##
    ));
    entries.push(format!(
        r##"<rect width="22" height="14" fill="white" stroke="#455a64"/><rect x="2" y="3" width="18" height="3" fill="{SHARED_MEMORY}"/><text x="30" y="11">stripe: page of shared memory</text>"##
    ));
    entries.push(format!(
        r##"<rect width="22" height="14" fill="{BUG}"/><text x="30" y="11">present page in a hole (a bug)</text>"##
    ));
    entries.push(format!(
        r##"<rect width="22" height="14" fill="white" stroke="{BUG}" stroke-width="2.5"/><text x="30" y="11">region with a checker finding</text>"##
    ));
    entries.push(
        r##"<line x1="0" y1="7" x2="22" y2="7" stroke="#9e9e9e" stroke-dasharray="3 3"/><text x="30" y="11">hole, not to scale (size below)</text>"##
            .to_string(),
    );
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN}" y="{:.1}" font-weight="bold">Legend</text>"#,
        y + 12.0
    );
    for (n, entry) in entries.iter().enumerate() {
        let (col, row) = (n % per_row, n / per_row);
        let _ = writeln!(
            out,
            r#"<g transform="translate({:.1} {:.1})">{entry}</g>"#,
            MARGIN + col as f64 * LEGEND_COLUMN,
            y + 22.0 + row as f64 * LEGEND_ROW,
        );
    }
    let rows = entries.len().div_ceil(per_row) as f64;
    let note_y = y + 22.0 + rows * LEGEND_ROW + 10.0;
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="{note_y:.1}" fill="#424242">Box width grows with log2 of the region size; inside a box, page marks are to scale (at least 2 px wide).</text>"##
    );
    note_y + 10.0
}

impl Report {
    /// An SVG document (no XML declaration, so it starts with `<svg`).
    pub fn to_svg(&self) -> String {
        let layouts: Vec<Vec<Segment>> = self.spaces.iter().map(layout).collect();
        let bands_right = layouts
            .iter()
            .filter_map(|segs| segs.last().map(|s| s.x + s.w))
            .fold(0.0, f64::max);
        let width = (bands_right + MARGIN).max(3.0 * LEGEND_COLUMN + 2.0 * MARGIN);
        let mut body = String::new();
        let _ = writeln!(
            body,
            r#"<text x="{MARGIN}" y="24" font-size="15" font-weight="bold">vmm inspect: address-space map ({} spaces and the kernel)</text>"#,
            self.spaces.len().saturating_sub(1)
        );
        let mut y = TOP;
        for (space, segments) in self.spaces.iter().zip(&layouts) {
            let title = band_title(space);
            let fill = if space.findings.is_empty() {
                "#212121"
            } else {
                BUG
            };
            let _ = writeln!(
                body,
                r#"<text x="{MARGIN}" y="{:.1}" font-size="12" font-weight="bold" fill="{fill}">{}</text>"#,
                y + 14.0,
                esc(&title)
            );
            let boxes_y = y + TITLE_H;
            for seg in segments {
                draw_segment(&mut body, space, seg, boxes_y);
            }
            draw_marks(&mut body, space, segments, boxes_y);
            y += BAND_H;
        }
        let height = draw_legend(&mut body, y, width) + MARGIN;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"10\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(esc(r#"<a & "b">'"#), "&lt;a &amp; &quot;b&quot;&gt;&apos;");
    }

    #[test]
    fn access_classes_pick_the_documented_colours() {
        assert_eq!(access_class(USER | READ | WRITE), 0);
        assert_eq!(access_class(USER | READ), 1);
        assert_eq!(access_class(USER | READ | EXECUTE), 2);
        assert_eq!(access_class(USER), NO_ACCESS);
        assert_eq!(access_class(READ | WRITE), 5);
    }

    #[test]
    fn tiny_regions_keep_a_readable_box() {
        let lines = [String::new(), String::new(), String::new()];
        let page = box_width(&lines, u128::from(PAGE));
        let big = box_width(&lines, 64 << 20);
        assert!(page >= MIN_BOX);
        assert!(big > page && big < 3.0 * page, "{page} {big}");
    }
}
