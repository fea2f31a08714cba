#!/usr/bin/env bash
# The README's run command: boots the embedded guest and runs its MM self-check.
# Extra arguments go to `vmm run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release -p vmm -- run "$@"
