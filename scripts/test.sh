#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): unit tests, and integration tests
# that boot the guest under KVM. Debug host build: the guest kernel is always built in release by
# crates/guest-image/build.rs, so guest boots are as fast as in a release build. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The gdb stub's tests drive the real gdb client (vmm/tests/gdb.rs). Install it where we can
# (root with apt-get); elsewhere those tests print SKIPPED.
if ! command -v gdb >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scripts/test.sh: installing gdb for the gdb stub's tests" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q gdb
    else
        echo "scripts/test.sh: no gdb (and not root with apt-get): the gdb tests will be skipped" >&2
    fi
fi

exec cargo test --workspace "$@"
