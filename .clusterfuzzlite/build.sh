#!/bin/bash -eu
# Builds the libFuzzer target mm_ops for ClusterFuzzLite (and OSS-Fuzz) into $OUT, with the
# sanitizer the builder asks for. Runs in the Dockerfile's image, in the repository.
#
# The repository pins stable Rust (rust-toolchain.toml); the sanitizers need the image's
# nightly, so RUSTUP_TOOLCHAIN, which overrides the file, names the image's default toolchain
# unless the image already set it.
if [ -z "${RUSTUP_TOOLCHAIN:-}" ]; then
    RUSTUP_TOOLCHAIN=$(cd / && rustup default | cut -d' ' -f1)
    export RUSTUP_TOOLCHAIN
fi
# cargo fuzz builds in release with debug assertions and overflow checks, and with the
# sanitizer -s names (address by default; the coverage build is cargo fuzz wrapped by the image).
cargo fuzz build --fuzz-dir fuzz mm_ops
cp fuzz/target/x86_64-unknown-linux-gnu/release/mm_ops "$OUT/"
