#!/usr/bin/env bash
# A mixture of experts with learned routing, made from real components (issue 19): the three
# fine-tuned SmolLM2-135M-Instruct experts of scripts/make-experts.sh (math, code, chat) and the
# base merged by `switchyard moe-merge` (Branch-Train-MiX): each layer's four experts are the
# base's and the fine-tunes' FFNs, top-2, attention, norms and embeddings the mean of the four models' (as BTX does), routers fitted on the base's
# FFN inputs over each domain's training text. Prints the folder holding:
#
#   moe-f32.gguf    the merged model as moe-merge writes it
#   moe-q8_0.gguf   the same, llama-quantize'd to Q8_0 (what the benchmarks run)
#   merge.log       moe-merge's per-layer routing report (held-out accuracy, top weight, w2/w1)
#
# Cached under a key of its inputs: the experts' folder (itself keyed by the base, the texts,
# the trainer and the recipe), the merge's options and the sources that compute it. The
# experts come from the demo recipe unless SWITCHYARD_EXPERT_RECIPE says otherwise (about 10
# minutes to train on 2 cores, then about 4 minutes to merge).
#
# Environment: SWITCHYARD_EXPERT_RECIPE (demo, the default here, or full), SWITCHYARD_THREADS,
# SWITCHYARD_LLAMA_PATCHED_BIN, SWITCHYARD_LLAMA_BIN (llama-quantize; default the patched build's).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DOMAINS=(math code chat)
OPTIONS="--top-k 2 --base-share 0.25 --attention mean --ctx 512 --chunks 8"

switchyard="$(switchyard_cli)"
text="$(text_sets)"
llama="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
quantize="${SWITCHYARD_LLAMA_BIN:-$llama}/llama-quantize"
experts="$(SWITCHYARD_EXPERT_RECIPE="${SWITCHYARD_EXPERT_RECIPE:-demo}" "$SWITCHYARD_ROOT/scripts/make-experts.sh" | tail -n1)"

# The key: the experts' folder (itself keyed by what trained them), the texts, the options, and
# the sources that compute the merge (RECIPE is bumped by hand when a change elsewhere, e.g. the
# GGUF writer or the patched llama.cpp's capture callback, changes the output). The llama.cpp
# build is left out as in make-experts.sh: it runs the dense base, whose arithmetic the plugin's
# hooks leave alone; the capture callback is one of them, and RECIPE covers it.
RECIPE=1
sources=("$SWITCHYARD_ROOT"/plugin/src/moefy/*.rs "$SWITCHYARD_ROOT"/plugin/src/router/train.rs
         "$SWITCHYARD_ROOT"/plugin/src/moe/capture.rs "$SWITCHYARD_ROOT"/plugin/src/bin/switchyard/moe_merge.rs)
key="$( (echo "$(basename "$experts") $(basename "$text") $OPTIONS recipe-$RECIPE"; sha256sum "${sources[@]}" | cut -d' ' -f1) \
         | sha256sum | cut -c1-16)"
out="$SWITCHYARD_CACHE/moe/$key"
if [ -f "$out/moe-q8_0.gguf" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$out"
# the F32 merge (about 2.8x the base), its Q8_0 copy (0.75x) and the three captures (0.5x each)
need_space "$out" $(( 6 * $(stat -c %s "$experts/base-f32.gguf") )) "the merged model"

args=()
for d in "${DOMAINS[@]}"; do
    args+=(--expert "$d=$experts/$d.gguf" --text "$d=$text/text-$d-train.txt")
done
log "merging base + ${DOMAINS[*]} from $experts"
start=$(date +%s)
# shellcheck disable=SC2086 # OPTIONS is a list of options
"$switchyard" moe-merge "$experts/base-f32.gguf" "${args[@]}" $OPTIONS --capture-dir "$out/captures" \
    --llama-bin "$llama" -o "$out/.moe-f32.gguf.tmp" >"$out/.merge.log" \
    || { cat "$out/.merge.log" >&2; die "moe-merge failed"; }
log "merged in $(( $(date +%s) - start )) s"
"$quantize" "$out/.moe-f32.gguf.tmp" "$out/.moe-q8_0.gguf.tmp" q8_0 >"$out/quantize.log" 2>&1 \
    || { tail -n 20 "$out/quantize.log" >&2; die "llama-quantize failed"; }
rm -rf "$out/captures"
mv "$out/.merge.log" "$out/merge.log"
mv "$out/.moe-f32.gguf.tmp" "$out/moe-f32.gguf"
mv "$out/.moe-q8_0.gguf.tmp" "$out/moe-q8_0.gguf"
echo "$out"
