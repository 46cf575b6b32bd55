#!/usr/bin/env bash
# Peak memory of llama-server serving a bundle against serving its plain base, under the same
# load: each server gets one /v1/completions request per model name (16 tokens), all at once
# (default: every slot busy in both) or one after another (--one-by-one), then its VmHWM is read.
# The plain base is served by the stock and by the patched build; the bundle by the patched one.
# Two runs each; prints a row per run and the bundle's excess over each plain server.
#
# Usage: scripts/bench-server-rss.sh [--one-by-one] BASE.gguf BUNDLE.gguf NAME...
#   NAME...: the models the bundle's requests name (e.g. base math base math); the plain servers
#   get as many requests, all naming "base".
# Environment: SWITCHYARD_LLAMA_BIN and SWITCHYARD_LLAMA_PATCHED_BIN (scripts/setup.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

together=1
[ "${1:-}" = --one-by-one ] && { together=0; shift; }
[ $# -ge 3 ] || die "usage: $0 [--one-by-one] BASE.gguf BUNDLE.gguf NAME..."
BASE="$1" BUNDLE="$2"
shift 2
names=("$@")
STOCK="${SWITCHYARD_LLAMA_BIN:?run scripts/setup.sh and export what it prints}"
PATCHED="${SWITCHYARD_LLAMA_PATCHED_BIN:?run scripts/setup.sh and export what it prints}"
PORT=18960
LOG=/tmp/bench-server-rss.log

# peak BIN MODEL NAME...: VmHWM in MiB of BIN's llama-server on MODEL after the requests
peak() {
    local bin="$1" model="$2"
    shift 2
    "$bin/llama-server" -m "$model" -np 4 -c 4096 -t 2 --host 127.0.0.1 --port "$PORT" --no-warmup >"$LOG" 2>&1 &
    local server=$!
    wait_for_server "$PORT" "$server" "$LOG"
    local pids=()
    for m in "$@"; do
        curl -sf "127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
            -d "{\"model\":\"$m\",\"prompt\":\"Explain how a hash map works.\",\"max_tokens\":16,\"temperature\":0}" \
            >/dev/null &
        pids+=($!)
        [ "$together" = 1 ] || wait "${pids[-1]}" || { kill "$server"; die "request '$m' failed (log: $LOG)"; }
    done
    if [ "$together" = 1 ]; then
        for p in "${pids[@]}"; do wait "$p" || { kill "$server"; die "a request failed (log: $LOG)"; }; done
    fi
    awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$server/status"
    kill "$server"
    wait "$server" 2>/dev/null || true
}

plain_names=()
for _ in "${names[@]}"; do plain_names+=(base); done
[ "$together" = 1 ] && how="all at once" || how="one after another"
echo "| run | plain, stock | plain, patched | bundle | over stock | over patched |"
echo "|---|---|---|---|---|---|"
for run in 1 2; do
    stock="$(peak "$STOCK" "$BASE" "${plain_names[@]}")"
    patched="$(peak "$PATCHED" "$BASE" "${plain_names[@]}")"
    bundle="$(peak "$PATCHED" "$BUNDLE" "${names[@]}")"
    awk -v r="$run" -v s="$stock" -v p="$patched" -v b="$bundle" \
        'BEGIN { printf "| %d | %.1f | %.1f | %.1f | %+.1f | %+.1f |\n", r, s, p, b, b - s, b - p }'
done
echo "(VmHWM MiB; llama-server -np 4 -c 4096 -t 2; requests ${names[*]} $how; $(date -u +%F))"
