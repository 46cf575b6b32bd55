#!/usr/bin/env python3
"""Golden data for the ggml (de)quantizers in plugin/src/quants, from an independent
implementation: the numpy (de)quantizers of gguf-py (ggml-org's `gguf` package, gguf/quants.py).

Made with (pip, in a venv):
    python 3.11.7
    pip install gguf==0.19.0 numpy==2.4.6

Run from anywhere:
    python3 scripts/golden/make_quant_golden.py [--ggml /path/to/ggml]

gguf-py cannot quantize to the k-quants, so their quantization goldens come from ggml's own C
reference quantizers instead, and only when --ggml points at a ggml source tree (ggml-org/ggml,
or the ggml/ folder of llama.cpp): the script then builds ggml-base there with cmake, compiles a
tiny harness (written below, it only calls quantize_row_*_ref) and runs it. Without --ggml the
existing k-quant files are left as they are. The committed ones were made from ggml-org/ggml
commit d99724f2b141fed9e1a9f402213506c081433465 with gcc 12.2 and ggml's default flags
(ggml-base is built for the baseline x86-64 ISA, so no FMA contraction).

Writes into tests/golden/quants/ (repo root), all little-endian, deterministic (fixed seed):
  <type>.bin          raw block bytes: random bytes whose f16 scale fields (d, dmin, m) are
                      overwritten with sane random f16 values (no NaN/Inf), plus a few edge
                      cases (a subnormal and a zero scale; MXFP4 exponents 0 and 1)
  <type>.f32          gguf-py's dequantization of <type>.bin (f32)
  quant_input.f32     f32 input for the quantizers (blocks of 32 with varied magnitudes, a zero
                      block, a constant block, a block with tied +/- maxima, a tiny block)
  quant_<type>.bin    gguf-py's quantization of quant_input.f32

  kquant_input.f32    f32 input for the k-quant quantizers (12 super-blocks of 256 with varied
                      distributions and edge cases)            [--ggml only]
  quant_<ktype>.bin   ggml's quantize_row_<ktype>_ref of kquant_input.f32, for
                      q2_K q3_K q4_K q5_K q6_K q8_K              [--ggml only]
  quant_q8_K.f32      ggml's dequantize_row_q8_K of quant_q8_K.bin  [--ggml only]

<type> is the ggml type name as GgmlType::name() prints it (q4_0, q2_K, iq4_xs, ...).
The files are committed; keep them tiny (the whole folder is a few tens of KB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf import quants

SEED = 0x5EED_0A17
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden", "quants")

# type -> (file name, number of blocks, byte offsets of the f16 scale fields in one block)
DEQUANT = [
    (T.F32, "f32", 64, []),
    (T.F16, "f16", 64, []),
    (T.BF16, "bf16", 64, []),
    (T.Q4_0, "q4_0", 8, [0]),
    (T.Q4_1, "q4_1", 8, [0, 2]),
    (T.Q5_0, "q5_0", 8, [0]),
    (T.Q5_1, "q5_1", 8, [0, 2]),
    (T.Q8_0, "q8_0", 8, [0]),
    (T.Q2_K, "q2_K", 3, [80, 82]),  # scales[16] qs[64] d dmin
    (T.Q3_K, "q3_K", 3, [108]),  # hmask[32] qs[64] scales[12] d
    (T.Q4_K, "q4_K", 3, [0, 2]),  # d dmin scales[12] qs[128]
    (T.Q5_K, "q5_K", 3, [0, 2]),  # d dmin scales[12] qh[32] qs[128]
    (T.Q6_K, "q6_K", 3, [208]),  # ql[128] qh[64] scales[16] d
    (T.IQ4_NL, "iq4_nl", 8, [0]),
    (T.IQ4_XS, "iq4_xs", 3, [0]),  # d scales_h scales_l[4] qs[128]
    (T.MXFP4, "mxfp4", 8, []),  # e qs[16]
]

# Types gguf-py can quantize that plugin/src/quants also quantizes (gguf-py has no Q8_K).
QUANT = [
    (T.F16, "f16"),
    (T.BF16, "bf16"),
    (T.Q4_0, "q4_0"),
    (T.Q4_1, "q4_1"),
    (T.Q5_0, "q5_0"),
    (T.Q5_1, "q5_1"),
    (T.Q8_0, "q8_0"),
    (T.MXFP4, "mxfp4"),
]


def sane_f16(rng: np.random.Generator) -> np.ndarray:
    """One random f16 with magnitude in [1e-3, 1] and a random sign, as 2 little-endian bytes."""
    mag = 10.0 ** rng.uniform(-3.0, 0.0)
    val = np.float16(mag if rng.random() < 0.5 else -mag)
    return np.frombuffer(val.astype("<f2").tobytes(), dtype=np.uint8)


def block_bytes(rng: np.random.Generator, qtype: T, n_blocks: int, f16_fields: list[int]) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        return np.frombuffer(rng.standard_normal(n_blocks).astype("<f4").tobytes(), dtype=np.uint8)
    if qtype == T.F16:
        vals = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, 3, n_blocks)).astype("<f2")
        vals[0] = np.float16(6e-8)  # a subnormal f16
        return np.frombuffer(vals.tobytes(), dtype=np.uint8)
    if qtype == T.BF16:
        f = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-20, 20, n_blocks)).astype("<f4")
        hi = (f.view("<u4") >> 16).astype("<u2")
        return np.frombuffer(hi.tobytes(), dtype=np.uint8)

    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for b in range(n_blocks):
        for off in f16_fields:
            raw[b, off : off + 2] = sane_f16(rng)
    if f16_fields:
        # edge cases: a subnormal first scale in block 0, a zero first scale in block 1
        raw[0, f16_fields[0] : f16_fields[0] + 2] = [0x03, 0x80]  # -3 * 2^-24
        raw[1, f16_fields[0] : f16_fields[0] + 2] = [0x00, 0x00]
    if qtype == T.MXFP4:
        # E8M0 exponents: the two subnormal ones, then moderate ones (no overflow to inf)
        raw[:, 0] = rng.integers(100, 150, size=n_blocks, dtype=np.uint8)
        raw[0, 0] = 0
        raw[1, 0] = 1
    return raw.reshape(-1)


def quant_input(rng: np.random.Generator) -> np.ndarray:
    blocks = []
    for scale in [1.0, 0.02, 37.0, 1e-4, 3.0, 0.5, 0.1, 2.0, 1e3, 0.7, 1e-2, 5.0]:
        blocks.append(rng.standard_normal(32) * scale)
    blocks.append(np.zeros(32))  # all zero
    blocks.append(np.full(32, 0.75))  # constant: q4_1/q5_1 get d = 0
    tied = rng.uniform(-1.0, 1.0, 32)
    tied[5], tied[20] = -1.5, 1.5  # equal |max|, the negative one first
    blocks.append(tied)
    skewed = rng.uniform(2.0, 3.0, 32)  # all positive: min > 0
    blocks.append(skewed)
    assert len(blocks) == 16  # two rows of 256
    return np.concatenate(blocks).astype(np.float32)


KQUANTS = ["q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"]

HARNESS_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "ggml-quants.h"

static void * slurp(const char * path, long * size) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
    void * buf = malloc(*size);
    if (fread(buf, 1, *size, f) != (size_t) *size) { perror(path); exit(1); }
    fclose(f);
    return buf;
}

/* usage: harness IN.f32 OUTDIR -- writes OUTDIR/quant_<type>.bin and OUTDIR/quant_q8_K.f32 */
int main(int argc, char ** argv) {
    if (argc != 3) { fprintf(stderr, "usage: harness IN.f32 OUTDIR\n"); return 1; }
    long size;
    const float * x = slurp(argv[1], &size);
    const long n = size / 4;
    const enum ggml_type types[] = { GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                                     GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_K };
    for (int i = 0; i < 6; i++) {
        const enum ggml_type t = types[i];
        const size_t bytes = ggml_row_size(t, n);
        void * q = calloc(1, bytes); /* zeroed: q8_K leaves bsums of all-zero blocks unwritten */
        switch (t) {
            case GGML_TYPE_Q2_K: quantize_row_q2_K_ref(x, q, n); break;
            case GGML_TYPE_Q3_K: quantize_row_q3_K_ref(x, q, n); break;
            case GGML_TYPE_Q4_K: quantize_row_q4_K_ref(x, q, n); break;
            case GGML_TYPE_Q5_K: quantize_row_q5_K_ref(x, q, n); break;
            case GGML_TYPE_Q6_K: quantize_row_q6_K_ref(x, q, n); break;
            default:             quantize_row_q8_K_ref(x, q, n); break;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/quant_%s.bin", argv[2], ggml_type_name(t));
        FILE * o = fopen(path, "wb");
        fwrite(q, 1, bytes, o);
        fclose(o);
        if (t == GGML_TYPE_Q8_K) {
            float * y = calloc(n, sizeof(float));
            dequantize_row_q8_K(q, y, n);
            snprintf(path, sizeof path, "%s/quant_q8_K.f32", argv[2]);
            o = fopen(path, "wb");
            fwrite(y, sizeof(float), n, o);
            fclose(o);
            free(y);
        }
        free(q);
    }
    return 0;
}
"""


def kquant_input(rng: np.random.Generator) -> np.ndarray:
    """12 super-blocks of 256: realistic weights and the edge cases of the k-quant searches."""
    sb = []
    sb.append(rng.standard_normal(256) * np.repeat([0.01, 0.1, 1.0, 3.0, 0.001, 0.5, 0.02, 2.0], 32))
    sb.append(rng.uniform(-1.0, 1.0, 256))
    sb.append(rng.standard_normal(256) ** 3 * 0.05)  # heavy tails
    w = rng.standard_normal(256) * 0.02
    w[rng.integers(0, 256, 4)] = rng.standard_normal(4) * 0.5  # weights with outliers
    sb.append(w)
    sp = rng.standard_normal(256) * 0.02
    sp[rng.random(256) < 0.4] = 0.0  # sparse
    sb.append(sp)
    sb.append(1.0 + rng.uniform(0.0, 1.0, 256) * np.repeat(np.arange(16) % 4, 16))  # all positive
    sb.append(-3.0 + rng.uniform(0.0, 0.5, 256))  # all negative
    sb.append(np.zeros(256))  # all zero
    sb.append(np.full(256, -0.25))  # constant
    sb.append(rng.standard_normal(256) * 1e-20)  # below GROUP_MAX_EPS-ish, scales underflow f16
    spike = np.zeros(256)
    spike[77] = 1.0  # a single non-zero value
    sb.append(spike)
    sb.append(rng.standard_normal(256) * 1e3)  # large
    return np.concatenate(sb).astype(np.float32)


def make_kquant_golden(ggml: str, rng: np.random.Generator) -> None:
    ggml = os.path.abspath(ggml)
    x = kquant_input(rng)
    write("kquant_input.f32", x.astype("<f4").tobytes())
    with tempfile.TemporaryDirectory() as tmp:
        build = os.path.join(tmp, "build")
        subprocess.run(
            ["cmake", "-S", ggml, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
             "-DGGML_NATIVE=OFF", "-DGGML_CPU=OFF", "-DGGML_BUILD_TESTS=OFF", "-DGGML_BUILD_EXAMPLES=OFF"],
            check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", build, "--target", "ggml-base", "-j", str(os.cpu_count() or 2)],
                       check=True, stdout=subprocess.DEVNULL)
        libs = [os.path.join(root, f) for root, _, files in os.walk(build) for f in files if f == "libggml-base.a"]
        assert libs, "libggml-base.a not built"
        src = os.path.join(tmp, "harness.c")
        with open(src, "w") as f:
            f.write(HARNESS_C)
        exe = os.path.join(tmp, "harness")
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-I", os.path.join(ggml, "include"), "-I", os.path.join(ggml, "src"), src, libs[0],
                        "-lstdc++", "-lm", "-lpthread", "-fopenmp", "-o", exe], check=True)
        subprocess.run([exe, os.path.join(OUT, "kquant_input.f32"), OUT], check=True)
    for name in KQUANTS:
        assert os.path.exists(os.path.join(OUT, f"quant_{name}.bin")), name


def write(name: str, data: bytes) -> None:
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ggml", help="ggml source tree: also make the k-quant quantization goldens")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)

    for qtype, name, n_blocks, fields in DEQUANT:
        raw = block_bytes(rng, qtype, n_blocks, fields)
        out = quants.dequantize(raw, qtype).astype("<f4", copy=False).reshape(-1)
        assert np.all(np.isfinite(out)), name
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert raw.size == n_blocks * type_size and out.size == n_blocks * block_size, name
        write(f"{name}.bin", raw.tobytes())
        write(f"{name}.f32", out.tobytes())

    x = quant_input(rng)
    write("quant_input.f32", x.astype("<f4").tobytes())
    for qtype, name in QUANT:
        q = quants.quantize(x, qtype)
        if q.dtype == np.float16:  # gguf-py returns F16 as an f16 array
            q = q.astype("<f2")
        write(f"quant_{name}.bin", q.tobytes())

    if args.ggml:
        if shutil.which("cmake") is None:
            sys.exit("--ggml needs cmake and a C compiler")
        # a separate generator, so that the files above do not depend on whether --ggml is given
        make_kquant_golden(args.ggml, np.random.default_rng(SEED + 1))
    else:
        print("k-quant quantization goldens left as they are (pass --ggml to remake them)")

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, into {os.path.normpath(OUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
