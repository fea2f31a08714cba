#!/usr/bin/env bash
# The sim/kvm differential of issue 29: for each SMP seeded bug, `vmm fuzz` finds and shrinks a
# reproducer on two simulated CPUs (seed 1), then `vmm replay` runs that reproducer on kvm with
# two CPUs, several times, and the script counts how often kvm shows the same failure. A race
# that needs one exact interleaving may not show on kvm (its schedule header is the sim's
# alone); any other difference is a bug, in the sim or in the guest. Needs /dev/kvm and cargo
# (kvm builds a guest variant for each bug). Usage: scripts/differential.sh [TRIES] [OUT_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tries=${1:-5}
out=${2:-target/differential}
bugs=(bug-shootdown-local-only bug-shootdown-misses-lazy bug-free-before-ack bug-fault-no-recheck bug-lock-order)
cargo build --release -q -p vmm
vmm=target/release/vmm
mkdir -p "$out"
same_total=0
echo "| bug | sim reproducer | sim failure | kvm --cpus 2: same failure |"
echo "| --- | --- | --- | --- |"
for bug in "${bugs[@]}"; do
    dir="$out/$bug"
    rm -rf "$dir"
    "$vmm" fuzz --backend sim --cpus 2 --seed 1 --ops 1000000 --guest-features "$bug" \
        --max-findings 1 --quiet --out "$dir" >"$dir.fuzz.log" 2>&1 || true
    repro=$(ls "$dir"/repro-*.txt 2>/dev/null | head -n 1)
    if [ -z "$repro" ]; then
        echo "| $bug | none found | | |"
        continue
    fi
    ops=$(grep -v '^#' "$repro" | grep -v '^---' | grep -c . || true)
    failure=$(sed -n 's/^# failure: //p' "$repro")
    same=0
    for _ in $(seq "$tries"); do
        if "$vmm" replay --backend kvm --timeout 120 "$repro" >"$dir.kvm.log" 2>&1; then
            :
        elif grep -qF "$failure" "$dir.kvm.log"; then
            same=$((same + 1))
        fi
    done
    same_total=$((same_total + same))
    echo "| $bug | $ops ops | $failure | $same of $tries |"
done
echo
echo "differential: $same_total of $((tries * ${#bugs[@]})) kvm replays showed the sim's failure"
