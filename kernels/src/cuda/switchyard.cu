// switchyard's CUDA kernels. Compiled at run time with NVRTC (src/compile.rs), and for sm_80
// and sm_90 without a GPU by scripts/check-kernels.sh. No CUDA headers are included, so NVRTC
// needs nothing but itself: f16/bf16 conversions are the PTX instructions.
//
// Every kernel mirrors a CPU reference in the `switchyard` crate bit for bit (for NaN-free
// weights: the PTX conversions give a canonical NaN, and fmaxf skips NaN) where the CPU
// result is exact (decoding, conversion, quantization: products and sums are rounded separately
// with __fmul_rn/__fadd_rn so the compiler cannot fuse them into FMAs the CPU does not do) and to
// a tight tolerance where the order of a sum differs (the matrix-vector products).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// ggml type ids (enum ggml_type) the kernels read
#define SY_F32 0
#define SY_F16 1
#define SY_Q4_0 2
#define SY_Q4_1 3
#define SY_Q8_0 8
#define SY_BF16 30

__device__ __forceinline__ float sy_f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 sy_f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float sy_bf16_to_f32(u16 h) {
    return __uint_as_float(((u32) h) << 16);
}

__device__ __forceinline__ u16 sy_f32_to_bf16(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ u16 sy_load_u16(const u8 * p) {
    return (u16) (p[0] | (p[1] << 8));
}

// Element i of a row of ggml type `ty` (rows start on block boundaries), as ggml's reference
// dequantization computes it.
__device__ __forceinline__ float sy_dequant(int ty, const u8 * row, long long i) {
    switch (ty) {
        case SY_F32: return ((const float *) row)[i];
        case SY_F16: return sy_f16_to_f32(((const u16 *) row)[i]);
        case SY_BF16: return sy_bf16_to_f32(((const u16 *) row)[i]);
        case SY_Q8_0: {
            const u8 * b = row + (i / 32) * 34;
            return __fmul_rn((float) (i8) b[2 + i % 32], sy_f16_to_f32(sy_load_u16(b)));
        }
        case SY_Q4_0: {
            const u8 * b = row + (i / 32) * 18;
            const int j = (int) (i % 32);
            const int q = j < 16 ? (b[2 + j] & 0x0F) : (b[2 + j - 16] >> 4);
            return __fmul_rn((float) (q - 8), sy_f16_to_f32(sy_load_u16(b)));
        }
        case SY_Q4_1: {
            const u8 * b = row + (i / 32) * 20;
            const int j = (int) (i % 32);
            const int q = j < 16 ? (b[4 + j] & 0x0F) : (b[4 + j - 16] >> 4);
            return __fadd_rn(__fmul_rn((float) q, sy_f16_to_f32(sy_load_u16(b))), sy_f16_to_f32(sy_load_u16(b + 2)));
        }
        default: return __int_as_float(0x7fc00000); // refused by the launcher before any launch
    }
}

// Bytes of one row of n elements of type ty.
__device__ __forceinline__ long long sy_row_bytes(int ty, long long n) {
    switch (ty) {
        case SY_F32: return n * 4;
        case SY_F16:
        case SY_BF16: return n * 2;
        case SY_Q8_0: return n / 32 * 34;
        case SY_Q4_0: return n / 32 * 18;
        case SY_Q4_1: return n / 32 * 20;
        default: return 0;
    }
}

// Code k (0..7) of an 8-code unit packed little-endian in `bits` bytes at p (plugin/src/codec/bitpack.rs).
__device__ __forceinline__ int sy_code(const u8 * p, int bits, int k) {
    u32 v = p[0];
    if (bits >= 2) v |= (u32) p[1] << 8;
    if (bits >= 3) v |= (u32) p[2] << 16;
    if (bits >= 4) v |= (u32) p[3] << 24;
    return (int) ((v >> (k * bits)) & ((1u << bits) - 1));
}

// One expert's compressed delta of one matrix (codec::CompressedDelta): codes, one f16 step per
// `group` input channels of each row (group = n_in, one per row; step_per_matrix: one in all),
// and the salient channels' values (f16, or int8 with an f16 step per channel).
struct sy_delta {
    const u8 * codes;
    const u16 * steps;
    const u32 * sal_idx;
    const u16 * sal_f16;  // [n_out][n_sal] or NULL
    const i8 * sal_q8;    // [n_out][n_sal] or NULL
    const u16 * sal_step; // [n_sal] with sal_q8
    int bits;
    int group;
    int step_per_matrix;
    int n_sal;
};

__device__ __forceinline__ float sy_step(const sy_delta & d, int n_in, int r, int c) {
    if (d.step_per_matrix) return sy_f16_to_f32(d.steps[0]);
    const int groups = (n_in + d.group - 1) / d.group;
    return sy_f16_to_f32(d.steps[(long long) r * groups + c / d.group]);
}

__device__ __forceinline__ float sy_salient(const sy_delta & d, int r, int k) {
    const long long at = (long long) r * d.n_sal + k;
    if (d.sal_f16) return sy_f16_to_f32(d.sal_f16[at]);
    return __fmul_rn((float) d.sal_q8[at], sy_f16_to_f32(d.sal_step[k]));
}

// W_base + D of row r, channel c, as codec::decompress::add_delta_row computes it.
template <typename Store>
__device__ void sy_decompress_row(int base_ty, const u8 * base, sy_delta d, int n_in, int r, Store store) {
    const u8 * base_row = base + (long long) r * sy_row_bytes(base_ty, n_in);
    const u8 * code_row = d.codes + (long long) r * (n_in / 8) * d.bits;
    const float half = (float) ((1 << d.bits) - 1) * 0.5f;
    for (int u = threadIdx.x; u < n_in / 8; u += blockDim.x) {
        const u8 * unit = code_row + u * d.bits;
        for (int k = 0; k < 8; k++) {
            const int c = u * 8 + k;
            const float level = (float) sy_code(unit, d.bits, k) - half;
            store(c, __fadd_rn(sy_dequant(base_ty, base_row, c), __fmul_rn(sy_step(d, n_in, r, c), level)));
        }
    }
    __syncthreads(); // salient channels replace the coded value written above
    for (int k = threadIdx.x; k < d.n_sal; k += blockDim.x) {
        const int c = (int) d.sal_idx[k];
        store(c, __fadd_rn(sy_dequant(base_ty, base_row, c), sy_salient(d, r, k)));
    }
}

// decompress-and-add: out[r] = W_base[r] + D[r], one block per row.
#define SY_DECOMPRESS_KERNEL(NAME, T, CONVERT)                                                       \
    extern "C" __global__ void NAME(int base_ty, const u8 * base, sy_delta d, int n_in, T * out) {    \
        const int r = blockIdx.x;                                                                     \
        T * row = out + (long long) r * n_in;                                                        \
        sy_decompress_row(base_ty, base, d, n_in, r, [&](int c, float v) { row[c] = CONVERT(v); });   \
    }

__device__ __forceinline__ float sy_identity(float v) { return v; }

SY_DECOMPRESS_KERNEL(sy_decompress_add_f32, float, sy_identity)
SY_DECOMPRESS_KERNEL(sy_decompress_add_f16, u16, sy_f32_to_f16)
SY_DECOMPRESS_KERNEL(sy_decompress_add_bf16, u16, sy_f32_to_bf16)

// f32 -> Q8_0, one thread per block of 32, as ggml's quantize_row_q8_0_ref computes it: a Q8_0
// weight is decompressed to f32 first, then quantized (no shared-memory row, so no size limit).
extern "C" __global__ void sy_quantize_q8_0(const float * src, long long n_blocks, u8 * dst) {
    for (long long b = (long long) blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks; b += (long long) gridDim.x * blockDim.x) {
        const float * x = src + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float scale = __fdiv_rn(amax, 127.0f);
        const float inv = scale != 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
        u8 * blk = dst + b * 34;
        const u16 h = sy_f32_to_f16(scale);
        blk[0] = (u8) (h & 0xFF);
        blk[1] = (u8) (h >> 8);
        for (int j = 0; j < 32; j++) blk[2 + j] = (u8) (i8) roundf(__fmul_rn(x[j], inv));
    }
}

// Transcoding for expert caches: n elements of ggml type `ty` to f16 (rows of n_in elements).
extern "C" __global__ void sy_dequantize_f16(int ty, const u8 * src, int n_in, long long n, u16 * dst) {
    for (long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long) gridDim.x * blockDim.x) {
        const long long r = i / n_in;
        dst[i] = sy_f32_to_f16(sy_dequant(ty, src + r * sy_row_bytes(ty, n_in), i % n_in));
    }
}

#define SY_TILE 8 // tokens per pass over a weight row

__device__ __forceinline__ float sy_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// y[t][o] = W[o] . x[t] for every token: the base part of a mixed-expert matmul, run once for
// the whole batch. W is f16 [n_out][n_in]; x and y are f32, [n_tok][n_in] and [n_tok][n_out].
// One warp per output row; each weight element is loaded once per tile of SY_TILE tokens.
extern "C" __global__ void sy_matmul_f16(const u16 * w, const float * x, float * y, int n_in, int n_out, int n_tok) {
    const int o = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (o >= n_out) return;
    const u16 * row = w + (long long) o * n_in;
    for (int t0 = 0; t0 < n_tok; t0 += SY_TILE) {
        float acc[SY_TILE] = {0};
        for (int i = lane; i < n_in; i += 32) {
            const float wi = sy_f16_to_f32(row[i]);
            for (int t = 0; t < SY_TILE && t0 + t < n_tok; t++) acc[t] += wi * x[(long long) (t0 + t) * n_in + i];
        }
        for (int t = 0; t < SY_TILE && t0 + t < n_tok; t++) {
            const float s = sy_warp_sum(acc[t]);
            if (lane == 0) y[(long long) (t0 + t) * n_out + o] = s;
        }
    }
}

// y[t][o] += D[o] . x[t] for the tokens [t_begin, t_end) that run one expert: the delta part of a
// mixed-expert matmul, read compressed (codes, steps, salient values) and never materialized.
extern "C" __global__ void sy_delta_matmul(sy_delta d, const float * x, float * y, int n_in, int n_out, int t_begin, int t_end) {
    const int o = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (o >= n_out) return;
    const u8 * code_row = d.codes + (long long) o * (n_in / 8) * d.bits;
    const float half = (float) ((1 << d.bits) - 1) * 0.5f;
    for (int t0 = t_begin; t0 < t_end; t0 += SY_TILE) {
        float acc[SY_TILE] = {0};
        for (int u = lane; u < n_in / 8; u += 32) {
            const u8 * unit = code_row + u * d.bits;
            const float step = sy_step(d, n_in, o, u * 8); // groups hold whole units
            for (int k = 0; k < 8; k++) {
                const int c = u * 8 + k;
                const float dw = step * ((float) sy_code(unit, d.bits, k) - half);
                for (int t = 0; t < SY_TILE && t0 + t < t_end; t++) acc[t] += dw * x[(long long) (t0 + t) * n_in + c];
            }
        }
        // salient channels: their value replaces the coded one
        for (int k = lane; k < d.n_sal; k += 32) {
            const int c = (int) d.sal_idx[k];
            const float coded = sy_step(d, n_in, o, c) * ((float) sy_code(code_row + (c / 8) * d.bits, d.bits, c % 8) - half);
            const float fix = sy_salient(d, o, k) - coded;
            for (int t = 0; t < SY_TILE && t0 + t < t_end; t++) acc[t] += fix * x[(long long) (t0 + t) * n_in + c];
        }
        for (int t = 0; t < SY_TILE && t0 + t < t_end; t++) {
            const float s = sy_warp_sum(acc[t]);
            if (lane == 0) y[(long long) (t0 + t) * n_out + o] += s;
        }
    }
}
