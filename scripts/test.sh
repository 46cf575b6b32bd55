#!/usr/bin/env bash
# The test suite: sets up the real components (SmolLM2, pinned stock llama.cpp), then runs
# every Rust test with them required, so a missing fixture fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
export SWITCHYARD_REQUIRE_FIXTURES=1
cargo test --release --workspace
