#!/usr/bin/env bash
# How far an expert served from a bundle is from the expert itself: the mean KL divergence of
# its next-token distributions from FULL's (the expert at full precision) over CHUNKS chunks of
# 512 tokens of TEXT (llama-perplexity --kl-divergence, patched build, 2 threads), and the
# perplexity, for
#
#   the bundle as EXPERT, for each delta type in TYPES ("default": the library's choice)
#   each further GGUF given (e.g. `switchyard extract` output: the materialized expert; the
#   expert requantized to the base's type)
#
# Usage: scripts/bench-in-graph-kl.sh FULL.gguf TEXT BUNDLE.gguf EXPERT [OTHER.gguf ...]
# Environment: TYPES (default "default q4_0"), CHUNKS (default 8), SWITCHYARD_LLAMA_PATCHED_BIN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 4 ] || die "usage: $0 FULL.gguf TEXT BUNDLE.gguf EXPERT [OTHER.gguf ...]"
FULL="$1" TEXT="$2" BUNDLE="$3" EXPERT="$4"
shift 4
TYPES=(${TYPES:-default q4_0})
CHUNKS="${CHUNKS:-8}"
BIN="${SWITCHYARD_LLAMA_PATCHED_BIN:?run scripts/setup.sh and export what it prints}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ppl() { "$BIN/llama-perplexity" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t 2 "$@" 2>&1; }
ppl -m "$FULL" --kl-divergence-base "$work/logits" > "$work/full.log" || { cat "$work/full.log" >&2; die "llama-perplexity failed on $FULL"; }

# "label|arguments" for each model
runs=()
for t in "${TYPES[@]}"; do
    runs+=("bundle, $EXPERT, delta $t|$(expert_args "$BUNDLE" "$EXPERT" "$t")")
done
for f in "$@"; do
    runs+=("$(basename "$f") ($(du -m "$f" | cut -f1) MiB)|-m $f")
done

echo "| model | mean KL from $(basename "$FULL") | perplexity |"
echo "|---|---|---|"
echo "| $(basename "$FULL") | 0 | $(awk -F'PPL = ' '/Final estimate/ {split($2, a, " "); print a[1]}' "$work/full.log") |"
for r in "${runs[@]}"; do
    label="${r%%|*}" args="${r#*|}"
    # shellcheck disable=SC2086 # args holds words
    log=$(ppl $args --kl-divergence-base "$work/logits" --kl-divergence) || { echo "$log" >&2; die "llama-perplexity failed: $args"; }
    kl=$(echo "$log" | awk '/^Mean +KLD:/ {print $3}')
    p=$(echo "$log" | awk '/^Mean PPL\(Q\) +:/ {print $4}')
    echo "| $label | $kl | $p |"
done
echo "($CHUNKS x 512 tokens of $(basename "$TEXT"); $(date -u +%F))"
