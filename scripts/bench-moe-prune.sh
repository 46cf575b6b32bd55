#!/usr/bin/env bash
# Expert pruning on a mixture of experts with learned routing (issue 19): `switchyard moe-prune`
# by each method (enum: "Not All Experts are Equal", arXiv 2402.14800; reap: REAP, arXiv
# 2510.13999; freq; random), keeping 3/4 and 1/2 of each layer's experts, calibrated on text of
# every domain (task-agnostic) and on one domain's (task-specific). Prints markdown:
#   1. perplexity on each domain's held-out text (CHUNKS x 512 tokens, stock llama-perplexity)
#      of the unpruned model and of every task-agnostic pruning, with the mean ratio to unpruned;
#   2. task-specific pruning to 1/2: each domain's perplexity when calibrated on that domain;
#   3. size and decode speed (llama-completion, TOKENS tokens greedy, median of ROUNDS, runs
#      alternating) of the unpruned model and the best pruning at 1/2: all experts in memory
#      (stock llama.cpp), and the same expert memory for both (the patched build's --moe-cache:
#      half of the unpruned model's experts, all of the pruned one's).
#
# Usage: scripts/bench-moe-prune.sh [MOE.gguf]   (default: scripts/make-moe.sh's moe-q8_0.gguf)
# Environment: SWITCHYARD_QUALITY_CHUNKS (default 8), SWITCHYARD_MOE_CALIB_CHARS (per domain,
# default 30000), SWITCHYARD_MOE_BENCH_TOKENS (64), SWITCHYARD_MOE_BENCH_ROUNDS (3),
# SWITCHYARD_THREADS, SWITCHYARD_LLAMA_BIN, SWITCHYARD_LLAMA_PATCHED_BIN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CHUNKS="${SWITCHYARD_QUALITY_CHUNKS:-8}"
CALIB="${SWITCHYARD_MOE_CALIB_CHARS:-30000}"
TOKENS="${SWITCHYARD_MOE_BENCH_TOKENS:-64}"
ROUNDS="${SWITCHYARD_MOE_BENCH_ROUNDS:-3}"
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
DOMAINS=(math code chat)
METHODS=(enum reap freq random)

switchyard="$(switchyard_cli)"
text="$(text_sets)"
stock="${SWITCHYARD_LLAMA_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" --stock | tail -n1)}"
patched="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
model="${1:-$("$SWITCHYARD_ROOT/scripts/make-moe.sh" | tail -n1)/moe-q8_0.gguf}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

E="$("$switchyard" inspect "$model" | sed -n 's/.*llama.expert_count = [A-Z0-9]*(\([0-9]*\)).*/\1/p' | head -n1)"
[ -n "$E" ] && [ "$E" -ge 2 ] || die "$model: not a mixture of experts (no llama.expert_count of 2 or more)"
calibration_text "$CALIB" "$work/calib-all.txt"
for d in "${DOMAINS[@]}"; do head -c "$CALIB" "$text/text-$d-train.txt" >"$work/calib-$d.txt"; done

# perplexity MODEL DOMAIN
perplexity() { held_out_perplexity "$stock" "$1" "$text/text-$2-eval.txt" "$CHUNKS" "$work/ppl.log"; }

# prune KEEP METHOD CALIB OUT: the capture of each calibration text is made once and reused
prune() {
    "$switchyard" moe-prune "$model" --keep "$1" --method "$2" --text "$work/calib-$3.txt" --chunks 12 \
        --capture "$work/capture-$3" --llama-bin "$patched" -o "$4" >"$work/prune.log" \
        || { cat "$work/prune.log" >&2; die "moe-prune --keep $1 --method $2 ($3) failed"; }
}

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.4f'; }

declare -A base_ppl
echo "$(basename "$model"): $E experts per layer; perplexity on $CHUNKS x 512 held-out tokens per domain; calibration: $CALIB characters of each domain's training text (12 chunks of 512 tokens captured)."
echo
echo "| experts kept | method | ppl math | ppl code | ppl chat | mean ratio to unpruned |"
echo "|---|---|---|---|---|---|"
row=""
for d in "${DOMAINS[@]}"; do base_ppl[$d]="$(perplexity "$model" "$d")"; row+=" ${base_ppl[$d]} |"; done
echo "| $E of $E | - |$row 1.0000 |"
declare -A mean_ratio
for keep in $(( E * 3 / 4 )) $(( E / 2 )); do
    for m in "${METHODS[@]}"; do
        prune "$keep" "$m" all "$work/p.gguf"
        row="" sum=0
        for d in "${DOMAINS[@]}"; do
            p="$(perplexity "$work/p.gguf" "$d")"
            row+=" $p |"
            sum="$(echo "$sum + $p / ${base_ppl[$d]}" | bc -l)"
        done
        mean_ratio[$keep-$m]="$(echo "$sum / ${#DOMAINS[@]}" | bc -l | xargs printf '%.4f')"
        echo "| $keep of $E | $m |$row ${mean_ratio[$keep-$m]} |"
    done
done

echo
echo "Task-specific: pruned to $(( E / 2 )) of $E on one domain's calibration text, perplexity on that domain's held-out text (ratio to unpruned)."
echo
echo "| method | math | code | chat |"
echo "|---|---|---|---|"
for m in "${METHODS[@]}"; do
    row=""
    for d in "${DOMAINS[@]}"; do
        prune $(( E / 2 )) "$m" "$d" "$work/p.gguf"
        p="$(perplexity "$work/p.gguf" "$d")"
        row+=" $p ($(ratio "$p" "${base_ppl[$d]}")) |"
    done
    echo "| $m |$row"
done

# decode speed: the best task-agnostic method at E/2 against the unpruned model
best="$(for m in "${METHODS[@]}"; do echo "${mean_ratio[$(( E / 2 ))-$m]} $m"; done | sort -n | head -n1 | cut -d' ' -f2)"
prune $(( E / 2 )) "$best" all "$work/best.gguf"
prompt="$(head -c 600 "$text/text-chat-eval.txt")"
# decode BIN MODEL [args...]: tokens/s of one greedy generation
decode() {
    "$1/llama-completion" -m "$2" -p "$prompt" -n "$TOKENS" -c 1024 --temp 0 -t "$THREADS" -no-cnv --no-warmup \
        --ignore-eos "${@:3}" 2>"$work/decode.log" >/dev/null || { tail -n 20 "$work/decode.log" >&2; die "llama-completion failed on $2"; }
    decode_tps_of "$work/decode.log"
}
# the same expert memory both ways: the unpruned model's cache holds half its experts, the
# pruned model's all of its own
runs=("$stock $model" "$stock $work/best.gguf" "$patched $model --moe-cache 50%" "$patched $work/best.gguf --moe-cache 100%")
declare -A tps
for _ in $(seq "$ROUNDS"); do
    for i in "${!runs[@]}"; do
        # shellcheck disable=SC2086 # each run is a word list
        tps[$i]+="$(decode ${runs[$i]})"$'\n'
    done
done
t() { printf '%s' "${tps[$1]}" | median; }
echo
echo "| model | file MiB | expert memory | decode tok/s (median of $ROUNDS) | x the unpruned row above it |"
echo "|---|---|---|---|---|"
echo "| unpruned, $E experts | $(( $(stat -c %s "$model") >> 20 )) | all | $(t 0) | 1.00 |"
echo "| $best, $(( E / 2 )) of $E | $(( $(stat -c %s "$work/best.gguf") >> 20 )) | all | $(t 1) | $(ratio "$(t 1)" "$(t 0)") |"
echo "| unpruned, --moe-cache 50% | | half | $(t 2) | 1.00 |"
echo "| $best, $(( E / 2 )) of $E, --moe-cache 100% | | half | $(t 3) | $(ratio "$(t 3)" "$(t 2)") |"
echo "($(date -u +%F), $THREADS threads; $TOKENS tokens decoded after a 600-character prompt; runs alternate; stock llama.cpp, the cache rows the patched build)"
