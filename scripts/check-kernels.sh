#!/usr/bin/env bash
# Compile every CUDA kernel for sm_80 and sm_90 on a machine without GPU or CUDA toolkit: NVRTC
# from the PyPI wheel nvidia-cuda-nvrtc-cu12 (the library the runtime loads) and ptxas from
# nvidia-cuda-nvcc-cu12, both sha256-checked and cached. Prints one line per kernel and
# architecture with registers and spills, then "N kernels compiled".
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NVRTC_SHA256=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
NVCC_SHA256=5d6a0d32fdc7ea39917c20065614ae93add6f577d840233237ff08e9a38f58f0
wheel_args=(--platform manylinux2014_x86_64 --only-binary :all:)

nvrtc="$(unpack_wheel "$(fetch_pypi nvidia-cuda-nvrtc-cu12==12.9.86 "$NVRTC_SHA256" "${wheel_args[@]}")")"
nvcc="$(unpack_wheel "$(fetch_pypi nvidia-cuda-nvcc-cu12==12.9.86 "$NVCC_SHA256" "${wheel_args[@]}")")"
ptxas="$nvcc/nvidia/cuda_nvcc/bin/ptxas"
chmod +x "$ptxas" # zip files do not keep the mode

(cd "$SWITCHYARD_ROOT" && cargo build --release --quiet -p switchyard-kernels --bin switchyard-check-kernels) >&2
LD_LIBRARY_PATH="$nvrtc/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$SWITCHYARD_ROOT/target/release/switchyard-check-kernels" --ptxas "$ptxas" --arch 80 --arch 90
