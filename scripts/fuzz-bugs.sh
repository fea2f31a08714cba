#!/usr/bin/env bash
# Time to find each seeded bug with the libFuzzer target: for every bug (or those named), one
# run of `MM_FUZZ_BUGS=BUG cargo fuzz run --sanitizer none mm_ops -- -seed=1` from an empty
# corpus, stopped after 120 s; prints a Markdown table of what each run found, after how many
# inputs (libFuzzer's count of executed units) and how long (wall time of the whole `cargo fuzz
# run`, its ~1 s of cargo included).
# One run at a time: each takes up to 120 s of one core. The target's guest is a sim with one
# CPU, so the bugs that need another CPU to shoot down or to race (NEEDS_SEVERAL_CPUS in
# vmm/tests/self_check.rs) are listed without a run unless named.
#
#   bash scripts/fuzz-bugs.sh [BUG...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

limit=${FUZZ_BUGS_SECONDS:-120}
several_cpus=" bug-shootdown-local-only bug-shootdown-misses-lazy bug-free-before-ack bug-fault-no-recheck "
if [ $# -gt 0 ]; then
    bugs=("$@")
    several_cpus=" "
else
    mapfile -t bugs < <(sed -n 's/^\(bug-[a-z0-9-]*\) = .*/\1/p' guest-kernel/mm/Cargo.toml)
fi
bash scripts/fuzz.sh build >&2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "| Seeded bug | Found as | Inputs run | Time to find |"
echo "| --- | --- | ---: | ---: |"
for bug in "${bugs[@]}"; do
    if [[ $several_cpus == *" $bug "* ]]; then
        printf '| `%s` | not run: needs several CPUs, the sim has one | — | — |\n' "$bug"
        continue
    fi
    dir="$scratch/$bug"
    mkdir -p "$dir/corpus"
    start=$(date +%s.%N)
    MM_FUZZ_BUGS="$bug" cargo fuzz run --sanitizer none mm_ops "$dir/corpus" -- -seed=1 \
        -max_total_time="$limit" -print_final_stats=1 -artifact_prefix="$dir/" \
        >"$dir/log" 2>&1 || true
    end=$(date +%s.%N)
    inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
    if compgen -G "$dir/crash-*" >/dev/null; then
        found=$(sed -n 's/^# failure: //p' "$dir/log" | head -n 1)
        seconds=$(echo "$end - $start" | bc)
        printf '| `%s` | %s | %s | %.1f s |\n' "$bug" "$found" "${inputs:-0}" "$seconds"
    else
        printf '| `%s` | not found | %s | over %s s |\n' "$bug" "${inputs:-0}" "$limit"
    fi
done
