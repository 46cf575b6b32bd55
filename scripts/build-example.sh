#!/usr/bin/env bash
# Compile examples/NAME.c against the patched llama.cpp (scripts/build-llama.sh) and its static
# libraries, the way a C program embedding llama.cpp with switchyard links; print the binary.
#
#   scripts/build-example.sh NAME OUT_DIR [PATCHED_BIN_DIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 2 ] || die "usage: $0 NAME OUT_DIR [PATCHED_BIN_DIR]"
name="$1" out="$2"
bin="${3:-${SWITCHYARD_LLAMA_PATCHED_BIN:-}}"
[ -n "$bin" ] || bin="$("$SWITCHYARD_ROOT/scripts/build-llama.sh" | tail -n1)"
root="$(dirname "$bin")"
src="$root/src" cmake="$root/cmake"
mkdir -p "$out"
"${CC:-cc}" -std=c11 -Wall -Wextra -Werror -O2 -c -I "$src/include" -I "$src/ggml/include" \
    "$SWITCHYARD_ROOT/examples/$name.c" -o "$out/$name.o"
# every backend the build registers (the CPU's, and RPC's in the patched build) links after
# libggml.a, whose registry refers to them, and before libggml-base.a, which they use
backends=("$cmake/ggml/src/libggml-cpu.a")
[ -f "$cmake/ggml/src/ggml-rpc/libggml-rpc.a" ] && backends+=("$cmake/ggml/src/ggml-rpc/libggml-rpc.a")
c++ "$out/$name.o" "$cmake/src/libllama.a" "$cmake/ggml/src/libggml.a" "${backends[@]}" \
    "$cmake/ggml/src/libggml-base.a" "$cmake/switchyard-target/llama/libswitchyard_ffi.a" \
    -fopenmp -lpthread -ldl -lm -o "$out/$name"
rm -f "$out/$name.o"
echo "$out/$name"
