#!/usr/bin/env bash
# The README's bench command: measures the whole system in one run (vmm/benches/system.rs, about
# 21 minutes on this machine, most of it kvm guests), prints one table, and writes the results
# as data: target/bench/system.json and target/bench/system.md (the table, naming the CPU and
# the KVM module). A full run (no SYSTEM_BENCH_ONLY) also puts that table into
# docs/benchmarks.md, between its `bench:begin` and `bench:end` markers, so the page shows the
# latest run; git keeps the history. A section that fails part way (a campaign with a finding,
# a guest that does not boot) is named under the table with its rows so far, the other sections
# still run, and the script exits 1 after writing the results. With --criterion it then also runs the detailed criterion
# benches of the RegionTree and of the page-table walker (about 2 more minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
    "") criterion=false ;;
    --criterion) criterion=true ;;
    *) echo "usage: $0 [--criterion]" >&2; exit 2 ;;
esac
out="${CARGO_TARGET_DIR:-target}/bench"
# cargo runs the bench in vmm/: it gets the directory absolute.
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
rm -f "$out/system.md"
status=0
SYSTEM_BENCH_OUT="$out" cargo bench -p vmm --bench system || status=$?
if [ ! -f "$out/system.md" ]; then
    exit "$((status == 0 ? 1 : status))"
fi
if [ -z "${SYSTEM_BENCH_ONLY:-}" ]; then
    page=docs/benchmarks.md
    tmp=$(mktemp "$page.XXXXXX")
    awk -v table="$out/system.md" '
        /<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- bench:end -->/ { skip = 0 }
        !skip { print }
    ' "$page" > "$tmp"
    mv "$tmp" "$page"
    echo "bench.sh: $page now shows this run's table"
fi
if "$criterion"; then
    cargo bench -p shared-mm --bench region_tree
    cargo bench -p x86-paging --bench page_walk
fi
exit "$status"
