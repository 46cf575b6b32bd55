#!/usr/bin/env bash
# A CUDA toolkit good enough to compile (not run) llama.cpp's CUDA backend on a machine without
# GPU or CUDA install: NVIDIA's own PyPI wheels of CUDA 13 (compiler driver, cicc, crt headers,
# runtime, CCCL, cuBLAS), sha256-checked, cached, and merged into one folder laid out as a
# toolkit (the wheels all install under nvidia/cu13/). Prints that folder.
#
# For compiling only: the GPU machines bring their own CUDA (driver and toolkit), so what is
# built here checks that the code compiles and links; a build meant to run there is made there
# (scripts/build-llama.sh --cuda ARCH with their nvcc on PATH: see docs/DEVELOPMENT.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# name==version sha256, all from pypi.org (2026-12-05)
WHEELS=(
    "nvidia-cuda-nvcc==13.5.37 f5c4f7ead5d964fb4af42bbf1e6d3ec3c1e6e9d83b53749f691d387e7fcaa3a7"
    "nvidia-nvvm==13.5.37 c41bfa362e407405163f103c2229f0765f8cc2ed7d148b754dc77f228bf7e070"
    "nvidia-cuda-crt==13.5.37 e898b7f73d3035fa89915a3f7bf3b54a73e90249746111aed295822c4729bb29"
    "nvidia-cuda-runtime==13.5.37 df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d"
    "nvidia-cuda-cccl==13.3.5.0.6 d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326"
    "nvidia-cublas==13.10.0.20 dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84"
)
key="$(printf '%s\n' "${WHEELS[@]}" | sha256sum | cut -c1-16)"
root="$SWITCHYARD_CACHE/cuda/toolkit-$key"
if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
need_space "$SWITCHYARD_CACHE" $((2 * 1024 * 1024 * 1024)) "the CUDA wheels and the toolkit made of them"
tmp="$root.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
for w in "${WHEELS[@]}"; do
    spec="${w% *}" sha="${w#* }"
    wheel="$(fetch_pypi "$spec" "$sha" --platform manylinux2014_x86_64 --only-binary :all:)"
    dir="$(unpack_wheel "$wheel")"
    [ -d "$dir/nvidia/cu13" ] || die "$(basename "$wheel"): no nvidia/cu13 folder"
    cp -al "$dir/nvidia/cu13/." "$tmp/" 2>/dev/null || cp -a "$dir/nvidia/cu13/." "$tmp/"
done
# zip archives do not keep modes; the wheels' libraries carry only their versioned names
chmod +x "$tmp"/bin/* "$tmp"/nvvm/bin/* 2>/dev/null || true
for lib in "$tmp"/lib/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
[ -d "$tmp/lib64" ] || ln -s lib "$tmp/lib64"
"$tmp/bin/nvcc" --version >/dev/null || die "the assembled nvcc does not run (see $tmp)"
mv "$tmp" "$root"
touch "$root/.complete"
echo "$root"
