//! Error lines quote at most 64 bytes of bad input, then `...` and its length: a 10 MB token
//! in a file, or a huge value on the command line, makes a short error.

use super::{assert_fails, path_of, scratch_file, vmm};

/// Most bytes of stderr a one-line error about a huge token may take (with clap's usage hint).
const SHORT: usize = 1024;

#[test]
fn a_10_mb_token_in_a_reproducer_is_quoted_by_its_first_64_bytes() {
    let token = "z".repeat(10_000_000);
    let cases = [
        ("huge-op.repro", format!("create-space\n{token}\n")),
        (
            "huge-field.repro",
            format!("create-space\nunmap space=1 addr=0x{token}\n"),
        ),
        (
            "huge-header.repro",
            format!("# seed: {token}\ncreate-space\n"),
        ),
        (
            "huge-expect.scn",
            format!("create-space => value {token}\n"),
        ),
    ];
    for (name, text) in cases {
        let file = scratch_file(name, text.as_bytes());
        let outcome = vmm(&["replay", path_of(&file)]);
        // The 64 bytes quoted start with the token (after `0x` for the field), then its length.
        assert_fails(
            &outcome,
            2,
            &["line ", &token[..62], "... (1000000", " bytes)"],
        );
        assert!(
            !outcome.stderr.contains(&token[..65]),
            "{name}: more than 64 bytes quoted"
        );
        assert!(
            outcome.stderr.len() < SHORT,
            "{name}: {} bytes of stderr",
            outcome.stderr.len()
        );
    }
}

#[test]
fn a_huge_option_value_is_quoted_by_its_first_64_bytes_in_clap_s_format() {
    let value = "9".repeat(100_000);
    let unknown = format!("--{value}");
    let cases: [&[&str]; 4] = [
        &["run", "--seed", &value],
        &["run", "--backend", &value],
        &["run", &unknown],
        &[&value],
    ];
    for args in cases {
        let outcome = vmm(args);
        // clap's own format: `error: ...` (not `vmm: error:`), exit 2.
        assert_fails(&outcome, 2, &["error: ", "... (100"]);
        assert!(
            !outcome.stderr.contains("vmm: error"),
            "{}",
            outcome.describe()
        );
        assert!(
            outcome.stderr.len() < SHORT,
            "{} bytes of stderr",
            outcome.stderr.len()
        );
    }
}
