#!/usr/bin/env bash
# Formatting and lints: rustfmt and clippy (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
