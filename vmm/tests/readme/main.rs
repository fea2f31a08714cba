//! The README and the pages of `docs/` cannot drift from the code: every command line in their
//! `sh` and `console` blocks runs for real where that is cheap, and otherwise at least parses
//! (`vmm --check-args`, cargo's own options and targets); a transcript's shown output must come
//! out of the real run; every `vmm` command, option, seeded bug, repository path, link and
//! anchor their prose names must exist; the README maps every page; and every crate's top doc
//! names the page about it.
#![forbid(unsafe_code)]

mod cargo;
mod commands;
mod grammar;
mod markdown;
mod mentions;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ sits in the repository")
}

/// A page the test checks: the README, or a page of `docs/`.
pub struct Page {
    /// Its path in the repository (`README.md`, `docs/gdb.md`).
    name: String,
    text: String,
}

impl Page {
    fn at(&self, line: usize) -> At<'_> {
        At {
            page: &self.name,
            line,
        }
    }

    /// The directory its relative links start from.
    fn dir(&self) -> PathBuf {
        let path = repo().join(&self.name);
        path.parent()
            .expect("a page is in a directory")
            .to_path_buf()
    }
}

/// A line of a page, as failures name it.
#[derive(Clone, Copy)]
pub struct At<'a> {
    page: &'a str,
    line: usize,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.page, self.line)
    }
}

/// The README, then every Markdown page of `docs/`, in name order.
fn pages() -> Vec<Page> {
    let docs = fs::read_dir(repo().join("docs")).expect("listing docs/");
    let mut names: Vec<String> = docs
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    names.sort();
    names.insert(0, "README.md".to_string());
    let read = |name: String| {
        let text = fs::read_to_string(repo().join(&name));
        let text = text.unwrap_or_else(|e| panic!("{name}: {e}"));
        Page { name, text }
    };
    names.into_iter().map(read).collect()
}

/// The code spans of every page, each with where it is.
fn spans(pages: &[Page]) -> Vec<(At<'_>, String)> {
    let mut all = Vec::new();
    for page in pages {
        let spans = markdown::code_spans(&page.text);
        let spans = spans.unwrap_or_else(|line| panic!("{}: unbalanced backquotes", page.at(line)));
        all.extend(spans.into_iter().map(|(line, span)| (page.at(line), span)));
    }
    all
}

/// The repository's source files and scripts (not build outputs), which read what the pages
/// say can be set.
fn sources() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![repo().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() && !name.starts_with('.') && name != "target" {
                dirs.push(path);
            } else if name.ends_with(".rs") || name.ends_with(".sh") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn every_command_line_in_the_docs_runs_or_parses() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("readme");
    let _ = fs::remove_dir_all(&scratch);
    let mut checked = 0;
    for page in pages() {
        let dir = scratch.join(page.name.replace('/', "-"));
        fs::create_dir_all(&dir).expect("creating the scratch directory");
        let blocks = markdown::blocks(&page.text);
        let blocks = blocks.unwrap_or_else(|line| panic!("{}: an unclosed fence", page.at(line)));
        for block in blocks {
            let at = page.at(block.line);
            match block.lang {
                "sh" => checked += commands::check_sh(&page, &block, &dir),
                "console" => checked += commands::check_transcript(&page, &block, &dir),
                "text" => {
                    let prompt = block.lines.iter().any(|l| l.starts_with("$ "));
                    assert!(
                        !prompt,
                        "{at}: a transcript must be a console block, to be checked"
                    );
                    if let Some(name) = commands::example_file(&block) {
                        fs::write(dir.join(name), block.lines.join("\n") + "\n")
                            .expect("writing an example file");
                    }
                }
                "rust" | "mermaid" => {}
                other => {
                    panic!("{at}: fence language {other:?}: use sh, console, text, rust or mermaid")
                }
            }
        }
    }
    assert!(checked > 0, "no command line found in the pages");
}

#[test]
fn every_vmm_command_and_option_the_prose_names_exists() {
    let scripts = fs::read_dir(repo().join("scripts")).expect("listing scripts/");
    let scripts: String = scripts
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .collect();
    let pages = pages();
    let mentions = spans(&pages)
        .into_iter()
        .filter(|(at, span)| mentions::check_mention(*at, &span.replace("\\|", "|"), &scripts))
        .count();
    assert!(mentions > 0, "no vmm command or option in the pages' prose");
}

#[test]
fn every_cargo_package_target_and_option_the_prose_names_exists() {
    let pages = pages();
    let mut checked = 0;
    for (at, span) in spans(&pages) {
        if let Some(args) = span.strip_prefix("cargo ") {
            let args: Vec<String> = args.split_whitespace().map(String::from).collect();
            cargo::check_cargo(at, &args);
            checked += 1;
        }
    }
    assert!(checked > 0, "no cargo command in the pages' prose");
}

/// The top-level entries of the repository a path may start with (not build outputs).
fn top_level() -> HashSet<String> {
    let ignored = fs::read_to_string(repo().join(".gitignore")).unwrap_or_default();
    let ignored: HashSet<&str> = ignored.lines().map(|l| l.trim_matches('/')).collect();
    let entries = fs::read_dir(repo()).expect("listing the repository");
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !ignored.contains(name.as_str()) && name != ".git")
        .collect()
}

/// Checks a link of `page`: a file relative to the page that exists, and a heading of that
/// file (or of the page) for its `#anchor`.
fn check_link(page: &Page, at: At, target: &str) {
    if target.contains("://") {
        return;
    }
    let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
    let path = if file.is_empty() {
        repo().join(&page.name)
    } else {
        page.dir().join(file)
    };
    assert!(
        path.exists(),
        "{at}: a link to {target}, which does not exist"
    );
    if !fragment.is_empty() {
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            markdown::anchors(&text).contains(fragment),
            "{at}: {target}: no such heading in {}",
            path.display()
        );
    }
}

#[test]
fn every_path_link_and_anchor_the_docs_name_exists() {
    let top = top_level();
    let pages = pages();
    let mut checked = 0;
    for (at, span) in spans(&pages) {
        let path = span.strip_prefix("bash ").unwrap_or(&span);
        let first = path.split('/').next().unwrap_or_default();
        let in_repo = path.contains('/') && top.contains(first);
        let root_file = !path.contains('/') && (path.ends_with(".md") || path.ends_with(".toml"));
        if !path.contains(char::is_whitespace) && (in_repo || root_file) {
            assert!(repo().join(path).exists(), "{at}: `{span}` does not exist");
            checked += 1;
        }
    }
    for page in &pages {
        for (line, target) in markdown::links(&page.text) {
            check_link(page, page.at(line), &target);
            checked += 1;
        }
    }
    assert!(checked > 0, "no path or link in the pages");
}

#[test]
fn every_seeded_bug_the_docs_name_exists() {
    let pages = pages();
    let mut checked = 0;
    for (at, span) in spans(&pages) {
        let rest = span.strip_prefix("bug-");
        if rest.is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase() || c == '-')) {
            assert!(
                guest_mm::Bug::from_feature(&span).is_some(),
                "{at}: `{span}` is no seeded bug"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no seeded bug in the pages");
}

#[test]
fn the_readme_maps_every_page_of_docs() {
    let pages = pages();
    let readme = &pages[0];
    let linked: HashSet<String> = markdown::links(&readme.text)
        .into_iter()
        .map(|(_, target)| target.split('#').next().unwrap_or_default().to_string())
        .collect();
    for page in &pages[1..] {
        assert!(
            linked.contains(&page.name),
            "README.md does not link {}: add it to the map of the docs",
            page.name
        );
    }
}

/// The `//!` lines at the top of a crate's root file.
fn crate_doc(root: &Path) -> String {
    let text = fs::read_to_string(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let lines = text
        .lines()
        .take_while(|l| l.starts_with("//!") || l.trim().is_empty());
    lines.collect::<Vec<_>>().join("\n")
}

#[test]
fn every_crate_doc_names_its_page_of_docs() {
    let workspace = cargo::workspace();
    let mut roots: Vec<(String, PathBuf)> = workspace
        .iter()
        .filter_map(|(package, targets)| {
            let lib = targets.iter().find(|t| t.kind == "lib");
            let root = lib.or_else(|| targets.iter().find(|t| t.kind == "bin"))?;
            Some((package.clone(), root.src.clone()))
        })
        .collect();
    // The guest kernel is a workspace of its own.
    roots.push((
        "guest-kernel".into(),
        repo().join("guest-kernel/src/main.rs"),
    ));
    for (package, root) in roots {
        let doc = crate_doc(&root);
        let pages: Vec<&str> = doc
            .split(|c: char| c.is_whitespace() || "`()[]<>,;".contains(c))
            .filter(|word| word.starts_with("docs/"))
            .map(|word| word.trim_end_matches(['.', ':']))
            .collect();
        assert!(
            !pages.is_empty(),
            "{package}: its crate doc ({}) names no page of docs/",
            root.display()
        );
        for page in pages {
            assert!(
                repo().join(page).exists(),
                "{package}: its crate doc names {page}, which does not exist"
            );
        }
    }
}

/// The subcommands `vmm --help` lists, or the options `vmm SUBCOMMAND --help` lists (the first
/// long name on each option line), without help and version.
fn listed_by_help(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .arg("--help")
        .output()
        .expect("cannot start vmm");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = if args.is_empty() {
        "Commands:"
    } else {
        "Options:"
    };
    let listed = help.split(section).nth(1).unwrap_or_default();
    let lines = listed
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty());
    let first_words = lines.filter_map(|line| {
        let mut words = line.split_whitespace().map(|w| w.trim_end_matches(','));
        match args.is_empty() {
            true => words.next(),
            false if line.trim_start().starts_with('-') => words.find(|w| w.starts_with("--")),
            false => None,
        }
        .map(String::from)
    });
    first_words
        .filter(|word| !["help", "--help", "--version"].contains(&word.as_str()))
        .collect()
}

#[test]
fn every_subcommand_and_option_of_the_binary_is_in_docs_commands() {
    let pages = pages();
    let commands = pages.iter().find(|p| p.name == "docs/commands.md");
    let commands = commands.expect("docs/commands.md exists");
    let spans = markdown::code_spans(&commands.text).expect("balanced backquotes");
    let named = |words: &[&str]| {
        spans.iter().any(|(_, span)| {
            let span: Vec<&str> = span.split_whitespace().collect();
            span.windows(words.len()).any(|w| w == words)
        })
    };
    let subcommands = listed_by_help(&[]);
    assert!(!subcommands.is_empty(), "vmm --help lists no subcommand");
    for subcommand in &subcommands {
        assert!(
            named(&["vmm", subcommand]),
            "docs/commands.md does not name `vmm {subcommand}`"
        );
        for option in listed_by_help(&[subcommand]) {
            assert!(
                named(&[&option]),
                "docs/commands.md does not name `{option}` of `vmm {subcommand}`"
            );
        }
    }
}

#[test]
fn every_seeded_bug_has_its_row_in_docs_checker() {
    let checker = fs::read_to_string(repo().join("docs/checker.md")).expect("docs/checker.md");
    for bug in guest_mm::Bug::ALL {
        let row = format!("| `{}` |", bug.feature());
        assert!(
            checker.lines().any(|line| line.starts_with(&row)),
            "docs/checker.md has no row for {} in its table of seeded bugs",
            bug.feature()
        );
    }
}

#[test]
fn every_section_of_the_system_bench_is_in_docs_benchmarks() {
    let bench = fs::read_to_string(repo().join("vmm/benches/system.rs")).expect("the bench");
    let page = fs::read_to_string(repo().join("docs/benchmarks.md")).expect("docs/benchmarks.md");
    let table = bench
        .split("let sections")
        .nth(1)
        .expect("the bench's list of sections");
    let table = table.split("];").next().unwrap_or_default();
    let names: HashSet<&str> = table
        .lines()
        .filter_map(|line| line.trim().strip_prefix("(\"")?.split('"').next())
        .collect();
    assert!(
        names.len() > 5,
        "found {} sections in the bench",
        names.len()
    );
    for name in names {
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!("| `{name}` |"))),
            "docs/benchmarks.md does not say what section {name} measures"
        );
    }
}
