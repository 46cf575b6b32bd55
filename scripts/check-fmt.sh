#!/usr/bin/env bash
# Formatting and lints: rustfmt and clippy (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# the GPU switch path compiles without CUDA (libraries load at run time): lint it too
cargo clippy -p switchyard-ffi --features cuda --all-targets --quiet -- -D warnings
