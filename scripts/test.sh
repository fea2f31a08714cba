#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command): unit tests, and integration tests
# that boot the guest under KVM. Debug host build: the guest kernel is always built in release by
# vmm/build.rs, so guest boots are as fast as in a release build. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --workspace "$@"
