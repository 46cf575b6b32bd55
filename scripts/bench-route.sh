#!/usr/bin/env bash
# Routing on the held-out prompts of scripts/fetch-data.sh: accuracy, and what routing costs
# next to the prefill of the same prompt, measured in one run by examples/switchyard_route_bench.c
# (patched llama.cpp).
#
#   scripts/bench-route.sh BUNDLE [PROMPTS_PER_DOMAIN]   (default 60)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 BUNDLE [PROMPTS_PER_DOMAIN]"
bundle="$1" per_domain="${2:-60}"
data="${SWITCHYARD_ROUTE_DATA:-$("$SWITCHYARD_ROOT/scripts/fetch-data.sh")}"
bin="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
exe="$("$SWITCHYARD_ROOT/scripts/build-example.sh" switchyard_route_bench "$tmp" "$bin")"
# the first PROMPTS_PER_DOMAIN held-out prompts of each domain, as LABEL<TAB>escaped text
python3 - "$data/route-eval.jsonl" "$per_domain" >"$tmp/prompts.tsv" <<'PY'
import json, sys

taken = {}
for line in open(sys.argv[1], encoding="utf-8"):
    row = json.loads(line)
    if taken.get(row["expert"], 0) < int(sys.argv[2]):
        taken[row["expert"]] = taken.get(row["expert"], 0) + 1
        text = row["text"].replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
        print(f"{row['expert']}\t{text}")
PY
"$exe" "$bundle" "$tmp/prompts.tsv" "$(nproc)"
