#!/usr/bin/env bash
# The low-rank delta study on the real math expert (scripts/make-experts.sh): is a rank-r
# factorisation D ~ B A of a fine-tune's delta (compute r (n_in + n_out) per token instead of
# n_in n_out) as faithful as the 2-bit codec the bundle applies in the graph today?
#
# Mean KL divergence from the full F32 expert (llama-perplexity --kl-divergence, CHUNKS x 512
# tokens of held-out math text) of:
#   - the base (no delta);
#   - the expert with every linear weight W_base + D_r, F32 (lowrank_lora.py svd): the
#     factorisation's own error, norms and embeddings as the expert has them;
#   - the real base as users run it (SmolLM2 Q4_1) with the rank-r factors as a llama.cpp LoRA
#     adapter (F16, --lora; LoRA carries no norms: the expert's changed norms are left out);
#   - the bundle of the same expert (2-bit codec), extracted to F32 and applied in the graph.
# Speed and memory: scripts/bench-in-graph.sh with LORAS=<the adapters this writes>.
#
# Usage: scripts/study/lowrank.sh [WORK_DIR]   (default: a folder under the cache)
# Environment: RANKS (default "8 32 128"), CHUNKS (default 8), SWITCHYARD_* as scripts/setup.sh.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

RANKS=(${RANKS:-8 32 128})
CHUNKS="${CHUNKS:-8}"
switchyard="$(switchyard_cli)"
smol="$(smollm2_gguf)"
text="$(text_sets)"
stock="${SWITCHYARD_LLAMA_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" --stock | tail -n1)}"
patched="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
experts="$(SWITCHYARD_EXPERTS_ONLY=math "$SWITCHYARD_ROOT/scripts/make-experts.sh")"
python="$SWITCHYARD_CACHE/venv-data/bin/python" # numpy, from scripts/fetch-data.sh
[ -x "$python" ] || die "$python is missing (scripts/fetch-data.sh makes it)"
work="${1:-$SWITCHYARD_CACHE/study-lowrank/$(basename "$experts")}" # results follow the experts
mkdir -p "$work"
cd "$work"

ppl() { "$@" -f "$text/text-math-eval.txt" -c 512 --chunks "$CHUNKS" -t 2 -tb 2; }
ref="logits-math-n$CHUNKS.kld"
[ -f "$ref" ] || ppl "$stock/llama-perplexity" -m "$experts/math.gguf" --kl-divergence-base "$ref" >ref.log 2>&1 \
    || die "saving the expert's logits failed (log: $work/ref.log)"
# kl NAME BIN MODEL [args...]: one table row
kl() {
    local name="$1" bin="$2" model="$3"; shift 3
    ppl "$bin/llama-perplexity" -m "$model" "$@" --kl-divergence-base "$ref" --kl-divergence >"kl.log" 2>&1 \
        || die "llama-perplexity --kl-divergence failed for $name (log: $work/kl.log)"
    printf '| %s | %s | %s |\n' "$name" "$(sed -n 's/.*Mean    KLD: *\([0-9.]*\).*/\1/p' kl.log)" \
        "$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p' kl.log)"
}

ranks_csv="$(IFS=,; echo "${RANKS[*]}")"
"$python" "$SWITCHYARD_ROOT/scripts/study/lowrank_lora.py" svd "$experts/base-hf" "$experts/math-hf" math "$ranks_csv"
[ -f bundle.gguf ] || "$switchyard" pack --base-gguf "$smol" --base "$experts/base-hf" --expert math="$experts/math-hf" --rank 0 -o bundle.gguf >/dev/null
[ -f codec-f32.gguf ] || "$switchyard" extract bundle.gguf --expert math --type f32 -o codec-f32.gguf >/dev/null
[ -f math-q41.gguf ] || "$switchyard" extract bundle.gguf --expert math --type base -o math-q41.gguf >/dev/null
echo
echo "| model | mean KL from the F32 math expert | perplexity |"
echo "|---|---|---|"
kl "base (F32)" "$stock" "$experts/base-f32.gguf"
for r in "${RANKS[@]}"; do
    "$switchyard" from-hf "math-r$r-hf" --tokenizer-from "$experts/base-f32.gguf" --name "math-r$r" --type f32 -o "math-r$r.gguf" >/dev/null
    rm -rf "math-r$r-hf"
    kl "W_base + D_r, r = $r (F32)" "$stock" "math-r$r.gguf"
    rm -f "math-r$r.gguf"
done
for r in "${RANKS[@]}"; do
    [ -f "math-lora-r$r.gguf" ] || "$python" "$SWITCHYARD_ROOT/scripts/study/lowrank_lora.py" lora "$experts/base-hf" "$experts/math-hf" "$r" "math-lora-r$r.gguf"
    kl "Q4_1 base + LoRA r = $r ($(du -m "math-lora-r$r.gguf" | cut -f1) MiB, F16)" "$stock" "$smol" --lora "math-lora-r$r.gguf"
done
kl "codec 2-bit, materialized (F32)" "$stock" codec-f32.gguf
kl "bundle, math in the graph (Q4_1 base)" "$patched" bundle.gguf --expert math
kl "math as Q4_1 (extract --type base)" "$stock" math-q41.gguf
echo "($CHUNKS x 512 tokens of text-math-eval.txt; $(date -u +%F))"
echo "speed and memory: LORAS=\"$(for r in "${RANKS[@]}"; do printf '%s ' "$work/math-lora-r$r.gguf"; done)\" scripts/bench-in-graph.sh $smol $work/bundle.gguf math $work/math-q41.gguf"
