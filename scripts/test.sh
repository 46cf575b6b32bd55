#!/usr/bin/env bash
# The test suite: sets up the real components (SmolLM2, pinned stock llama.cpp), then runs
# every Rust test with them required, so a missing fixture fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
# a failed setup stops here (inside eval "$(...)" its status would be lost)
fixtures="$(scripts/setup.sh)" || { echo "scripts/setup.sh failed" >&2; exit 1; }
eval "$fixtures"
export SWITCHYARD_REQUIRE_FIXTURES=1
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace 2>&1 | tee "$log" || status=$?
# cargo prints one "test result:" line per test binary, the last often a crate without tests;
# close with the totals so the whole run is summarised in one line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "switchyard: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
