#!/usr/bin/env bash
# The libFuzzer target `mm_ops` over the sim (fuzz/, a cargo-fuzz project): installs cargo-fuzz
# when `cargo fuzz` is missing (stable Rust is enough), then builds or runs the target with
# `--sanitizer none`, which stable Rust needs. See docs/fuzzing-at-scale.md.
#
#   bash scripts/fuzz.sh build          build the target
#   bash scripts/fuzz.sh run [ARG...]   fuzz, corpus in fuzz/corpus/mm_ops, crashes in
#                                       fuzz/artifacts/mm_ops; each ARG goes to libFuzzer
#                                       (-fork=N -ignore_crashes=1, -jobs=N -workers=N,
#                                       -max_total_time=SECS, -seed=N, ...)
#   bash scripts/fuzz.sh check          build, then fuzz the correct MM for 20 s from an empty
#                                       corpus, expecting no finding (what CI runs)
#
# MM_FUZZ_BUGS=bug-a,bug-b plants seeded bugs in the target's MM (run and check).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: cargo fuzz is missing; installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

flags=(--sanitizer none)
case "${1:-}" in
    build)
        cargo fuzz build "${flags[@]}" mm_ops
        ;;
    run)
        shift
        exec cargo fuzz run "${flags[@]}" mm_ops -- "$@"
        ;;
    check)
        cargo fuzz build "${flags[@]}" mm_ops
        corpus=$(mktemp -d)
        trap 'rm -rf "$corpus"' EXIT
        cargo fuzz run "${flags[@]}" mm_ops "$corpus" -- -seed=1 -max_total_time=20 \
            -artifact_prefix="$corpus/"
        ;;
    *)
        echo "usage: $0 build | run [LIBFUZZER_ARG...] | check" >&2
        exit 2
        ;;
esac
