#!/usr/bin/env bash
# Build the pinned llama.cpp (vendored in the PyPI sdist llama-cpp-python==0.3.36, upstream
# ggml-org 0c1e57098) and print the folder holding its binaries as the last line of output.
#
#   scripts/build-llama.sh            # patched: patches/files/ copied in, patches/*.patch applied
#                                     # (hooks into upstream files), -DLLAMA_SWITCHYARD=ON
#   scripts/build-llama.sh --stock    # stock llama.cpp, for comparisons
#   scripts/build-llama.sh --cuda ARCH
#       # patched, with ggml's CUDA backend for one GPU architecture (90: H100/H200; 80: A100).
#       # With no nvcc on PATH the toolkit is CUDA 13 from NVIDIA's PyPI wheels
#       # (scripts/cuda-toolkit.sh), which compiles and links but cannot run here: the check that
#       # switchyard's GPU glue builds. On a GPU machine its own CUDA is used. Not in CI (it
#       # compiles ggml-cuda: see docs/DEVELOPMENT.md).
#   scripts/build-llama.sh --trainer-key
#       # builds nothing: prints a hash of what decides llama-finetune's results (the sdist, the
#       # flags, the CPU and the trainer's own patch), which keys scripts/make-experts.sh's cache
#
# A build lives under $SWITCHYARD_CACHE/llama/<key>, the key hashing the sdist, the patches and
# patches/files/, the cmake flags and the CPU's instruction set. A stock build is reused as it
# is; a patched one is rebuilt incrementally (ninja + cargo), so changed Rust sources only
# rebuild the Rust library and relink, and unchanged ones cost a few seconds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TRAINER_PATCH=0007-finetune-train-stride.patch
TARGETS=(llama-cli llama-completion llama-server llama-perplexity llama-imatrix llama-quantize llama-tokenize
         llama-finetune)
# Native code without AMX: on Sapphire Rapids virtual machines (these 2-core machines, CI's
# included) ggml's AMX matmul crashes stock llama.cpp (SIGSEGV in ggml_backend_amx_mul_mat on
# SmolLM2's Q4_1 weights; fine with --no-repack; upstream issue ggml-org/llama.cpp#20824, closed
# unfixed), and AMX would also compute other weights than the bundle's, which stay out of extra
# buffer types. An explicit -mno-* wins over -march=native.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
             -DLLAMA_BUILD_EXAMPLES=ON -DGGML_NATIVE=ON -DGGML_CCACHE=OFF -DBUILD_SHARED_LIBS=OFF
             "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")

# The patched build also builds ggml's RPC backend and its server (ggml-rpc-server), so a bundle
# served through --rpc (llama.cpp's own scale-out) is tested; the stock build stays as it was.
PATCHED_FLAGS=(-DGGML_RPC=ON)
PATCHED_TARGETS=(ggml-rpc-server)

variant=patched
toolkit="" # CUDA builds: which toolkit (part of the key)
[ $# -le 1 ] || [ "$1" = --cuda ] || die "usage: $0 [--stock | --trainer-key | --cuda ARCH]"
case "${1:-}" in
    --stock) variant=stock ;;
    --trainer-key) variant=trainer ;;
    --cuda)
        [[ "${2:-}" =~ ^[0-9]+[af]?$ ]] && [ $# -eq 2 ] || die "usage: $0 --cuda ARCH (a CUDA architecture such as 90)"
        variant=patched
        PATCHED_FLAGS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$2")
        # the machine's own CUDA where there is one (CUDACXX, PATH, the default install)
        nvcc="${CUDACXX:-$(command -v nvcc || true)}"
        [ -n "$nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc=/usr/local/cuda/bin/nvcc
        if [ -n "$nvcc" ]; then
            toolkit="system $("$nvcc" --version | tail -n1)"
            PATCHED_FLAGS+=("-DCMAKE_CUDA_COMPILER=$nvcc")
        else
            # the wheels bring no driver library to link against (ggml's VMM pool needs it), and
            # a compile check can leave out FlashAttention's hundreds of template instances
            cuda_root="$("$SWITCHYARD_ROOT/scripts/cuda-toolkit.sh")"
            toolkit="wheels $cuda_root"
            PATCHED_FLAGS+=("-DCUDAToolkit_ROOT=$cuda_root" "-DCMAKE_CUDA_COMPILER=$cuda_root/bin/nvcc"
                            -DGGML_CUDA_NO_VMM=ON -DGGML_CUDA_FA=OFF)
        fi
        ;;
    "") ;;
    *) die "usage: $0 [--stock | --trainer-key | --cuda ARCH]" ;;
esac

inputs() {
    echo "sdist $SDIST_SHA256"
    echo "flags ${CMAKE_FLAGS[*]} targets ${TARGETS[*]}"
    # GGML_NATIVE compiles for this CPU: a build is only reused on the same instruction set.
    grep -m1 '^flags' /proc/cpuinfo || true
    case "$variant" in
        patched) echo "patched flags ${PATCHED_FLAGS[*]} targets ${PATCHED_TARGETS[*]} ${toolkit:-}"
                 (cd "$SWITCHYARD_ROOT" && LC_ALL=C sha256sum patches/*.patch \
                      && find patches/files -type f | LC_ALL=C sort | xargs sha256sum) ;;
        trainer) (cd "$SWITCHYARD_ROOT" && sha256sum "patches/$TRAINER_PATCH") ;;
    esac
}
key="$variant${toolkit:+-cuda}-$(inputs | sha256sum | cut -c1-16)"
if [ "$variant" = trainer ]; then
    echo "$key"
    exit 0
fi
build="$SWITCHYARD_CACHE/llama/$key"

# Configure and build (incrementally when the folder exists). The patched build runs cargo for
# the Rust library every time; with nothing changed, ninja and cargo do nothing.
compile() {
    local flags=("${CMAKE_FLAGS[@]}") targets=("${TARGETS[@]}")
    if [ "$variant" = patched ]; then
        flags+=(-DLLAMA_SWITCHYARD=ON "-DSWITCHYARD_ROOT=$SWITCHYARD_ROOT" "${PATCHED_FLAGS[@]}")
        targets+=("${PATCHED_TARGETS[@]}")
    fi
    if command -v ccache >/dev/null; then
        # Shared between the stock and patched builds: paths under the cache folder are hashed
        # relative to each build's cmake folder, so the files both compile are compiled once.
        flags+=(-DGGML_CCACHE=ON)
        export CCACHE_DIR="$SWITCHYARD_CACHE/ccache" CCACHE_BASEDIR="$SWITCHYARD_CACHE/llama" CCACHE_NOHASHDIR=true
    fi
    local jobs="${SWITCHYARD_BUILD_JOBS:-$(nproc)}"
    cmake -S "$build/src" -B "$build/cmake" -G Ninja "${flags[@]}" >"$build/configure.log" 2>&1 \
        || { tail -n 40 "$build/configure.log" >&2; die "cmake configure failed (log: $build/configure.log)"; }
    log "building ${targets[*]} ($variant) with $jobs jobs"
    cmake --build "$build/cmake" -j "$jobs" --target "${targets[@]}" >"$build/build.log" 2>&1 \
        || { tail -n 40 "$build/build.log" >&2; die "build failed (log: $build/build.log)"; }
    mkdir -p "$build/bin"
    # replaced by rename, so a tool still running from the old build (a test, a benchmark) keeps
    # its file and the copy does not fail with "text file busy"
    for t in "${targets[@]}"; do
        cp "$build/cmake/bin/$t" "$build/bin/.$t.tmp" && mv -f "$build/bin/.$t.tmp" "$build/bin/$t"
    done
}

if [ -f "$build/.complete" ]; then
    if [ "$variant" = patched ]; then
        log "updating cached build $key"
        compile
    else
        log "reusing cached build $key"
    fi
    echo "$build/bin"
    exit 0
fi

sdist="$(fetch_pypi llama-cpp-python==0.3.36 "$SDIST_SHA256" --no-binary :all:)"
rm -rf "$build"
mkdir -p "$build/src"
log "unpacking llama.cpp from $(basename "$sdist") into $build/src"
tar -xzf "$sdist" -C "$build/src" --strip-components=3 "llama_cpp_python-0.3.36/vendor/llama.cpp"
rm -f "$build/src/.git" # a submodule pointer into the sdist's own git folder

if [ "$variant" = patched ]; then
    command -v patch >/dev/null || die "the 'patch' program is needed (apt-get install patch)"
    # switchyard's own C++, laid out as in llama.cpp's tree; the patches then hook it in
    cp -R "$SWITCHYARD_ROOT/patches/files/." "$build/src/"
    for p in "$SWITCHYARD_ROOT"/patches/*.patch; do
        [ -e "$p" ] || continue
        log "applying $(basename "$p")"
        patch -d "$build/src" -p1 --forward --quiet < "$p" || die "$(basename "$p") does not apply to the pinned llama.cpp"
    done
fi
compile
touch "$build/.complete"
echo "$build/bin"
