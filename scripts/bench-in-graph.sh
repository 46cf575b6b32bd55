#!/usr/bin/env bash
# A bundle against the models it replaces, one machine, one run: peak RSS, wall time and decode
# speed of llama-completion (patched build, 2 threads, greedy, 64 tokens) for
#
#   the plain base GGUF              (the baseline every ratio is taken against)
#   the bundle as its base           (--expert base: no delta in the graph)
#   the bundle as EXPERT             (its delta applied in the graph), for each delta type in TYPES
#   EXPERT from each bundle in BUNDLES (other packings of the same expert, e.g. pack --rank)
#   EXPERT as a standalone GGUF      (EXPERT_GGUF, e.g. extracted and requantized to the base's type)
#   the plain base with each LoRA adapter in LORAS (--lora: llama.cpp's own low-rank product,
#                                    the stand-in for a low-rank delta; scripts/study/lowrank_lora.py)
#
# Each configuration runs ROUNDS times, interleaved, and the median is printed (these machines
# are noisy); ratios are against the plain base's median of the same run.
#
# Usage: scripts/bench-in-graph.sh BASE.gguf BUNDLE.gguf EXPERT [EXPERT_GGUF]
# Environment: TYPES (default "default q2_K q8_0": the codec deltas' ggml type, "default" for
# the library's choice), BUNDLES (more bundle paths, default none), LORAS (LoRA GGUF paths,
# default none), ROUNDS (default 3),
# SWITCHYARD_LLAMA_PATCHED_BIN (scripts/setup.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 3 ] || die "usage: $0 BASE.gguf BUNDLE.gguf EXPERT [EXPERT_GGUF]"
BASE="$1" BUNDLE="$2" EXPERT="$3" EXPERT_GGUF="${4:-}"
TYPES=(${TYPES:-default q2_K q8_0})
ROUNDS="${ROUNDS:-3}"
BIN="${SWITCHYARD_LLAMA_PATCHED_BIN:?run scripts/setup.sh and export what it prints}"
PROMPT="The three primary colors are"

# One run: prints "rss_mib wall_s tok_s" (wall: the whole process, loading included).
measure() {
    local log
    log=$(mktemp)
    /usr/bin/time -f "RSS %M %e" "$BIN/llama-completion" "$@" -p "$PROMPT" -n 64 --temp 0 -no-cnv \
        --no-warmup --simple-io -t 2 -c 256 --ignore-eos > /dev/null 2> "$log" || { cat "$log" >&2; die "llama-completion failed: $*"; }
    awk '/^RSS/ {rss = $2 / 1024; wall = $3}
         /common_perf_print: +eval time/ {for (i = 1; i <= NF; i++) if ($i == "tokens") tps = $(i-1)}
         END {printf "%.0f %.2f %.2f\n", rss, wall, tps}' "$log"
    rm -f "$log"
}

names=("plain base") args=("-m $BASE")
names+=("bundle, base"); args+=("$(expert_args "$BUNDLE" base default)")
for t in "${TYPES[@]}"; do
    names+=("bundle, $EXPERT, delta $t"); args+=("$(expert_args "$BUNDLE" "$EXPERT" "$t")")
done
for b in ${BUNDLES:-}; do
    names+=("$(basename "$b"), $EXPERT"); args+=("$(expert_args "$b" "$EXPERT" default)")
done
if [ -n "$EXPERT_GGUF" ]; then
    names+=("$EXPERT standalone ($(basename "$EXPERT_GGUF"))"); args+=("-m $EXPERT_GGUF")
fi
for lora in ${LORAS:-}; do
    names+=("plain base + LoRA $(basename "$lora")"); args+=("-m $BASE --lora $lora")
done

declare -A results
for r in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
        # shellcheck disable=SC2086 # args holds words
        results[$i]+="$(measure ${args[$i]})"$'\n'
    done
done

col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }
base_rss=$(col 0 1) base_tps=$(col 0 3)
echo "| model | peak RSS MiB | x plain base | wall s | decode tok/s | x plain base |"
echo "|---|---|---|---|---|---|"
for i in "${!names[@]}"; do
    rss=$(col "$i" 1) wall=$(col "$i" 2) tps=$(col "$i" 3)
    printf '| %s | %s | %.2f | %s | %s | %.2f |\n' "${names[$i]}" "$rss" \
        "$(echo "$rss / $base_rss" | bc -l)" "$wall" "$tps" "$(echo "$tps / $base_tps" | bc -l)"
done
echo "(median of $ROUNDS interleaved rounds; $(nproc) cores, 2 threads; $(date -u +%F))"
