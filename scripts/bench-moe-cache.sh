#!/usr/bin/env bash
# --moe-cache against stock llama.cpp under the same memory limit (issue #6), on CPU.
#
# The model is SmolLM2-135M-Instruct refactored into 8 experts per layer, top-2
# (`switchyard moefy`, F32), or the MoE GGUF given as the first argument. Each run decodes
# TOKENS tokens greedily from the same prompt inside a cgroup v1 memory limit of
#
#   limit = non-expert bytes + SHARE of the expert bytes + SLACK (a 1024-token KV cache,
#           compute buffers, code)
#
# for SHARE 25% and 50%: stock llama-completion maps the whole file and pages experts in and
# out as the limit forces it; the patched one with `--moe-cache SHARE%` reads picked experts
# into a cache of that size (policies lru and hobbit, lru with `--moe-prefetch 1`, and hobbit
# with the thresholds: `--moe-t1 0.6 --moe-t2 0.9` (HOBBIT's Mixtral setting), `--moe-t1 0`
# (every pick but the top one from its Q4_0 copy; again from Q8_0 copies) and `--moe-skip-beta`
# (dynamic skipping, "Not All Experts are Equal", arXiv 2402.14800)). The patched runs use the
# model packed by `switchyard moe-pack` (Q4_0 copies, betas from a trace of the calibration text;
# for the Q8_0 row, Q8_0 copies), which computes the same as the original until a threshold asks
# for the copies. The model file is dropped from the page cache before every run.
# Prints, per run: decode tokens/s and its ratio to stock under the same limit, bytes read from
# disk (the process's block reads), the cache's loads (of them, low precision) and skipped picks,
# whether the generated text equals stock's, and the held-out perplexity of the same setting (4
# chunks of 512 tokens of the chat text; outside the memory limit, which changes speed, not
# results). Rows with thresholds also get the perplexity of one chunk with one token per
# micro-batch (-ub 1), as in decoding: in a batch, an expert that any token needs in full is
# loaded in full for all of them, so batched perplexity hides most of what thresholds do. Stock
# gets the same for comparison; without thresholds the cache computes exactly what stock does.
#
# Needs root for the cgroup (/sys/fs/cgroup/memory). Environment: SWITCHYARD_MOE_BENCH_TOKENS
# (default 32), SWITCHYARD_MOE_BENCH_SLACK_MIB (default 200), SWITCHYARD_THREADS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOKENS="${SWITCHYARD_MOE_BENCH_TOKENS:-32}"
SLACK=$(( ${SWITCHYARD_MOE_BENCH_SLACK_MIB:-200} << 20 ))
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
CGROUPS=/sys/fs/cgroup/memory
[ -w "$CGROUPS" ] || die "needs a writable cgroup v1 memory controller at $CGROUPS (run as root)"

switchyard="$(switchyard_cli)"
text="$(text_sets)"
stock="${SWITCHYARD_LLAMA_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" --stock | tail -n1)}"
patched="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
work="$(mktemp -d)"
cgroup="$CGROUPS/switchyard-bench-$$"
trap 'rmdir "$cgroup" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$cgroup"

model="${1:-}"
calibration_text 30000 "$work/calib.txt"
if [ -z "$model" ]; then
    model="$work/moe.gguf"
    "$switchyard" moefy "$(smollm2_f32)" --experts 8 --top-k 2 --text "$work/calib.txt" --chunks 12 \
        --llama-bin "$patched" -o "$model" >&2
fi
"$switchyard" trace "$model" --text "$work/calib.txt" --chunks 12 --llama-bin "$patched" -o "$work/trace.jsonl" >&2
need_space "$work" "$(( $(stat -c %s "$model") * 5 / 2 ))" "the packed models"
"$switchyard" moe-pack "$model" --trace "$work/trace.jsonl" -o "$work/packed.gguf" >&2
"$switchyard" moe-pack "$model" --low-type q8_0 -o "$work/packed-q8_0.gguf" >&2
expert_bytes="$("$switchyard" inspect "$model" | awk '/_exps\.weight/ {
    if ($2 != "f32") { print "not f32: " $1 > "/dev/stderr"; exit 1 }
    gsub(/[\[\],]/, " "); n = 4; for (i = 3; i <= NF; i++) n *= $i; s += n } END { printf "%d", s }')"
file_bytes="$(stat -c %s "$model")"
prompt="$(head -c 600 "$text/text-chat-eval.txt")"

# run LIMIT BIN MODEL [args...]: llama-completion inside the memory limit; sets tps, read_mib, status
run() {
    local limit="$1" bin="$2" model="$3"; shift 3
    # with swap, memory.memsw.limit_in_bytes would bound memory + swap; it may not be lowered
    # below the memory limit nor the memory limit raised above it, hence the order
    if [ -f "$cgroup/memory.memsw.limit_in_bytes" ]; then
        echo -1 >"$cgroup/memory.memsw.limit_in_bytes" 2>/dev/null || true
        echo "$limit" >"$cgroup/memory.limit_in_bytes"
        echo "$limit" >"$cgroup/memory.memsw.limit_in_bytes" 2>/dev/null || true
    else
        echo "$limit" >"$cgroup/memory.limit_in_bytes"
    fi
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$model"
    status=ok
    /usr/bin/time -f '%I' -o "$work/time.txt" sh -c 'echo $$ >"$0/cgroup.procs"; shift; exec "$@"' "$cgroup" _ \
        "$bin/llama-completion" -m "$model" -p "$prompt" -n "$TOKENS" -c 1024 --temp 0 -no-cnv --no-display-prompt \
        -t "$THREADS" -tb "$THREADS" -lv 4 "$@" >"$work/out.txt" 2>"$work/log.txt" || status="failed ($(grep -c . "$work/log.txt") log lines; out of memory?)"
    tps="$(sed -n 's/.*eval time =.*runs.*, *\([0-9.]*\) tokens per second.*/\1/p' "$work/log.txt" | tail -n1)"
    # GNU time puts "Command exited with non-zero status" before the count when a run fails
    read_mib="$(tail -n1 "$work/time.txt" | awk '{ printf "%.0f", $1 * 512 / 1048576 }')"
}

# perplexity BIN MODEL CHUNKS [args...]
perplexity() {
    "$1/llama-perplexity" -m "$2" -f "$text/text-chat-eval.txt" -c 512 --chunks "$3" -t "$THREADS" -tb "$THREADS" "${@:4}" \
        2>&1 | ppl_of
}

# cache_row LIMIT SHARE PACKED NOTE POLICY [args...]: one patched run and its table row
cache_row() {
    local limit="$1" share="$2" packed="$3" note="$4"; shift 4
    local extra=(--moe-policy "$@")
    run "$limit" "$patched" "$packed" --moe-cache "$share%" "${extra[@]}"
    local same=no ratio=-
    cmp -s "$work/out.txt" "$work/stock.txt" && same=yes
    [ -n "$tps" ] && [ -n "$base_tps" ] && ratio="$(awk -v a="$tps" -v b="$base_tps" 'BEGIN { printf "%.2f", a / b }')"
    local cache_mib low loads skipped ppl ppl_ub1=-
    cache_mib="$(sed -n 's/.* \([0-9.]*\) MiB read).*/\1/p' "$work/log.txt")"
    low="$(sed -n 's/.*(\([0-9]*\) low precision.*/\1/p' "$work/log.txt")"
    loads="$(sed -n 's/.* \([0-9]*\) loads (.*/\1/p' "$work/log.txt")"
    skipped="$(sed -n 's/.* \([0-9]*\) skipped,.*/\1/p' "$work/log.txt")"
    ppl="$(perplexity "$patched" "$packed" 4 --moe-cache "$share%" "${extra[@]}")"
    case "${extra[*]}" in *--moe-t*|*--moe-skip-beta*)
        ppl_ub1="$(perplexity "$patched" "$packed" 1 -ub 1 --moe-cache "$share%" "${extra[@]}")" ;;
    esac
    echo "| $((limit >> 20)) MiB | --moe-cache $share% ${extra[*]}$note | ${tps:-$status} | $ratio | $read_mib (cache read $cache_mib) | ${loads:-?} / ${low:-?} / ${skipped:-?} | $same | $ppl | $ppl_ub1 |"
}

echo "$(basename "$model"): $((file_bytes >> 20)) MiB, experts $((expert_bytes >> 20)) MiB; decode of $TOKENS tokens, $THREADS threads"
echo
echo "| memory limit | run | decode tok/s | vs stock | MiB read from disk | loads / low precision / skipped | same text as stock | ppl (chat, 4 x 512) | ppl, -ub 1 (1 x 512) |"
echo "|---|---|---|---|---|---|---|---|---|"
ppl_stock="$(perplexity "$stock" "$model" 4)"
ppl_stock_ub1="$(perplexity "$stock" "$model" 1 -ub 1)"
for share in 25 50; do
    limit=$(( file_bytes - expert_bytes + expert_bytes * share / 100 + SLACK ))
    run "$limit" "$stock" "$model"
    base_tps="$tps"
    cp "$work/out.txt" "$work/stock.txt"
    echo "| $((limit >> 20)) MiB ($share% of experts) | stock, mmap | ${tps:-$status} | 1.00 | $read_mib | - | - | $ppl_stock | $ppl_stock_ub1 |"
    for setting in "lru" "hobbit" "lru --moe-prefetch 1" "hobbit --moe-t1 0.6 --moe-t2 0.9" "hobbit --moe-t1 0" \
        "hobbit --moe-skip-beta"; do
        read -r -a policy_args <<<"$setting"
        cache_row "$limit" "$share" "$work/packed.gguf" "" "${policy_args[@]}"
    done
    cache_row "$limit" "$share" "$work/packed-q8_0.gguf" " (Q8_0 copies)" hobbit --moe-t1 0
done
