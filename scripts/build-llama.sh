#!/usr/bin/env bash
# Build the pinned llama.cpp (vendored in the PyPI sdist llama-cpp-python==0.3.36, upstream
# ggml-org 0c1e57098) and print the folder holding its binaries as the last line of output.
#
#   scripts/build-llama.sh            # patched: patches/*.patch applied, -DLLAMA_SWITCHYARD=ON
#   scripts/build-llama.sh --stock    # stock llama.cpp, for comparisons
#
# A build is cached under $SWITCHYARD_CACHE/llama/<key>, the key hashing every input
# (sdist hash, patches, Rust sources when patched, cmake flags), so an unchanged tree is reused.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-cli llama-completion llama-server llama-perplexity llama-imatrix llama-quantize)
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
             -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DGGML_CCACHE=OFF -DBUILD_SHARED_LIBS=OFF)

variant=patched
case "${1:-}" in
    --stock) variant=stock ;;
    "") ;;
    *) die "usage: $0 [--stock]" ;;
esac

inputs() {
    echo "sdist $SDIST_SHA256"
    echo "flags ${CMAKE_FLAGS[*]} targets ${TARGETS[*]}"
    # GGML_NATIVE compiles for this CPU: a build is only reused on the same instruction set.
    grep -m1 '^flags' /proc/cpuinfo || true
    if [ "$variant" = patched ]; then
        # Patches and everything the Rust library is built from.
        (cd "$SWITCHYARD_ROOT" && git ls-files -co --exclude-standard patches plugin ffi kernels Cargo.toml Cargo.lock \
            | LC_ALL=C sort | xargs -r sha256sum)
    fi
}
key="$variant-$(inputs | sha256sum | cut -c1-16)"
build="$SWITCHYARD_CACHE/llama/$key"
if [ -f "$build/.complete" ]; then
    log "reusing cached build $key"
    echo "$build/bin"
    exit 0
fi

sdist="$(fetch_pypi llama-cpp-python==0.3.36 "$SDIST_SHA256" --no-binary :all:)"
rm -rf "$build"
mkdir -p "$build/src"
log "unpacking llama.cpp from $(basename "$sdist") into $build/src"
tar -xzf "$sdist" -C "$build/src" --strip-components=3 "llama_cpp_python-0.3.36/vendor/llama.cpp"

flags=("${CMAKE_FLAGS[@]}")
if [ "$variant" = patched ]; then
    for p in "$SWITCHYARD_ROOT"/patches/*.patch; do
        [ -e "$p" ] || continue
        log "applying $(basename "$p")"
        patch -d "$build/src" -p1 --forward --quiet < "$p" || die "$(basename "$p") does not apply to the pinned llama.cpp"
    done
    if grep -q LLAMA_SWITCHYARD "$build/src/CMakeLists.txt"; then
        flags+=(-DLLAMA_SWITCHYARD=ON "-DSWITCHYARD_ROOT=$SWITCHYARD_ROOT")
    fi
fi

jobs="${SWITCHYARD_BUILD_JOBS:-$(nproc)}"
log "configuring ($variant): ${flags[*]}"
cmake -S "$build/src" -B "$build/cmake" -G Ninja "${flags[@]}" >"$build/configure.log" 2>&1 \
    || { tail -n 40 "$build/configure.log" >&2; die "cmake configure failed (log: $build/configure.log)"; }
log "building ${TARGETS[*]} with $jobs jobs (several minutes on 2 cores)"
cmake --build "$build/cmake" -j "$jobs" --target "${TARGETS[@]}" >"$build/build.log" 2>&1 \
    || { tail -n 40 "$build/build.log" >&2; die "build failed (log: $build/build.log)"; }
mkdir -p "$build/bin"
for t in "${TARGETS[@]}"; do cp "$build/cmake/bin/$t" "$build/bin/"; done
touch "$build/.complete"
echo "$build/bin"
