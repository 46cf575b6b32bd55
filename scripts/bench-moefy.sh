#!/usr/bin/env bash
# `switchyard moefy` on the real model (issue #6): SmolLM2-135M-Instruct, dequantised to F32,
# refactored into E experts per layer by activation statistics on calibration text (the first
# CALIB characters of each domain's training text). Prints markdown:
#   1. perplexity (llama-perplexity) on each domain's held-out text, dense against K = 1, 2,
#      E/2 and E experts per token, with the routers' held-out accuracy;
#   2. the K = 2 model's routing on held-out text of all domains (`switchyard trace`) replayed
#      against each cache policy and Belady's optimum (`switchyard sim`) with room for 25% and
#      50% of the experts; "hobbit*" uses HOBBIT's weights tuned on the calibration text's routing,
#      "belady/N" is Belady's knowing only the routes of the current token and N - 1 more.
#
# Environment: SWITCHYARD_MOEFY_EXPERTS (default 8), SWITCHYARD_MOEFY_SHARED (fraction of channels
# in every expert, default 0.5), SWITCHYARD_MOEFY_CALIB_CHARS (per domain, default 30000),
# SWITCHYARD_QUALITY_CHUNKS (512-token chunks of held-out text, default 8), SWITCHYARD_THREADS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

E="${SWITCHYARD_MOEFY_EXPERTS:-8}"
SHARED="${SWITCHYARD_MOEFY_SHARED:-0.5}"
CALIB="${SWITCHYARD_MOEFY_CALIB_CHARS:-30000}"
CHUNKS="${SWITCHYARD_QUALITY_CHUNKS:-8}"
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
DOMAINS=(math code chat)
[ "$E" -ge 2 ] || die "SWITCHYARD_MOEFY_EXPERTS must be at least 2 (got $E)"

switchyard="$(switchyard_cli)"
dense="$(smollm2_f32)"
text="$(text_sets)"
llama="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

calibration_text "$CALIB" "$work/calib.txt"
interleave_text 20000 "$work/held-out-mix.txt" "$text/text-math-eval.txt" "$text/text-code-eval.txt" "$text/text-chat-eval.txt"

# perplexity MODEL DOMAIN
perplexity() { held_out_perplexity "$llama" "$1" "$text/text-$2-eval.txt" "$CHUNKS" "$work/ppl.log"; }

echo "SmolLM2-135M-Instruct (F32) into $E experts per layer, $SHARED of the channels shared; calibration: $CALIB characters of each domain's training text; perplexity on $CHUNKS x 512 held-out tokens per domain."
echo
# channels: the dense channels a token's FFN keeps (shared + its experts' own), and the channel
# evaluations llama.cpp runs for it (each expert computes its copy of the shared ones)
echo "| model | experts per token | dense channels kept | channel evaluations | router top-1 (held out) | contribution recall | ppl math | ppl code | ppl chat |"
echo "|---|---|---|---|---|---|---|---|---|"
ppls=()
for domain in "${DOMAINS[@]}"; do ppls+=("$(perplexity "$dense" "$domain")"); done
n_ff="$("$switchyard" inspect "$dense" | sed -n 's/.*llama.feed_forward_length = [A-Z0-9]*(\([0-9]*\)).*/\1/p' | head -n1)"
echo "| dense | - | $n_ff | $n_ff | - | - | ${ppls[0]} | ${ppls[1]} | ${ppls[2]} |"
for k in $(printf '%s\n' 1 2 $((E / 2)) "$E" | sort -nu); do
    moe="$work/moe-$k.gguf"
    "$switchyard" moefy "$dense" --experts "$E" --top-k "$k" --shared "$SHARED" --text "$work/calib.txt" \
        --chunks 12 --llama-bin "$llama" --capture "$work/capture.safetensors" -o "$moe" >"$work/moefy.log" \
        || { cat "$work/moefy.log" >&2; die "moefy failed at top-$k"; }
    channels="$(sed -n 's/.*top-[0-9]*, \([0-9]*\) channels each.*/\1/p' "$work/moefy.log")"
    shared="$(sed -n 's/.*channels each (\([0-9]*\) shared).*/\1/p' "$work/moefy.log")"
    accuracy="$(sed -n 's/.*top-1 accuracy \([0-9.]*%\).*/\1/p' "$work/moefy.log")"
    recall="$(sed -n 's/.*recall of the top-[0-9]* \([0-9.]*%\).*/\1/p' "$work/moefy.log")"
    [ -n "$channels" ] && [ -n "$shared" ] || die "cannot read the expert size from moefy's report: $(cat "$work/moefy.log")"
    ppls=()
    for domain in "${DOMAINS[@]}"; do ppls+=("$(perplexity "$moe" "$domain")"); done
    kept=$((shared + k * (channels - shared)))
    [ "$kept" -gt "$n_ff" ] && kept="$n_ff" # at K = E the padding is not a channel
    echo "| moefy | $k of $E | $kept | $((k * channels)) | ${accuracy:--} | ${recall:--} | ${ppls[0]} | ${ppls[1]} | ${ppls[2]} |"
    [ "$k" = 2 ] && cp "$moe" "$work/moe-trace.gguf"
done

echo
trace="$work/trace.jsonl"
"$switchyard" trace "$work/moe-trace.gguf" --text "$work/held-out-mix.txt" --chunks 6 --llama-bin "$llama" -o "$trace" >"$work/trace.log"
# HOBBIT's weights are tuned on the routing of the calibration text, then judged on held-out text
"$switchyard" trace "$work/moe-trace.gguf" --text "$work/calib.txt" --chunks 6 --llama-bin "$llama" -o "$work/calib-trace.jsonl" >/dev/null
layers="$(sed -n 's/.*tokens, \([0-9]*\) MoE layers.*/\1/p' "$work/trace.log")"
[ -n "$layers" ] || die "cannot read the layer count from: $(cat "$work/trace.log")"
echo "Routing of the top-2 model on held-out text of all three domains ($(cut -d: -f2 "$work/trace.log" | cut -d, -f1 | xargs)), replayed by switchyard sim:"
for share in 25 50; do
    echo
    echo '```'
    "$switchyard" sim "$trace" --cache $((E * layers * share / 100)) --tune-on "$work/calib-trace.jsonl"
    # how many tokens of known routes Belady's edge needs
    for known in 2 4; do
        "$switchyard" sim "$trace" --cache $((E * layers * share / 100)) --known-tokens "$known" | grep '^belady/'
    done
    echo '```'
done
