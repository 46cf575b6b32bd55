#!/usr/bin/env bash
# Time to first token on llama-server for an expert not used before, against the base's: one
# slot, prompt caching off, one token generated, requests in the order of ORDER (default: base
# twice, then each expert twice, the base in between), so that an expert's first request shows
# any switching cost and its second what its delta products cost. Prints timings.prompt_ms of
# each request for each bundle given, then the same prompt on the plain BASE (stock server).
#
# Usage: scripts/bench-first-token.sh BASE.gguf BUNDLE.gguf [BUNDLE.gguf ...]
# Environment: EXPERTS (default "e1 e2"), PROMPT, SWITCHYARD_LLAMA_BIN and
# SWITCHYARD_LLAMA_PATCHED_BIN (scripts/setup.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 2 ] || die "usage: $0 BASE.gguf BUNDLE.gguf [BUNDLE.gguf ...]"
BASE="$1"
shift
read -r -a experts <<< "${EXPERTS:-e1 e2}"
PROMPT="${PROMPT:-Explain in one sentence why the sky is blue to a curious child.}"
STOCK="${SWITCHYARD_LLAMA_BIN:?run scripts/setup.sh and export what it prints}"
PATCHED="${SWITCHYARD_LLAMA_PATCHED_BIN:?run scripts/setup.sh and export what it prints}"
PORT=18950
order=(base base)
for e in "${experts[@]}"; do order+=("$e" "$e" base); done

# prompt_ms of requests naming each of "$@" (models), against a server started from SERVER_CMD
prompt_ms() {
    # shellcheck disable=SC2086 # SERVER_CMD holds words
    $SERVER_CMD --host 127.0.0.1 --port "$PORT" -t 2 -c 512 -np 1 --no-warmup > /tmp/bench-first-token.log 2>&1 &
    local server=$!
    wait_for_server "$PORT" "$server" /tmp/bench-first-token.log
    python3 - "$PORT" "$PROMPT" "$@" <<'EOF' || { kill "$server"; tail -20 /tmp/bench-first-token.log >&2; die "a request failed"; }
import json, sys, urllib.request
port, prompt, models = sys.argv[1], sys.argv[2], sys.argv[3:]
out = []
for m in models:
    body = {"prompt": prompt, "n_predict": 1, "cache_prompt": False, "temperature": 0}
    if m != "-":
        body["model"] = m
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        out.append(f"{json.load(resp)['timings']['prompt_ms']:.1f}")
print(" | ".join(out))
EOF
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}

echo "| server | $(IFS='|'; echo "${order[*]}" | sed 's/|/ | /g') |"
echo "|---|$(printf -- '---|%.0s' "${order[@]}")"
for b in "$@"; do
    echo "| $(basename "$b") | $(SERVER_CMD="$PATCHED/llama-server -m $b" prompt_ms "${order[@]}") |"
done
plain=()
for _ in "${order[@]}"; do plain+=(-); done
echo "| plain base (stock) | $(SERVER_CMD="$STOCK/llama-server -m $BASE" prompt_ms "${plain[@]}") |"
echo "(timings.prompt_ms; one slot, cache_prompt off, n_predict 1, 2 threads; $(date -u +%F))"
