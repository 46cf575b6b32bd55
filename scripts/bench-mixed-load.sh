#!/usr/bin/env bash
# Many users of one base and its experts at once, served three ways on one machine in one run:
#
#   bundle   llama-server (patched) on BUNDLE: slots of different experts share batches
#   router   stock llama-server's router mode on MODELS_DIR (one GGUF per expert, named like
#            the bundle's experts), --models-max 1: the model asked for is (re)loaded
#   plain    stock llama-server on BASE alone, every request to it (the same load with no
#            experts at all: the ceiling)
#   BUNDLES  (each path in BUNDLES) the same as bundle, on another packing of the experts
#            (e.g. pack --rank): one row each, named by the file
#   lora     (with LORAS) stock llama-server on BASE with each expert as a LoRA adapter, picked
#            per request ("lora": [{"id": i, "scale": 1}]): llama.cpp's own per-request LoRA,
#            which batches only requests of the same adapters together
#
# Load: CLIENTS clients, each sending REQUESTS /v1/completions of TOKENS tokens one after the
# other, client c's request r naming model EXPERTS[(c + r) % n] (round robin). Prints tokens/s
# over the whole load and the server's peak RSS (its process tree: router mode runs a child per
# model), each the median of ROUNDS runs, and the ratios against router mode and plain.
#
# Usage: scripts/bench-mixed-load.sh BASE.gguf BUNDLE.gguf MODELS_DIR
# Environment: EXPERTS (default "base e1 e2"), CLIENTS (4), REQUESTS (3), TOKENS (32),
# PARALLEL (server slots, 4), ROUNDS (2), BUNDLES (more bundle paths), LORAS ("NAME=ADAPTER.gguf ..." for the lora server; the
# other experts get the base), SWITCHYARD_LLAMA_BIN and SWITCHYARD_LLAMA_PATCHED_BIN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -eq 3 ] || die "usage: $0 BASE.gguf BUNDLE.gguf MODELS_DIR"
BASE="$1" BUNDLE="$2" MODELS_DIR="$3"
EXPERTS="${EXPERTS:-base e1 e2}" CLIENTS="${CLIENTS:-4}" REQUESTS="${REQUESTS:-3}" TOKENS="${TOKENS:-32}"
PARALLEL="${PARALLEL:-4}" ROUNDS="${ROUNDS:-2}"
STOCK="${SWITCHYARD_LLAMA_BIN:?run scripts/setup.sh and export what it prints}"
PATCHED="${SWITCHYARD_LLAMA_PATCHED_BIN:?run scripts/setup.sh and export what it prints}"
PORT=18900

# Sum of VmRSS (KiB) over a process and its descendants.
tree_rss() {
    local pids=("$1") i=0 total=0
    while [ $i -lt ${#pids[@]} ]; do
        pids+=($(pgrep -P "${pids[$i]}" || true))
        i=$((i + 1))
    done
    for p in "${pids[@]}"; do
        # (a child may exit between listing and reading)
        local kib
        kib=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# One run of the load against a server started by "$@"; prints "tok_s peak_rss_mib". With
# LORA_IDS ("NAME:ID ..."), each request picks its expert's adapter instead of naming a model.
run_load() {
    "$@" --host 127.0.0.1 --port "$PORT" -t 2 -c $((PARALLEL * 512)) -np "$PARALLEL" --no-warmup \
        > /tmp/bench-mixed-load.log 2>&1 &
    local server=$!
    wait_for_server "$PORT" "$server" /tmp/bench-mixed-load.log
    local peak=0 rss
    ( while kill -0 "$server" 2>/dev/null; do tree_rss "$server"; sleep 0.2; done ) > /tmp/bench-mixed-rss.txt &
    local sampler=$!
    local result
    result=$(LORA_IDS="${LORA_IDS:-}" python3 - "$PORT" "$CLIENTS" "$REQUESTS" "$TOKENS" $EXPERTS <<'EOF'
import json, os, sys, threading, time, urllib.request
port, clients, requests, tokens = (int(a) for a in sys.argv[1:5])
experts = sys.argv[5:]
lora_ids = dict(w.split(":") for w in os.environ["LORA_IDS"].split()) if os.environ["LORA_IDS"] else None
prompts = ["Write a short story about a lighthouse keeper.", "Explain how a hash map works.",
           "List three uses of prime numbers.", "def merge_sort(items):"]
done = []
def client(c):
    for r in range(requests):
        body = {"model": experts[(c + r) % len(experts)], "prompt": prompts[(c + r) % len(prompts)],
                "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        if lora_ids is not None:
            mine = lora_ids.get(body.pop("model"))
            body["lora"] = [{"id": int(i), "scale": 1.0 if i == mine else 0.0} for i in sorted(set(lora_ids.values()))]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            done.append(json.load(resp)["usage"]["completion_tokens"])
start = time.time()
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
[t.start() for t in threads]
[t.join() for t in threads]
print(f"{sum(done) / (time.time() - start):.2f}")
EOF
    ) || { kill "$server" 2>/dev/null; tail -20 /tmp/bench-mixed-load.log >&2; die "the load failed: $*"; }
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(sort -n /tmp/bench-mixed-rss.txt | tail -1)
    echo "$result $((peak / 1024))"
}

servers=(bundle router plain)
lora_args=() lora_ids="" n=0
for l in ${LORAS:-}; do
    [[ "$l" =~ ^[A-Za-z0-9_-]+=.+$ ]] || die "LORAS: '$l' is not NAME=ADAPTER.gguf"
    lora_ids+="${l%%=*}:$n " # llama-server numbers adapters in --lora order
    lora_args+=(--lora "${l#*=}")
    n=$((n + 1))
done
[ -z "$lora_ids" ] || servers+=(lora)
declare -A out
declare -A bundle_of=([bundle]="$BUNDLE")
for b in ${BUNDLES:-}; do
    servers+=("$(basename "$b")")
    bundle_of[$(basename "$b")]="$b"
done
for _ in $(seq "$ROUNDS"); do
    for s in "${servers[@]}"; do
        [ -n "${bundle_of[$s]:-}" ] || continue
        out[$s]+="$(run_load "$PATCHED/llama-server" -m "${bundle_of[$s]}")"$'\n'
    done
    out[router]+="$(run_load "$STOCK/llama-server" --models-dir "$MODELS_DIR" --models-max 1)"$'\n'
    out[plain]+="$(run_load "$STOCK/llama-server" -m "$BASE")"$'\n'
    if [ -n "$lora_ids" ]; then
        out[lora]+="$(LORA_IDS="$lora_ids" run_load "$STOCK/llama-server" -m "$BASE" "${lora_args[@]}" --lora-init-without-apply)"$'\n'
    fi
done
col() { printf '%s' "${out[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }
echo "| server | tokens/s | x router mode | x plain | peak RSS MiB |"
echo "|---|---|---|---|---|"
for s in "${servers[@]}"; do
    printf '| %s | %s | %.2f | %.2f | %s |\n' "$s" "$(col $s 1)" "$(echo "$(col $s 1) / $(col router 1)" | bc -l)" \
        "$(echo "$(col $s 1) / $(col plain 1)" | bc -l)" "$(col $s 2)"
done
echo "($CLIENTS clients x $REQUESTS requests x $TOKENS tokens, round robin over: $EXPERTS; -np $PARALLEL; median of $ROUNDS; $(date -u +%F))"
