#!/usr/bin/env bash
# Is the compression nearly lossless on real fine-tunes? For each expert of scripts/make-experts.sh,
# perplexity (llama.cpp's llama-perplexity, patched build) on the held-out text of every domain
# for: the base, the full expert, the expert compressed with the salient-aware codec at 1-4 bits,
# with BitDelta and with round-to-nearest, plus each bundle's size and bits per parameter.
# The codec weighs each input channel by its activations, as ME-Switch does: an importance matrix
# (llama-imatrix) of the base on the first CALIB characters of every domain's training text,
# with each weight's full input covariance (the imatrix-covariance patch's --covariance) for error feedback.
#
# Settings (SWITCHYARD_QUALITY_CONFIGS, words NAME:BITS):
#   salient:B    the codec's defaults: 1% salient channels at 16 bits, a step per 128 channels
#   weighted:B   the codec at round-to-nearest's size: no salient channels, one step per row,
#                steps fitted to the activation-weighted error
#   feedback:B   weighted:B with error feedback: each channel's rounding error is passed on to
#                the channels after it by the calibration inputs' covariance (GPTQ-style)
#   salient-fb:B salient:B with error feedback
#   bitdelta:1   BitDelta (sign bits, one step per matrix)
#   rtn:B        round-to-nearest, one MSE-optimal step per row, every channel weighing the same
#   lowrank:R    pack's default: linear weights' deltas as rank-R factors (pack --rank R; any
#                matrix the factors would not serve gets salient:2)
# (every setting but lowrank packs with --rank 0: the codec alone)
# Prints a markdown table (also written to quality.md in the work folder) with the gap each
# setting closes on the expert's own domain,
#
#   gap closed = (ppl_base - ppl_compressed) / (ppl_base - ppl_full)
#
# and how far each setting's next-token distributions are from the full expert's on that text
# (mean KL divergence, llama-perplexity --kl-divergence): perplexity can improve when
# compression drops noise the fine-tune learned, KL only measures fidelity.
#
# Environment: SWITCHYARD_QUALITY_CHUNKS (512-token chunks of each held-out text, default 16),
# SWITCHYARD_QUALITY_CONFIGS (default "salient:1 salient:2 salient:3 salient:4 weighted:1
# weighted:2 feedback:1 feedback:2 salient-fb:2 bitdelta:1 rtn:2 rtn:3 lowrank:64"),
# SWITCHYARD_QUALITY_CALIB_CHARS (CALIB, default 20000), SWITCHYARD_EXPERTS (default "math code chat"), SWITCHYARD_EXPERTS_DIR (default
# scripts/make-experts.sh), SWITCHYARD_THREADS. Results are cached per setting in the work folder,
# so an interrupted run resumes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CHUNKS="${SWITCHYARD_QUALITY_CHUNKS:-16}"
CTX=512
CONFIGS=(${SWITCHYARD_QUALITY_CONFIGS:-salient:1 salient:2 salient:3 salient:4 weighted:1 weighted:2 feedback:1 feedback:2 salient-fb:2 bitdelta:1 rtn:2 rtn:3 lowrank:64})
CALIB="${SWITCHYARD_QUALITY_CALIB_CHARS:-20000}"
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
DOMAINS=(math code chat)                           # held-out texts
EXPERTS=(${SWITCHYARD_EXPERTS:-${DOMAINS[*]}})      # experts measured (and packed together)

switchyard="$(switchyard_cli)"
base_gguf="$(smollm2_gguf)"
experts="${SWITCHYARD_EXPERTS_DIR:-$("$SWITCHYARD_ROOT/scripts/make-experts.sh")}"
text="$(text_sets)"
llama="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"

work="$experts/quality"
mkdir -p "$work"
results="$work/ppl-c$CTX-n$CHUNKS.tsv" # row, expert, domain, ppl
klds="$work/kld-c$CTX-n$CHUNKS.tsv"      # row, expert, mean KL divergence from the full expert
touch "$results" "$klds"

# has_ppl ROW EXPERT DOMAIN / record_ppl ROW EXPERT DOMAIN PPL: the perplexity cache, $results
has_ppl() { grep -q "^$1	$2	$3	" "$results"; }
record_ppl() {
    log "$1 $2 on $3: $4"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"
}

# perplexity ROW EXPERT DOMAIN MODEL [llama args...]: cached in $results
perplexity() {
    local row="$1" expert="$2" domain="$3" model="$4"; shift 4
    if has_ppl "$row" "$expert" "$domain"; then
        return
    fi
    local logf="$work/ppl.log" ppl
    "$llama/llama-perplexity" -m "$model" "$@" -f "$text/text-$domain-eval.txt" -c "$CTX" \
        --chunks "$CHUNKS" -t "$THREADS" -tb "$THREADS" >"$logf" 2>&1 \
        || { tail -n 20 "$logf" >&2; die "llama-perplexity failed: $row $expert $domain (log: $logf)"; }
    ppl="$(ppl_of "$logf")"
    [ -n "$ppl" ] || die "no perplexity in $logf"
    record_ppl "$row" "$expert" "$domain" "$ppl"
}

# kld ROW EXPERT MODEL [llama args...]: mean KL divergence from the full expert's distributions
# on the expert's own held-out text (saved once per expert), cached in $klds. The same run scores
# the same tokens, so it also gives the perplexity on the expert's own domain: one run fewer.
kld() {
    local row="$1" expert="$2" model="$3"; shift 3
    if grep -q "^$row	$expert	" "$klds"; then
        return
    fi
    local ref="$work/logits-$expert-c$CTX-n$CHUNKS.kld" logf="$work/kld.log" value ppl
    if [ ! -f "$ref" ]; then
        "$llama/llama-perplexity" -m "$experts/$expert.gguf" -f "$text/text-$expert-eval.txt" -c "$CTX" \
            --chunks "$CHUNKS" -t "$THREADS" -tb "$THREADS" --kl-divergence-base "$ref.tmp" >"$logf" 2>&1 \
            || { tail -n 20 "$logf" >&2; die "saving $expert's logits failed (log: $logf)"; }
        mv "$ref.tmp" "$ref"
    fi
    "$llama/llama-perplexity" -m "$model" "$@" --kl-divergence-base "$ref" --kl-divergence -c "$CTX" \
        --chunks "$CHUNKS" -t "$THREADS" -tb "$THREADS" >"$logf" 2>&1 \
        || { tail -n 20 "$logf" >&2; die "llama-perplexity --kl-divergence failed: $row $expert (log: $logf)"; }
    value="$(sed -n 's/.*Mean    KLD: *\([0-9.]*\).*/\1/p' "$logf")"
    ppl="$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p' "$logf")"
    [ -n "$value" ] && [ -n "$ppl" ] || die "no KL divergence or perplexity in $logf"
    log "$row $expert: KL from the full expert $value"
    if [ "$row" != base ] && ! has_ppl "$row" "$expert" "$expert"; then
        record_ppl "$row" "$expert" "$expert" "$ppl"
    fi
    printf '%s\t%s\t%s\n' "$row" "$expert" "$value" >>"$klds"
}

for domain in "${DOMAINS[@]}"; do
    perplexity base - "$domain" "$experts/base-f32.gguf"
done
for expert in "${EXPERTS[@]}"; do
    kld base "$expert" "$experts/base-f32.gguf"
done
for expert in "${EXPERTS[@]}"; do
    for domain in "${DOMAINS[@]}"; do
        perplexity full "$expert" "$domain" "$experts/$expert.gguf"
    done
done

# the importance matrix: training text only, so no held-out token informs the compression; saved
# once at the end (the covariances make it about 0.5 GB for SmolLM2-135M)
imatrix="$work/imatrix-cov-$CALIB.gguf"
if [ ! -f "$imatrix" ]; then
    for domain in "${DOMAINS[@]}"; do head -c "$CALIB" "$text/text-$domain-train.txt"; printf '\n\n'; done >"$work/calib.txt"
    "$llama/llama-imatrix" -m "$experts/base-f32.gguf" -f "$work/calib.txt" -c "$CTX" -t "$THREADS" \
        --covariance --output-frequency 1000000 -o "$imatrix.tmp.gguf" >"$work/imatrix.log" 2>&1 \
        || { tail -n 20 "$work/imatrix.log" >&2; die "llama-imatrix failed (log: $work/imatrix.log)"; }
    mv "$imatrix.tmp.gguf" "$imatrix"
fi

sizes="$work/sizes.tsv" # row, expert, MiB stored, bits/param over every changed parameter, linear-delta bits/param
touch "$sizes"
for config in "${CONFIGS[@]}"; do
    codec="${config%:*}" bits="${config#*:}"
    row="$codec-$bits"
    bundle="$work/$row-$(IFS=-; echo "${EXPERTS[*]}").gguf"
    if [ ! -f "$bundle" ]; then
        log "packing $row"
        args=()
        for expert in "${EXPERTS[@]}"; do args+=(--expert "$expert=$experts/$expert.gguf"); done
        case "$codec" in
            salient) args+=(--rank 0 --codec salient --imatrix "$imatrix") ;;
            salient-fb) args+=(--rank 0 --codec salient --imatrix "$imatrix" --error-feedback) ;;
            weighted) args+=(--rank 0 --codec salient --salient 0 --group-size 0 --imatrix "$imatrix") ;;
            feedback) args+=(--rank 0 --codec salient --salient 0 --group-size 0 --imatrix "$imatrix" --error-feedback) ;;
            bitdelta | rtn) args+=(--rank 0 --codec "$codec") ;;
            lowrank) args+=(--rank "$bits" --codec salient --imatrix "$imatrix"); bits=2 ;;
            *) die "unknown setting $config (want salient, salient-fb, weighted, feedback, bitdelta, rtn or lowrank)" ;;
        esac
        "$switchyard" pack --base-gguf "$base_gguf" --base "$experts/base-hf" "${args[@]}" \
            --bits "$bits" -o "$bundle" >&2
    fi
    # "  math : codec ..." then "    N tensors changed, X MiB stored (B bits/param): linear deltas Y MiB at L bits/param, ..."
    # read once per bundle, like every other result here
    grep -q "^$row	" "$sizes" || "$switchyard" inspect --summary --no-verify "$bundle" | awk -v row="$row" '
        /^  [a-z]+ : / { expert = $1 }
        /tensors changed/ { gsub(/[(]/, "", $7); printf "%s\t%s\t%s\t%s\t%s\n", row, expert, $4, $7, $14 }' >>"$sizes"
    for expert in "${EXPERTS[@]}"; do
        kld "$row" "$expert" "$bundle" --expert "$expert"
        for domain in "${DOMAINS[@]}"; do
            perplexity "$row" "$expert" "$domain" "$bundle" --expert "$expert"
        done
    done
done

# the table: one block per expert measured so far, the gap closed on its own domain
python3 - "$results" "$sizes" "$klds" "${DOMAINS[@]}" <<'EOF' | tee "$work/quality.md"
import sys
results, sizes, klds, domains = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
kl = {}
for line in open(klds):
    row, expert, value = line.rstrip("\n").split("\t")
    kl[row, expert] = float(value)
ppl = {}
for line in open(results):
    row, expert, domain, value = line.rstrip("\n").split("\t")
    ppl[row, expert, domain] = float(value)
size = {}
for line in open(sizes):
    row, expert, mib, bits_all, bits_linear = line.rstrip("\n").split("\t")
    size[row, expert] = (mib, bits_all, bits_linear)
rows = [r for r in dict.fromkeys(r for r, _, _ in ppl) if r not in ("base", "full")]
print("| expert | weights | MiB stored | bits/param (all) | bits/param (linear) | "
      + " | ".join(f"ppl {d}" for d in domains) + " | gap closed (own domain) | KL from full (own domain) |")
print("|" + "---|" * (7 + len(domains)))
for expert in [d for d in domains if ("full", d, d) in ppl]:
    base, full = ppl["base", "-", expert], ppl["full", expert, expert]
    def line(label, key, mib="", bits_all="", bits_linear="", gap="", kld=""):
        values = " | ".join(f"{ppl[key + (d,)]:.3f}" for d in domains)
        print(f"| {expert} | {label} | {mib} | {bits_all} | {bits_linear} | {values} | {gap} | {kld} |")
    def kl_of(row):
        return f"{kl[row, expert]:.5f}" if (row, expert) in kl else ""
    line("base", ("base", "-"), gap="0 %", kld=kl_of("base"))
    line("full fine-tune", ("full", expert), "", "32", "32", "100 %", "0")
    for row in rows:
        if (row, expert, expert) in ppl:
            gap = (base - ppl[row, expert, expert]) / (base - full)
            line(row, (row, expert), *size.get((row, expert), ("?", "?", "?")), f"{100 * gap:.1f} %", kl_of(row))
EOF
