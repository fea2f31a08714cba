//! The scenario grammar `docs/scenarios.md` shows, held to the parser: every operation, error
//! status and fault kind it lists must be one `mm-scenario` reads.

use crate::{markdown, repo};
use mm_scenario::expect::Expect;
use mm_scenario::ops::{op_from_line, OpError};
use std::fs;

/// The alternatives of production `name` in the grammar (`op = a | b` with `| c` lines after).
fn alternatives<'a>(grammar: &[&'a str], name: &str) -> Vec<&'a str> {
    let start = grammar.iter().position(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(name) && words.next() == Some("=")
    });
    let start = start.unwrap_or_else(|| panic!("docs/scenarios.md: the grammar has no {name}"));
    let first = grammar[start].split_once('=').map_or("", |(_, rest)| rest);
    let more = grammar[start + 1..]
        .iter()
        .take_while(|line| line.trim_start().starts_with('|'));
    std::iter::once(first)
        .chain(more.copied())
        .flat_map(|line| line.split('|'))
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .collect()
}

#[test]
fn every_operation_status_and_fault_of_the_scenario_grammar_parses() {
    let text = fs::read_to_string(repo().join("docs/scenarios.md")).expect("docs/scenarios.md");
    let blocks = markdown::blocks(&text).expect("closed fences");
    let grammar = blocks
        .iter()
        .find(|block| block.lines.first().is_some_and(|l| l.starts_with("file ")))
        .expect("docs/scenarios.md shows the grammar");
    let ops = alternatives(&grammar.lines, "op");
    assert!(ops.len() > 10, "the grammar lists {} operations", ops.len());
    for op in ops {
        assert!(
            !matches!(op_from_line(op), Err(OpError::UnknownOp(_))),
            "docs/scenarios.md: the grammar's operation {op} is not one mm-scenario reads"
        );
    }
    for status in alternatives(&grammar.lines, "status") {
        let expect = Expect::parse(&format!("error {status}"));
        assert!(expect.is_ok(), "the grammar's status {status}: {expect:?}");
    }
    for kind in alternatives(&grammar.lines, "kind") {
        let expect = Expect::parse(&format!("fault {kind}"));
        assert!(
            expect.is_ok(),
            "the grammar's fault kind {kind}: {expect:?}"
        );
    }
}
