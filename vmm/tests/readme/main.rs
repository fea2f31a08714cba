//! The README cannot drift from the binary: every command line in its `sh` and `console` blocks
//! runs for real where that is cheap, and otherwise at least parses (`vmm --check-args`); a
//! transcript's shown output must come out of the real run; and every `vmm` command, option,
//! seeded bug, repository path, link and anchor its prose names must exist.
#![forbid(unsafe_code)]

mod markdown;

use markdown::Block;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// Included, so that editing the README rebuilds this test.
const README: &str = include_str!("../../../README.md");

/// Example values for the placeholders the README writes in capitals (`--memory MIB`).
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
];

/// The largest fuzz campaign (on the sim) the test runs for real rather than only parses.
const CHEAP_FUZZ_OPS: u64 = 10_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ sits in the repository")
}

/// A command line the README shows.
enum Shown {
    /// `vmm ARGS`, or `cargo run ... -p vmm -- ARGS`.
    Vmm(Vec<String>),
    /// `bash scripts/NAME ARGS`.
    Script(String, Vec<String>),
    /// `cat FILE`, in a transcript.
    Cat(String),
}

fn shown(line: usize, command: &str) -> Shown {
    assert!(
        !command.contains(['"', '\'', '\\', '$', '<', '>', '|', ';', '&']),
        "README line {line}: `{command}`: this test splits commands on spaces only"
    );
    let words: Vec<String> = command.split_whitespace().map(String::from).collect();
    let strs: Vec<&str> = words.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["vmm", ..] => Shown::Vmm(words[1..].to_vec()),
        ["cargo", "run", ..] => {
            let dashes = strs.iter().position(|w| *w == "--");
            let dashes =
                dashes.unwrap_or_else(|| panic!("README line {line}: no `--` in `{command}`"));
            assert!(
                strs[..dashes].windows(2).any(|w| w == ["-p", "vmm"]),
                "README line {line}: `{command}` does not run the vmm package"
            );
            Shown::Vmm(words[dashes + 1..].to_vec())
        }
        ["bash", script, ..] if script.starts_with("scripts/") => {
            Shown::Script(script.to_string(), words[2..].to_vec())
        }
        ["cat", file] => Shown::Cat(file.to_string()),
        _ => panic!(
            "README line {line}: `{command}` is a command this test does not check; teach it"
        ),
    }
}

/// `args` with `[optional]` brackets dropped and placeholders replaced by example values, and
/// whether there were any.
fn instantiate(line: usize, args: &[String]) -> (Vec<String>, bool) {
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
            let value = value.unwrap_or_else(|| {
                panic!("README line {line}: placeholder {arg} has no example value here")
            });
            value.1.to_string()
        })
        .collect();
    (args, any)
}

/// `args` once per alternative an `a|b` word offers (the other words at their first).
fn alternatives(args: &[String]) -> Vec<Vec<String>> {
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
fn check_features(line: usize, args: &[String]) {
    let at = args.iter().position(|a| a == "--guest-features");
    let list = at.and_then(|i| args.get(i + 1));
    for feature in list.into_iter().flat_map(|list| list.split(',')) {
        assert!(
            guest_mm::Bug::from_feature(feature).is_some(),
            "README line {line}: --guest-features {feature}: no such seeded bug"
        );
    }
}

fn vmm(args: &[String], dir: &Path) -> Output {
    let out = Command::new(VMM).args(args).current_dir(dir).output();
    out.expect("cannot start vmm")
}

/// `vmm --check-args ARGS`: parses the command line and exits without doing anything.
fn check_args(args: &[String]) -> Output {
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

/// Whether running `args` for real takes about a second at most: no coverage or seeded-bug
/// guest to build (seeded bugs are cheap only on the sim), and fuzzing only small, on the sim.
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
    !has("--coverage") && (sim || !has("--guest-features")) && (!fuzz || small)
}

/// Whether `args` read a file the README's reader would have to have made first.
fn reads_a_file(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "replay")
        || args.iter().any(|a| a == "--scenario" || a == "--kernel")
}

/// Checks a `vmm` command line: for real in `dir` if `real`, else parsed. A real run must end
/// with a verdict (0, or 1 for a failure found), not a usage or setup error or a guest failure.
fn check_vmm(line: usize, args: &[String], real: bool, dir: &Path) -> Output {
    check_features(line, args);
    let out = if real {
        vmm(args, dir)
    } else {
        check_args(args)
    };
    let allowed: &[i32] = if real { &[0, 1] } else { &[0] };
    assert!(
        out.status.code().is_some_and(|c| allowed.contains(&c)),
        "README line {line}: {}",
        describe(args, &out)
    );
    out
}

/// Checks `bash scripts/NAME ARGS`: the script exists and is valid bash; if it forwards to
/// `cargo run ... -p vmm -- SUBCOMMAND "$@"` the arguments must parse, else it must handle them.
fn check_script(line: usize, name: &str, args: &[String]) {
    let path = repo().join(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("README line {line}: {name}: {e}"));
    let syntax = Command::new("bash").arg("-n").arg(&path).status();
    assert!(
        syntax.expect("cannot start bash").success(),
        "README line {line}: {name} is not valid bash"
    );
    let forwards = text
        .lines()
        .find_map(|l| l.split_once("-p vmm -- ")?.1.strip_suffix(" \"$@\""));
    match forwards {
        Some(subcommand) => {
            let mut forwarded: Vec<String> =
                subcommand.split_whitespace().map(String::from).collect();
            forwarded.extend_from_slice(args);
            check_vmm(line, &forwarded, false, repo());
        }
        None => {
            for arg in args {
                assert!(
                    text.contains(arg.as_str()),
                    "README line {line}: {name} does not handle {arg}"
                );
            }
        }
    }
}

/// `A  # same as: B` or `A  # = B, ...` where one side runs a script: the script's text must
/// contain the other side's command.
fn check_equivalence(line: usize, command: &str, comment: &str) {
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
        "README line {line}: {name} is said to be `{equivalent}`, but it does not run that"
    );
}

/// Commands to type (`sh` blocks): the cheap ones that need no input file run for real, the
/// rest must parse.
fn check_sh(block: &Block, dir: &Path) -> usize {
    let mut checked = 0;
    for (i, text) in block.lines.iter().enumerate() {
        let line = block.line + 1 + i;
        let (command, comment) = text.split_once(" #").unwrap_or((text, ""));
        if command.trim().is_empty() || command.trim_start().starts_with('#') {
            continue;
        }
        match shown(line, command) {
            Shown::Vmm(args) => {
                let (args, placeholders) = instantiate(line, &args);
                let real = !placeholders && cheap(&args) && !reads_a_file(&args);
                check_vmm(line, &args, real, dir);
            }
            Shown::Script(name, args) => check_script(line, &name, &args),
            Shown::Cat(_) => panic!("README line {line}: `cat` belongs in a console transcript"),
        }
        check_equivalence(line, command, comment.trim());
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

fn assert_shows(line: usize, command: &str, shown: &[&str], printed: &str) {
    let actual: HashSet<&str> = printed.lines().map(str::trim_end).collect();
    for expected in shown.iter().filter(|l| must_match(l)) {
        assert!(
            actual.contains(expected.trim_end()),
            "README line {line}: the README shows {expected:?} for `{command}`, which printed:\n\
             {printed}"
        );
    }
}

/// Transcripts (`console` blocks): each `$ ` command runs for real in `dir` if it is cheap, and
/// the output the README shows for it must come out; the others must parse.
fn check_transcript(block: &Block, dir: &Path) -> usize {
    let prompts: Vec<usize> = (0..block.lines.len())
        .filter(|&i| block.lines[i].starts_with("$ "))
        .collect();
    assert!(
        !prompts.is_empty(),
        "README line {}: a console block without a `$ ` command",
        block.line
    );
    for (k, &i) in prompts.iter().enumerate() {
        let line = block.line + 1 + i;
        let end = prompts.get(k + 1).copied().unwrap_or(block.lines.len());
        let (command, output) = (&block.lines[i][2..], &block.lines[i + 1..end]);
        match shown(line, command) {
            Shown::Vmm(args) => {
                let (args, placeholders) = instantiate(line, &args);
                assert!(
                    !placeholders,
                    "README line {line}: a transcript of a synopsis"
                );
                let real = cheap(&args);
                let out = check_vmm(line, &args, real, dir);
                if real {
                    let printed =
                        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
                    assert_shows(line, command, output, &printed);
                }
            }
            Shown::Cat(file) => {
                let text = fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| {
                    panic!("README line {line}: no command before it made {file}: {e}")
                });
                assert_shows(line, command, output, &text);
            }
            Shown::Script(name, args) => check_script(line, &name, &args),
        }
    }
    prompts.len()
}

/// The file a text block is an example of, when the prose introduces it as "... `NAME`:".
fn example_file(block: &Block) -> Option<&'static str> {
    let intro = block.intro.trim_end().strip_suffix("`:")?;
    let name = intro.rsplit('`').next()?;
    (block.lang == "text" && !name.contains('/')).then_some(name)
}

#[test]
fn every_command_line_in_the_readme_runs_or_parses() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("readme");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating the scratch directory");
    let mut checked = 0;
    for block in markdown::blocks(README) {
        let line = block.line;
        match block.lang {
            "sh" => checked += check_sh(&block, &dir),
            "console" => checked += check_transcript(&block, &dir),
            "text" => {
                let prompt = block.lines.iter().any(|l| l.starts_with("$ "));
                assert!(
                    !prompt,
                    "README line {line}: a transcript must be a console block, to be checked"
                );
                if let Some(name) = example_file(&block) {
                    fs::write(dir.join(name), block.lines.join("\n") + "\n")
                        .expect("writing an example file");
                }
            }
            "rust" => {}
            other => panic!(
                "README line {line}: fence language {other:?}: use sh, console, text or rust"
            ),
        }
    }
    assert!(checked > 0, "no command line found in the README");
}

/// Whether clap accepts `args` as far as they go: a mention like `vmm run --scenario` may leave
/// out a value or a required argument, but every subcommand, option and value given must exist.
fn accepted_so_far(args: &[String]) -> Result<(), String> {
    let out = check_args(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let partial = [
        "a value is required for",
        "the following required arguments were not provided",
    ];
    if out.status.success() || partial.iter().any(|p| stderr.contains(p)) {
        Ok(())
    } else {
        Err(stderr.into_owned())
    }
}

/// The subcommands a bare `--option` in the prose may belong to (replay with its file).
const SUBCOMMANDS: [&[&str]; 4] = [&["run"], &["inspect"], &["fuzz"], &["replay", "FILE"]];

fn is_option(word: &str) -> bool {
    let name = word.strip_prefix("--");
    name.is_some_and(|name| name.starts_with(char::is_lowercase))
}

/// Checks a code span that names `vmm SUBCOMMAND ...` or a bare `--option ...`: each
/// alternative it shows must be accepted by the subcommand (a bare option: by at least one, or
/// be an option of a script). Returns whether the span was such a mention.
fn check_mention(line: usize, span: &str, scripts: &str) -> bool {
    let words: Vec<String> = span.split_whitespace().map(String::from).collect();
    let (prefixes, words): (&[&[&str]], &[String]) = match words.first() {
        Some(w) if w == "vmm" && words.len() > 1 => (&[&[]], &words[1..]),
        Some(w) if is_option(w) => (&SUBCOMMANDS, &words),
        _ => return false,
    };
    for variant in alternatives(words) {
        let tries: Vec<Vec<String>> = prefixes
            .iter()
            .map(|prefix| prefix.iter().map(|p| p.to_string()).chain(variant.clone()))
            .map(|args| instantiate(line, &args.collect::<Vec<_>>()).0)
            .collect();
        let errors: Vec<String> = tries
            .iter()
            .filter_map(|t| accepted_so_far(t).err())
            .collect();
        let script_option = is_option(&variant[0]) && scripts.contains(&variant[0]);
        assert!(
            errors.len() < tries.len() || script_option,
            "README line {line}: `{span}`: {}",
            errors.join("")
        );
        tries.iter().for_each(|t| check_features(line, t));
    }
    true
}

#[test]
fn every_vmm_command_and_option_the_prose_names_exists() {
    let scripts = fs::read_dir(repo().join("scripts")).expect("listing scripts/");
    let scripts: String = scripts
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .collect();
    let mentions = markdown::code_spans(README)
        .into_iter()
        .filter(|(line, span)| check_mention(*line, &span.replace("\\|", "|"), &scripts))
        .count();
    assert!(
        mentions > 0,
        "no vmm command or option in the README's prose"
    );
}

/// The top-level entries of the repository a README path may start with (not build outputs).
fn top_level() -> HashSet<String> {
    let ignored = fs::read_to_string(repo().join(".gitignore")).unwrap_or_default();
    let ignored: HashSet<&str> = ignored.lines().map(|l| l.trim_matches('/')).collect();
    let entries = fs::read_dir(repo()).expect("listing the repository");
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !ignored.contains(name.as_str()) && name != ".git")
        .collect()
}

#[test]
fn every_path_link_and_anchor_the_readme_names_exists() {
    let top = top_level();
    let mut checked = 0;
    for (line, span) in markdown::code_spans(README) {
        let path = span.strip_prefix("bash ").unwrap_or(&span);
        let first = path.split('/').next().unwrap_or_default();
        let in_repo = path.contains('/') && top.contains(first);
        let root_file = !path.contains('/') && (path.ends_with(".md") || path.ends_with(".toml"));
        if !path.contains(char::is_whitespace) && (in_repo || root_file) {
            assert!(
                repo().join(path).exists(),
                "README line {line}: `{span}` does not exist"
            );
            checked += 1;
        }
    }
    let anchors = markdown::anchors(README);
    for (line, target) in markdown::links(README) {
        if let Some(fragment) = target.strip_prefix('#') {
            assert!(
                anchors.contains(fragment),
                "README line {line}: no heading for #{fragment}"
            );
        } else if !target.contains("://") {
            let file = target.split('#').next().unwrap_or_default();
            assert!(
                repo().join(file).exists(),
                "README line {line}: a link to {target}, which does not exist"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no path or link in the README");
}

#[test]
fn every_seeded_bug_the_readme_names_exists() {
    let mut checked = 0;
    for (line, span) in markdown::code_spans(README) {
        let rest = span.strip_prefix("bug-");
        if rest.is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase() || c == '-')) {
            assert!(
                guest_mm::Bug::from_feature(&span).is_some(),
                "README line {line}: `{span}` is no seeded bug"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no seeded bug in the README");
}
