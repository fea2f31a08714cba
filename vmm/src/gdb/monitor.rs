//! The `monitor` commands: the MM as the host sees it while gdb holds the guest stopped. Region
//! trees come from the last batch boundary ([`MmView`]); page tables are walked as they are now,
//! with the host's own walker, and the agreement checker and the region table are `vmm
//! inspect`'s.

use super::cpu_listing::{self, CpuLine};
use super::observer::MmView;
use super::tlb_listing;
use crate::inspect::{space_report, Context};
use mm_checker::coherence::Coherence;
use mm_checker::Finding;
use mm_driver::driver::SpaceSnapshot;
use shared_mm::abi::KERNEL_SPACE;
use shared_mm::pte::{PageLevel, PageTableEntry, ADDRESS_MASK};
use std::fmt::{self, Write};
use vm_memory::GuestMemoryMmap;
use x86_paging::page_walk::{walk, WalkPath};

/// What `monitor help` prints.
const HELP: &str = "\
vmm monitor commands (SPACE is a space id or `kernel`; default: the space whose page tables are
active now):
  spaces                the live address spaces, their CR3s and region counts
  cpus                  each vCPU: its gdb thread, rip, ring, CR3 and the space loaded there
  regions [SPACE]       the region tree beside the pages present now, and the checker's verdict
  walk [SPACE] ADDR     each level's entry for ADDR, and the resulting access
  check                 run the agreement checker now and print its findings
  tlb [SPACE]           the translations the TLB may hold now, stale ones marked (from the
                        flush trace replayed against the TLB model)
";

/// Which space a command is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceArg {
    /// The space whose page tables are active (CR3) when the guest stopped.
    Current,
    Kernel,
    User(u32),
}

/// A parsed `monitor` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Spaces,
    Cpus,
    Regions(SpaceArg),
    Walk(SpaceArg, u64),
    Check,
    Tlb(SpaceArg),
}

/// Why a command line was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Unknown(String),
    BadSpace(String),
    BadAddress(String),
    Arguments(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unknown(word) => write!(f, "unknown monitor command {word:?}"),
            ParseError::BadSpace(word) => {
                write!(f, "{word:?} is not a space (a space id, or `kernel`)")
            }
            ParseError::BadAddress(word) => write!(f, "{word:?} is not an address"),
            ParseError::Arguments(usage) => write!(f, "usage: monitor {usage}"),
        }
    }
}

fn space_arg(word: &str) -> Result<SpaceArg, ParseError> {
    if word == "kernel" {
        return Ok(SpaceArg::Kernel);
    }
    word.parse()
        .map(SpaceArg::User)
        .map_err(|_| ParseError::BadSpace(word.into()))
}

fn address(word: &str) -> Result<u64, ParseError> {
    let parsed = match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => word.replace('_', "").parse(),
    };
    parsed.map_err(|_| ParseError::BadAddress(word.into()))
}

/// Parses a command line (what follows `monitor`).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let optional_space = |rest: &[&str], usage| match rest {
        [] => Ok(SpaceArg::Current),
        [space] => space_arg(space),
        _ => Err(ParseError::Arguments(usage)),
    };
    match words.as_slice() {
        [] | ["help"] => Ok(Command::Help),
        ["spaces"] => Ok(Command::Spaces),
        ["cpus"] => Ok(Command::Cpus),
        ["check"] => Ok(Command::Check),
        ["regions", rest @ ..] => optional_space(rest, "regions [SPACE]").map(Command::Regions),
        ["tlb", rest @ ..] => optional_space(rest, "tlb [SPACE]").map(Command::Tlb),
        ["walk", addr] => Ok(Command::Walk(SpaceArg::Current, address(addr)?)),
        ["walk", space, addr] => Ok(Command::Walk(space_arg(space)?, address(addr)?)),
        ["walk", ..] => Err(ParseError::Arguments("walk [SPACE] ADDR")),
        ["spaces" | "cpus" | "check" | "help", ..] => Err(ParseError::Arguments(
            "spaces | cpus | check | help (they take no argument)",
        )),
        [other, ..] => Err(ParseError::Unknown(other.to_string())),
    }
}

/// The stopped guest a command looks at.
pub struct Stopped<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub view: &'a MmView,
    /// CR3 of the CPU that stopped.
    pub cr3: u64,
    /// Every vCPU gdb sees.
    pub cpus: &'a [CpuLine],
}

fn name(space: u32) -> String {
    if space == KERNEL_SPACE {
        "kernel".into()
    } else {
        format!("space {space}")
    }
}

impl Stopped<'_> {
    fn is_current(&self, cr3: u64) -> bool {
        cr3 & ADDRESS_MASK == self.cr3 & ADDRESS_MASK
    }

    /// The space `arg` names, with its page-table root.
    fn resolve(&self, arg: SpaceArg) -> Result<(u32, u64), String> {
        let kernel_cr3 = || self.view.kernel.as_ref().map_or(self.cr3, |k| k.cr3);
        match arg {
            SpaceArg::Kernel => Ok((KERNEL_SPACE, kernel_cr3())),
            SpaceArg::User(id) => self
                .view
                .spaces
                .iter()
                .find(|s| s.space == id)
                .map(|s| (id, s.cr3))
                .ok_or_else(|| {
                    let live: Vec<String> = self
                        .view
                        .spaces
                        .iter()
                        .map(|s| s.space.to_string())
                        .collect();
                    format!(
                        "there was no space {id} at the last batch boundary (spaces then: {})",
                        live.join(", ")
                    )
                }),
            SpaceArg::Current => Ok(self
                .view
                .spaces
                .iter()
                .find(|s| self.is_current(s.cr3))
                .map_or((KERNEL_SPACE, self.cr3), |s| (s.space, s.cr3))),
        }
    }

    fn trees_note(&self) -> String {
        format!(
            "region trees as of batch {} (of {} served); page tables as they are now",
            self.view.trees_at, self.view.batches
        )
    }

    fn no_trees(&self) -> String {
        "no region tree has been exported yet: the guest exports its trees after each batch, \
         and it has not finished its first"
            .into()
    }

    fn spaces(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, space: u32, cr3: u64| {
            let regions = self.view.tree(space).map_or("no tree yet".into(), |t| {
                format!("{} regions", t.regions.len())
            });
            let current = if self.is_current(cr3) {
                "  <- current CR3"
            } else {
                ""
            };
            let _ = writeln!(out, "{}: cr3 {cr3:#x}, {regions}{current}", name(space));
        };
        if let Some(kernel) = &self.view.kernel {
            line(&mut out, KERNEL_SPACE, kernel.cr3);
        }
        for s in &self.view.spaces {
            line(&mut out, s.space, s.cr3);
        }
        if self.view.spaces.is_empty() {
            let _ = writeln!(
                out,
                "no user address space was live at the last batch boundary"
            );
        }
        let _ = writeln!(out, "{}", self.trees_note());
        out
    }

    /// The agreement checker over the last trees and today's page tables.
    fn findings(&self) -> Option<(&SpaceSnapshot, Vec<Finding>)> {
        let kernel = self.view.kernel.as_ref()?;
        Some((
            kernel,
            mm_checker::check(self.mem, kernel, &self.view.trees, &self.view.refs),
        ))
    }

    fn regions(&self, arg: SpaceArg) -> Result<String, String> {
        let (space, _) = self.resolve(arg)?;
        let (Some((_, findings)), Some(tree)) = (self.findings(), self.view.tree(space)) else {
            return Ok(self.no_trees());
        };
        let mine = findings.into_iter().filter(|f| f.space == space).collect();
        // Without a usable replay the report just marks nothing as possibly cached.
        let tlb = tlb_listing::current(self.mem, self.view.tlb.as_ref())
            .unwrap_or_else(|_| Coherence::new(0));
        let context = Context {
            coherence: &tlb,
            refs: &self.view.refs,
        };
        let report = space_report(self.mem, tree.clone(), mine, context);
        Ok(format!("{}{}\n", report.to_table(), self.trees_note()))
    }

    fn check(&self) -> String {
        let Some((_, findings)) = self.findings() else {
            return self.no_trees();
        };
        let mut out = format!(
            "agreement checker over the kernel and {} space(s): ",
            self.view.trees.len()
        );
        match findings.len() {
            0 => out.push_str("agreement: ok\n"),
            n => {
                let _ = writeln!(out, "{n} finding(s)");
                for finding in &findings {
                    let _ = writeln!(out, "  {finding}");
                }
            }
        }
        let _ = writeln!(out, "{}", self.trees_note());
        out
    }

    fn walk(&self, arg: SpaceArg, va: u64) -> Result<String, String> {
        let (space, cr3) = self.resolve(arg)?;
        let path = walk(self.mem, cr3, va).map_err(|e| format!("walk of {va:#x} failed: {e}"))?;
        Ok(describe_walk(&name(space), cr3, &path))
    }

    fn tlb(&self, arg: SpaceArg) -> Result<String, String> {
        let (space, cr3) = self.resolve(arg)?;
        if self.view.tlb_lost {
            return Err(
                "the flush trace grew past what the host follows; see the checker's \
                        trace-too-large error"
                    .into(),
            );
        }
        let tlb = tlb_listing::current(self.mem, self.view.tlb.as_ref())?;
        Ok(tlb_listing::describe(
            &name(space),
            cr3 & ADDRESS_MASK,
            &tlb,
        ))
    }

    /// Runs `command`; the text for gdb's console.
    pub fn run(&self, command: Command) -> String {
        let outcome = match command {
            Command::Help => Ok(HELP.into()),
            Command::Spaces => Ok(self.spaces()),
            Command::Cpus => Ok(cpu_listing::listing(self.cpus, self.view)),
            Command::Regions(arg) => self.regions(arg),
            Command::Walk(arg, va) => self.walk(arg, va),
            Command::Check => Ok(self.check()),
            Command::Tlb(arg) => self.tlb(arg),
        };
        outcome.unwrap_or_else(|why| format!("error: {why}\n"))
    }
}

fn level_name(level: PageLevel) -> &'static str {
    match level {
        PageLevel::Pml4 => "PML4",
        PageLevel::Pdpt => "PDPT",
        PageLevel::Pd => "PD",
        PageLevel::Pt => "PT",
    }
}

/// `present user rw nx` style flags of one entry.
fn entry_flags(entry: PageTableEntry, level: PageLevel) -> String {
    if !entry.is_present() {
        return "not present".into();
    }
    let mut words = vec!["present"];
    words.push(if entry.is_user() {
        "user"
    } else {
        "supervisor"
    });
    words.push(if entry.is_writable() { "rw" } else { "ro" });
    if entry.is_no_execute() {
        words.push("nx");
    }
    if entry.is_leaf(level) && level != PageLevel::Pt {
        words.push("huge");
    }
    words.join(" ")
}

/// Each entry of `path` and where the walk ends.
fn describe_walk(space: &str, cr3: u64, path: &WalkPath) -> String {
    let mut out = format!("walk of {:#x} in {space} (cr3 {cr3:#x}):\n", path.va);
    for e in path.entries() {
        let slot = format!("{}[{}]", level_name(e.level), e.level.index(path.va));
        let _ = writeln!(
            out,
            "  {slot:<10} at {:#010x}: {:#018x}  {}",
            e.addr,
            e.entry.raw(),
            entry_flags(e.entry, e.level)
        );
    }
    match &path.translation {
        None => out.push_str("  -> not mapped\n"),
        Some(t) => {
            let p = t.leaf.perms;
            let size = crate::inspect::human_size(u128::from(t.leaf.size));
            let _ = writeln!(
                out,
                "  -> phys {:#x} in a {size} page; access {} r{}{}",
                t.phys,
                if p.user { "user" } else { "supervisor" },
                if p.writable { 'w' } else { '-' },
                if p.executable() { 'x' } else { '-' },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::SpaceRecord;
    use shared_mm::pte::{PageTableFlags as F, PAGE_SIZE_4K};
    use vm_memory::GuestAddress;
    use x86_paging::page_walk::PageTableBuilder;

    #[test]
    fn commands_parse_with_optional_spaces_and_hex_or_decimal_addresses() {
        assert_eq!(parse(""), Ok(Command::Help));
        assert_eq!(parse("spaces"), Ok(Command::Spaces));
        assert_eq!(parse("regions"), Ok(Command::Regions(SpaceArg::Current)));
        assert_eq!(
            parse("regions kernel"),
            Ok(Command::Regions(SpaceArg::Kernel))
        );
        assert_eq!(parse(" tlb  2 "), Ok(Command::Tlb(SpaceArg::User(2))));
        assert_eq!(
            parse("walk 0x40_0000"),
            Ok(Command::Walk(SpaceArg::Current, 0x40_0000))
        );
        assert_eq!(
            parse("walk 1 4096"),
            Ok(Command::Walk(SpaceArg::User(1), 4096))
        );
        assert_eq!(parse("check"), Ok(Command::Check));
        assert_eq!(
            parse("frobnicate"),
            Err(ParseError::Unknown("frobnicate".into()))
        );
        assert_eq!(parse("regions x"), Err(ParseError::BadSpace("x".into())));
        assert_eq!(parse("walk 1 zz"), Err(ParseError::BadAddress("zz".into())));
        assert!(matches!(parse("walk"), Err(ParseError::Arguments(_))));
        assert!(matches!(parse("check now"), Err(ParseError::Arguments(_))));
    }

    #[test]
    fn walk_prints_every_level_and_the_access_of_the_space_that_is_current() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut b = PageTableBuilder::new(&mem, (1 << 20)..(4 << 20)).unwrap();
        let flags = F::WRITABLE | F::USER | F::NO_EXECUTE;
        b.map(0x40_0000, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, flags)
            .unwrap();
        let view = MmView {
            spaces: vec![SpaceRecord {
                space: 7,
                cr3: b.cr3(),
            }],
            ..MmView::default()
        };
        let stopped = Stopped {
            mem: &mem,
            view: &view,
            cr3: b.cr3(),
            cpus: &[],
        };
        let out = stopped.run(Command::Walk(SpaceArg::Current, 0x40_0123));
        assert!(out.starts_with("walk of 0x400123 in space 7"), "{out}");
        for level in ["PML4[0]", "PDPT[0]", "PD[2]", "PT[0]"] {
            assert!(out.contains(level), "{out}");
        }
        assert!(
            out.contains("-> phys 0x5123 in a 4 KiB page; access user rw-"),
            "{out}"
        );
        let hole = stopped.run(Command::Walk(SpaceArg::User(7), 0x8000_0000));
        assert!(
            hole.contains("not present") && hole.contains("-> not mapped"),
            "{hole}"
        );
        let missing = stopped.run(Command::Regions(SpaceArg::User(3)));
        assert_eq!(
            missing,
            "error: there was no space 3 at the last batch boundary (spaces then: 7)\n"
        );
        let none = stopped.run(Command::Regions(SpaceArg::User(7)));
        assert!(
            none.starts_with("no region tree has been exported yet"),
            "{none}"
        );
        // No trace event yet: no directory has been activated, so nothing is cached.
        let tlb = stopped.run(Command::Tlb(SpaceArg::Current));
        assert!(
            tlb.contains("is not active, so the TLB holds none"),
            "{tlb}"
        );
    }
}
