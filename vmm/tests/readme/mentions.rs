//! The `vmm` commands and options a page's prose names in code spans (`vmm run --scenario`,
//! `--backend kvm|sim`): each must be one the binary accepts.

use crate::commands::{alternatives, check_args, check_features, instantiate};
use crate::At;

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
const SUBCOMMANDS: [&[&str]; 5] = [
    &["run"],
    &["inspect"],
    &["fuzz"],
    &["replay", "FILE"],
    &["convert-corpus"],
];

fn is_option(word: &str) -> bool {
    let name = word.strip_prefix("--");
    name.is_some_and(|name| name.starts_with(char::is_lowercase))
}

/// Checks a code span that names `vmm SUBCOMMAND ...` or a bare `--option ...`: each
/// alternative it shows must be accepted by the subcommand (a bare option: by at least one, or
/// be an option of a script). Returns whether the span was such a mention.
pub fn check_mention(at: At, span: &str, scripts: &str) -> bool {
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
            .map(|args| instantiate(at, &args.collect::<Vec<_>>()).0)
            .collect();
        let errors: Vec<String> = tries
            .iter()
            .filter_map(|t| accepted_so_far(t).err())
            .collect();
        let script_option = is_option(&variant[0]) && scripts.contains(&variant[0]);
        assert!(
            errors.len() < tries.len() || script_option,
            "{at}: `{span}`: {}",
            errors.join("")
        );
        tries.iter().for_each(|t| check_features(at, t));
    }
    true
}
