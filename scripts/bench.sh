#!/usr/bin/env bash
# The README's bench command: measures the whole system in one run and prints one table
# (vmm/benches/system.rs, 10 to 16 minutes on this machine, most of it kvm guests). With --criterion it then also runs the detailed criterion
# benches of the RegionTree and of the page-table walker (about 2 more minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
    "") criterion=false ;;
    --criterion) criterion=true ;;
    *) echo "usage: $0 [--criterion]" >&2; exit 2 ;;
esac
cargo bench -p vmm --bench system
if "$criterion"; then
    cargo bench -p shared-mm --bench region_tree
    cargo bench -p x86-paging --bench page_walk
fi
