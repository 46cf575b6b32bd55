#!/usr/bin/env bash
# How a mixture of experts routes, and what the routing-aware parts of switchyard do with it
# (issue 19), on a MoE with learned routing (default: scripts/make-moe.sh's). Prints markdown:
#   1. per layer, over held-out text of all three domains (`switchyard trace`): quartiles of the
#      top pick's weight and of w2/w1, and the share of second picks dynamic skipping drops
#      ("Not All Experts are Equal", arXiv 2402.14800: skip the second expert when w2/w1 is
#      below beta, the layer's median on calibration text, as `moe-pack --trace` sets it);
#   2. the trace replayed by `switchyard sim` with room for 25% and 50% of the experts (LRU,
#      LFU, HOBBIT default and tuned on the calibration trace, Belady and Belady knowing 1, 2, 4
#      tokens ahead) and with HOBBIT's thresholds (t1 0.6, t2 0.9: high/low/skip mix);
#   3. what dynamic skipping costs and saves in llama.cpp, where it applies (a pick under beta is
#      skipped when its expert is not in memory): --moe-cache 50% (HOBBIT's policy) with and
#      without --moe-skip-beta, perplexity one token per micro-batch (-ub 1, as in decoding),
#      the share of second picks the cache skipped, and decode tok/s (patched llama-completion);
#   4. next-layer prefetching's guesses: prefetched experts and how many were used
#      (--moe-cache 25% --moe-prefetch 1).
#
# Usage: scripts/bench-moe-routing.sh [MOE.gguf]
# Environment: SWITCHYARD_MOE_CALIB_CHARS (per domain, default 30000), SWITCHYARD_MOE_UB1_CHUNKS
# (512-token chunks per domain scored at -ub 1, default 1), SWITCHYARD_MOE_BENCH_TOKENS (64),
# SWITCHYARD_MOE_BENCH_ROUNDS (3), SWITCHYARD_THREADS, SWITCHYARD_LLAMA_PATCHED_BIN.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CALIB="${SWITCHYARD_MOE_CALIB_CHARS:-30000}"
UB1_CHUNKS="${SWITCHYARD_MOE_UB1_CHUNKS:-1}"
TOKENS="${SWITCHYARD_MOE_BENCH_TOKENS:-64}"
ROUNDS="${SWITCHYARD_MOE_BENCH_ROUNDS:-3}"
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
DOMAINS=(math code chat)

switchyard="$(switchyard_cli)"
text="$(text_sets)"
llama="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
model="${1:-$("$SWITCHYARD_ROOT/scripts/make-moe.sh" | tail -n1)/moe-q8_0.gguf}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

calibration_text "$CALIB" "$work/calib.txt"
interleave_text 20000 "$work/held-out-mix.txt" "$text/text-math-eval.txt" "$text/text-code-eval.txt" "$text/text-chat-eval.txt"
"$switchyard" trace "$model" --text "$work/held-out-mix.txt" --chunks 6 --llama-bin "$llama" -o "$work/trace.jsonl" >"$work/trace.log"
"$switchyard" trace "$model" --text "$work/calib.txt" --chunks 6 --llama-bin "$llama" -o "$work/calib-trace.jsonl" >/dev/null
read -r n_layers n_experts < <(sed -n 's/.*tokens, \([0-9]*\) MoE layers, \([0-9]*\) experts.*/\1 \2/p' "$work/trace.log") \
    || die "cannot read the trace's shape from: $(cat "$work/trace.log")"

# the skipping thresholds moe-pack derives from the calibration trace (beta per layer)
"$switchyard" moe-pack "$model" --trace "$work/calib-trace.jsonl" -o "$work/packed.gguf" >"$work/pack.log"
betas="$(sed -n 's/^skipping thresholds (beta per layer): //p' "$work/pack.log")"
[ -n "$betas" ] || die "no skipping thresholds in moe-pack's report: $(cat "$work/pack.log")"

echo "$(basename "$model"): routing on held-out text of all three domains ($(sed -n 's/.*: \([0-9]*\) tokens.*/\1/p' "$work/trace.log") tokens); quartiles 25/50/75%."
echo
python3 - "$work/trace.jsonl" "$betas" <<'PY'
import json, sys

def load(path):
    with open(path) as f:
        head = json.loads(f.readline())
        return head, [json.loads(line)["layers"] for line in f]

def quartiles(v):
    v = sorted(v)
    return [v[round((len(v) - 1) * q)] for q in (0.25, 0.5, 0.75)] if v else [float("nan")] * 3

head, held = load(sys.argv[1])
betas = [float(b) for b in sys.argv[2].split()]
ratio = lambda picks: sorted(w for _, w in picks)[-2] / max(w for _, w in picks)
print("| layer | top weight | w2/w1 | beta (calibration median) | second picks under beta |")
print("|---|---|---|---|---|")
all_top, all_ratio, skipped, seconds = [], [], 0, 0
for l in range(head["n_layers"]):
    # (the last layer runs only for the tokens whose logits were asked for: the others have no picks)
    picked = [t[l] for t in held if t[l]]
    top = [max(w for _, w in p) / sum(w for _, w in p) for p in picked]
    ratios = [ratio(p) for p in picked if len(p) > 1]
    beta = betas[l]
    skip = sum(r < beta for r in ratios)
    all_top += top; all_ratio += ratios; skipped += skip; seconds += len(ratios)
    fmt = lambda q: " / ".join(f"{x:.2f}" for x in q)
    print(f"| {l} | {fmt(quartiles(top))} | {fmt(quartiles(ratios))} | {beta:.3f} | {100 * skip / max(1, len(ratios)):.1f}% |")
fmt = lambda q: " / ".join(f"{x:.2f}" for x in q)
print(f"| all | {fmt(quartiles(all_top))} | {fmt(quartiles(all_ratio))} | - | {100 * skipped / max(1, seconds):.1f}% |")
PY

for share in 25 50; do
    cache=$(( n_experts * n_layers * share / 100 ))
    echo
    echo "Cache of $share% of the experts ($cache):"
    echo
    echo '```'
    "$switchyard" sim "$work/trace.jsonl" --cache "$cache" --tune-on "$work/calib-trace.jsonl"
    for known in 2 4; do "$switchyard" sim "$work/trace.jsonl" --cache "$cache" --known-tokens "$known" | grep '^belady/'; done
    echo "# HOBBIT's thresholds, t1 0.6 t2 0.9:"
    "$switchyard" sim "$work/trace.jsonl" --cache "$cache" --t1 0.6 --t2 0.9 | grep -E '^(policy|lru|hobbit) '
    echo '```'
done

# ub1 DOMAIN [args...]: "perplexity skipped picks" at -ub 1 with the cache at 50%
ub1() {
    local d="$1"; shift
    local ppl counts
    ppl="$(held_out_perplexity "$llama" "$work/packed.gguf" "$text/text-$d-eval.txt" "$UB1_CHUNKS" "$work/ub1.log" \
        -ub 1 -b 512 --no-warmup --moe-cache 50% --moe-policy hobbit -lv 4 "$@")"
    # every pick is a hit, a load or a skip; with top-2 (this model's), half of them are second
    # picks (no warm-up run: llama.cpp's picks every expert there)
    counts="$(sed -n 's/.*moe cache: budget [0-9.]* MiB, \([0-9]*\) hits, \([0-9]*\) loads (.*), \([0-9]*\) skipped.*/\1 \2 \3/p' "$work/ub1.log" | tail -n1)"
    [ -n "$ppl" ] && [ -n "$counts" ] || die "cannot read perplexity and cache counts from $work/ub1.log"
    echo "$ppl $counts"
}
echo
echo "Dynamic skipping in llama.cpp (--moe-cache 50% --moe-policy hobbit; perplexity at -ub 1 on $UB1_CHUNKS x 512 tokens per domain):"
echo
echo "| domain | ppl | ppl, --moe-skip-beta | cost | second picks skipped |"
echo "|---|---|---|---|---|"
for d in "${DOMAINS[@]}"; do
    off="$(ub1 "$d")"
    on="$(ub1 "$d" --moe-skip-beta)"
    read -r p0 _ <<<"$off"
    read -r p1 hits loads skipped <<<"$on"
    echo "| $d | $p0 | $p1 | $(echo "100 * ($p1 / $p0 - 1)" | bc -l | xargs printf '%+.2f%%') | $(echo "100 * $skipped / (($hits + $loads + $skipped) / 2)" | bc -l | xargs printf '%.1f%%') |"
done

prompt="$(head -c 600 "$text/text-chat-eval.txt")"
decode() {
    "$llama/llama-completion" -m "$work/packed.gguf" -p "$prompt" -n "$TOKENS" -c 1024 --temp 0 -t "$THREADS" \
        -no-cnv --no-warmup --ignore-eos -lv 4 "$@" 2>"$work/decode.log" >/dev/null || { tail -n 20 "$work/decode.log" >&2; die "llama-completion failed ($*)"; }
    decode_tps_of "$work/decode.log"
}
a="" b=""
for _ in $(seq "$ROUNDS"); do
    a+="$(decode --moe-cache 50% --moe-policy hobbit)"$'\n'
    b+="$(decode --moe-cache 50% --moe-policy hobbit --moe-skip-beta)"$'\n'
done
ta="$(printf '%s' "$a" | median)" tb="$(printf '%s' "$b" | median)"
echo
echo "Decode ($TOKENS tokens, median of $ROUNDS, alternating; no memory limit: the cache bounds itself): --moe-cache 50% $ta tok/s; with --moe-skip-beta $tb tok/s ($(echo "$tb / $ta" | bc -l | xargs printf '%.2f')x)."
decode --moe-cache 25% --moe-prefetch 1 >/dev/null
echo
echo "Prefetching (--moe-cache 25% --moe-prefetch 1, $TOKENS tokens): $(sed -n 's/.*, \([0-9]*\) prefetched (\([0-9]*\) used).*/\2 of \1 prefetched experts used/p' "$work/decode.log" | tail -n1)."
echo "($(date -u +%F), $THREADS threads)"
