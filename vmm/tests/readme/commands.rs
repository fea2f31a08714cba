//! The command lines a page shows: `vmm` (run for real where cheap, else parsed with
//! `vmm --check-args`), the scripts, cargo, and the environment variables set before them.

use crate::cargo::check_cargo;
use crate::markdown::Block;
use crate::{repo, At, Page};
use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Example values for the placeholders the pages write in capitals (`--memory MIB`).
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("PATH", "example.elf"),
    ("FILE", "example.scn"),
    ("OUT", "example.out"),
    ("DIR", "example-dir"),
    ("MIB", "256"),
    ("SECS", "60"),
    ("N", "1"),
    ("S", "1"),
    ("J", "2"),
    ("LIST", "bug-stale-pte"),
    ("BUG", "bug-stale-pte"),
    ("ADDR", "127.0.0.1:1234"),
    ("SUBCOMMAND", "run"),
];

/// The largest fuzz campaign (on the sim) the test runs for real rather than only parses.
const CHEAP_FUZZ_OPS: u64 = 10_000;

/// A command line a page shows.
enum Shown {
    /// `vmm ARGS`, or `cargo run ... -p vmm -- ARGS`.
    Vmm(Vec<String>),
    /// `bash scripts/NAME ARGS`.
    Script(String, Vec<String>),
    /// Any other `cargo SUBCOMMAND ARGS`.
    Cargo(Vec<String>),
    /// `cat FILE`, in a transcript.
    Cat(String),
}

/// `command` without the `NAME=value` words that set its environment, each checked.
fn without_env(at: At, command: &str) -> String {
    let mut words = command.split_whitespace().peekable();
    while let Some((name, value)) = words.peek().and_then(|w| w.split_once('=')) {
        check_env(at, name, value);
        words.next();
    }
    words.collect::<Vec<_>>().join(" ")
}

/// `NAME=value`: some source file or script of the repository reads `NAME`, and takes `value`
/// (it names it as a string literal or a word).
fn check_env(at: At, name: &str, value: &str) {
    let readers = crate::sources()
        .into_iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .filter(|text| text.contains(&format!("\"{name}\"")) || text.contains(&format!("${name}")))
        .collect::<Vec<_>>();
    assert!(
        !readers.is_empty(),
        "{at}: {name}=...: nothing in the repository reads {name}"
    );
    assert!(
        readers
            .iter()
            .any(|text| text.contains(&format!("\"{value}\""))),
        "{at}: {name}={value}: what reads {name} never names {value:?}"
    );
}

fn shown(at: At, command: &str) -> Shown {
    let pipe = command.split_whitespace().any(|word| word.starts_with('|'));
    assert!(
        !pipe && !command.contains(['"', '\'', '\\', '$', '<', '>', ';', '&']),
        "{at}: `{command}`: this test splits commands on spaces only (`a|b` offers alternatives)"
    );
    let command = without_env(at, command);
    let words: Vec<String> = command.split_whitespace().map(String::from).collect();
    let strs: Vec<&str> = words.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["vmm", ..] => Shown::Vmm(words[1..].to_vec()),
        ["cargo", "run", ..] => {
            let dashes = strs.iter().position(|w| *w == "--");
            let dashes = dashes.unwrap_or_else(|| panic!("{at}: no `--` in `{command}`"));
            assert!(
                strs[..dashes].windows(2).any(|w| w == ["-p", "vmm"]),
                "{at}: `{command}` does not run the vmm package"
            );
            Shown::Vmm(words[dashes + 1..].to_vec())
        }
        ["cargo", ..] => Shown::Cargo(words[1..].to_vec()),
        ["bash", script, ..] if script.starts_with("scripts/") => {
            Shown::Script(script.to_string(), words[2..].to_vec())
        }
        ["cat", file] => Shown::Cat(file.to_string()),
        _ => panic!("{at}: `{command}` is a command this test does not check; teach it"),
    }
}

/// `args` with `[optional]` brackets dropped and placeholders replaced by example values, and
/// whether there were any.
pub fn instantiate(at: At, args: &[String]) -> (Vec<String>, bool) {
    let mut any = false;
    let args = args
        .iter()
        .map(|arg| arg.trim_matches(['[', ']']))
        .filter(|arg| !arg.is_empty())
        .map(|arg| {
            if !arg.chars().all(|c| c.is_ascii_uppercase()) {
                return arg.to_string();
            }
            any = true;
            let value = PLACEHOLDERS.iter().find(|(name, _)| *name == arg);
            let value = value
                .unwrap_or_else(|| panic!("{at}: placeholder {arg} has no example value here"));
            value.1.to_string()
        })
        .collect();
    (args, any)
}

/// `args` once per alternative an `a|b` word offers (the other words at their first).
pub fn alternatives(args: &[String]) -> Vec<Vec<String>> {
    let first: Vec<String> = args
        .iter()
        .map(|a| a.split('|').next().unwrap_or_default().to_string())
        .collect();
    let mut all = vec![first.clone()];
    for (i, arg) in args.iter().enumerate() {
        for alternative in arg.split('|').skip(1) {
            let mut variant = first.clone();
            variant[i] = alternative.to_string();
            all.push(variant);
        }
    }
    all
}

/// Every seeded bug `--guest-features` names must be one.
pub fn check_features(at: At, args: &[String]) {
    let position = args.iter().position(|a| a == "--guest-features");
    let list = position.and_then(|i| args.get(i + 1));
    for feature in list.into_iter().flat_map(|list| list.split(',')) {
        assert!(
            guest_mm::Bug::from_feature(feature).is_some(),
            "{at}: --guest-features {feature}: no such seeded bug"
        );
    }
}

fn vmm(args: &[String], dir: &Path) -> Output {
    let out = Command::new(VMM).args(args).current_dir(dir).output();
    out.expect("cannot start vmm")
}

/// `vmm --check-args ARGS`: parses the command line and exits without doing anything.
pub fn check_args(args: &[String]) -> Output {
    let mut line = vec!["--check-args".to_string()];
    line.extend_from_slice(args);
    vmm(&line, repo())
}

fn describe(args: &[String], out: &Output) -> String {
    format!(
        "`vmm {}`: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether running `args` for real takes a few seconds at most and needs no one else: no
/// coverage or seeded-bug guest to build (seeded bugs are cheap only on the sim), fuzzing only
/// small, on the sim, and no waiting for gdb.
fn cheap(args: &[String]) -> bool {
    let has = |option: &str| args.iter().any(|a| a == option);
    let value = |option: &str| {
        let at = args.iter().position(|a| a == option)?;
        args.get(at + 1).map(String::as_str)
    };
    let sim = value("--backend") == Some("sim");
    let ops = value("--ops").and_then(|n| n.parse::<u64>().ok());
    let fuzz = args.first().is_some_and(|a| a == "fuzz");
    let small = sim && ops.is_some_and(|ops| ops <= CHEAP_FUZZ_OPS);
    !has("--coverage") && !has("--gdb") && (sim || !has("--guest-features")) && (!fuzz || small)
}

/// Whether `args` read a file the page's reader would have to have made first.
fn reads_a_file(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "replay")
        || args.iter().any(|a| a == "--scenario" || a == "--kernel")
}

/// Checks a `vmm` command line: for real in `dir` if `real`, else parsed. A real run must end
/// with a verdict (0, or 1 for a failure found), not a usage or setup error or a guest failure.
fn check_vmm(at: At, args: &[String], real: bool, dir: &Path) -> Output {
    check_features(at, args);
    let out = if real {
        vmm(args, dir)
    } else {
        check_args(args)
    };
    let allowed: &[i32] = if real { &[0, 1] } else { &[0] };
    assert!(
        out.status.code().is_some_and(|c| allowed.contains(&c)),
        "{at}: {}",
        describe(args, &out)
    );
    out
}

/// Checks `bash scripts/NAME ARGS`: the script exists and is valid bash; if it forwards to
/// `cargo run ... -p vmm -- SUBCOMMAND "$@"` the arguments must parse, else it must handle them.
fn check_script(at: At, name: &str, args: &[String]) {
    let path = repo().join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{at}: {name}: {e}"));
    let syntax = Command::new("bash").arg("-n").arg(&path).status();
    assert!(
        syntax.expect("cannot start bash").success(),
        "{at}: {name} is not valid bash"
    );
    let forwards = text
        .lines()
        .find_map(|l| l.split_once("-p vmm -- ")?.1.strip_suffix(" \"$@\""));
    match forwards {
        Some(subcommand) => {
            let mut forwarded: Vec<String> =
                subcommand.split_whitespace().map(String::from).collect();
            forwarded.extend_from_slice(args);
            check_vmm(at, &forwarded, false, repo());
        }
        None => {
            for arg in args {
                assert!(
                    text.contains(arg.as_str()),
                    "{at}: {name} does not handle {arg}"
                );
            }
        }
    }
}

/// `A  # same as: B` or `A  # = B, ...` where one side runs a script: the script's text must
/// contain the other side's command.
fn check_equivalence(at: At, command: &str, comment: &str) {
    let Some(other) = comment
        .strip_prefix("same as:")
        .or_else(|| comment.strip_prefix('='))
    else {
        return;
    };
    let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let command = normal(command);
    let other = normal(other.split(',').next().unwrap_or_default());
    let (script, equivalent) = match (command.starts_with("bash "), other.starts_with("bash ")) {
        (true, _) => (command, other),
        (_, true) => (other, command),
        _ => return,
    };
    let name = script.split_whitespace().nth(1).unwrap_or_default();
    let text = fs::read_to_string(repo().join(name)).unwrap_or_default();
    assert!(
        normal(&text).contains(&equivalent),
        "{at}: {name} is said to be `{equivalent}`, but it does not run that"
    );
}

/// Commands to type (`sh` blocks): the cheap ones that need no input file run for real, the
/// rest must parse.
pub fn check_sh(page: &Page, block: &Block, dir: &Path) -> usize {
    let mut checked = 0;
    for (i, text) in block.lines.iter().enumerate() {
        let at = page.at(block.line + 1 + i);
        let (command, comment) = text.split_once(" #").unwrap_or((text, ""));
        if command.trim().is_empty() || command.trim_start().starts_with('#') {
            continue;
        }
        match shown(at, command) {
            Shown::Vmm(args) => {
                let (args, placeholders) = instantiate(at, &args);
                for args in alternatives(&args) {
                    let real = !placeholders && cheap(&args) && !reads_a_file(&args);
                    check_vmm(at, &args, real, dir);
                }
            }
            Shown::Script(name, args) => check_script(at, &name, &args),
            Shown::Cargo(args) => check_cargo(at, &args),
            Shown::Cat(_) => panic!("{at}: `cat` belongs in a console transcript"),
        }
        check_equivalence(at, command, comment.trim());
        checked += 1;
    }
    checked
}

/// Whether a transcript's output line must appear verbatim in the real output: not blank, an
/// elision (`...`) or a measured time.
fn must_match(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let timed = words.windows(2).any(|w| {
        w[0].replace(',', "").parse::<f64>().is_ok()
            && ["s", "ms", "µs"].contains(&w[1].trim_end_matches([')', ';', ',']))
    });
    !line.trim().is_empty() && !line.contains("...") && !timed
}

fn assert_shows(at: At, command: &str, shown: &[&str], printed: &str) {
    let actual: HashSet<&str> = printed.lines().map(str::trim_end).collect();
    for expected in shown.iter().filter(|l| must_match(l)) {
        assert!(
            actual.contains(expected.trim_end()),
            "{at}: the page shows {expected:?} for `{command}`, which printed:\n{printed}"
        );
    }
}

/// Transcripts (`console` blocks): each `$ ` command runs for real in `dir` if it is cheap, and
/// the output the page shows for it must come out; the others must parse.
pub fn check_transcript(page: &Page, block: &Block, dir: &Path) -> usize {
    let prompts: Vec<usize> = (0..block.lines.len())
        .filter(|&i| block.lines[i].starts_with("$ "))
        .collect();
    assert!(
        !prompts.is_empty(),
        "{}: a console block without a `$ ` command",
        page.at(block.line)
    );
    for (k, &i) in prompts.iter().enumerate() {
        let at = page.at(block.line + 1 + i);
        let end = prompts.get(k + 1).copied().unwrap_or(block.lines.len());
        let (command, output) = (&block.lines[i][2..], &block.lines[i + 1..end]);
        match shown(at, command) {
            Shown::Vmm(args) => {
                let (args, placeholders) = instantiate(at, &args);
                assert!(!placeholders, "{at}: a transcript of a synopsis");
                let real = cheap(&args);
                let out = check_vmm(at, &args, real, dir);
                if real {
                    let printed =
                        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
                    assert_shows(at, command, output, &printed);
                }
            }
            Shown::Cat(file) => {
                let text = fs::read_to_string(dir.join(&file))
                    .unwrap_or_else(|e| panic!("{at}: no command before it made {file}: {e}"));
                assert_shows(at, command, output, &text);
            }
            Shown::Script(name, args) => check_script(at, &name, &args),
            Shown::Cargo(args) => check_cargo(at, &args),
        }
    }
    prompts.len()
}

/// The file a text block is an example of, when the prose introduces it as "... `NAME`:".
pub fn example_file<'a>(block: &Block<'a>) -> Option<&'a str> {
    let intro = block.intro.trim_end().strip_suffix("`:")?;
    let name = intro.rsplit('`').next()?;
    (block.lang == "text" && !name.contains('/')).then_some(name)
}
