//! Codebook (non-linear) 4-bit types: IQ4_NL, IQ4_XS and MXFP4.
//!
//! Layouts (ggml-common.h), all little-endian:
//! - block_iq4_nl (18 B):  f16 d; u8 qs[16]                      x = d * K[q]
//! - block_iq4_xs (136 B): f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]
//!   (eight 32-element sub-blocks, 6-bit scale ls, x = d * (ls - 32) * K[q])
//! - block_mxfp4 (17 B):   u8 e (E8M0 exponent); u8 qs[16]        x = E2M1[q] * 2^(e-128)
//!
//! As in the legacy quants, byte j holds element j (low nibble) and element j + 16 (high nibble)
//! of each 32-element group.

use super::{arr, arr_mut, f16_le};
use crate::ggml_type::QK_K;

/// kvalues_iq4nl of ggml.
const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// kvalues_mxfp4 of ggml: the E2M1 values, doubled (the scale is halved to match).
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

pub(super) fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let b: &[u8; 18] = arr(b);
        let y: &mut [f32; 32] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let qs: &[u8; 16] = arr(&b[2..]);
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

pub(super) fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 136] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let scales_h = u16::from_le_bytes([b[2], b[3]]) as i32;
        let scales_l: &[u8; 4] = arr(&b[4..8]);
        for ib in 0..QK_K / 32 {
            let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32 | (((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let qs: &[u8; 16] = arr(&b[8 + 16 * ib..8 + 16 * ib + 16]);
            let out: &mut [f32; 32] = arr_mut(&mut y[32 * ib..32 * ib + 32]);
            for j in 0..16 {
                out[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                out[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// GGML_E8M0_TO_FP32_HALF: 2^(e - 127) / 2, with the two smallest exponents as subnormals.
#[inline(always)]
fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { (e as u32 - 1) << 23 };
    f32::from_bits(bits)
}

pub(super) fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(17).zip(dst.chunks_exact_mut(32)) {
        let b: &[u8; 17] = arr(b);
        let y: &mut [f32; 32] = arr_mut(y);
        let d = e8m0_to_f32_half(b[0]);
        let qs: &[u8; 16] = arr(&b[1..]);
        for j in 0..16 {
            y[j] = KVALUES_MXFP4[(qs[j] & 0xF) as usize] as f32 * d;
            y[j + 16] = KVALUES_MXFP4[(qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

/// best_index_mxfp4: the first codebook entry with the smallest |K[i] * d - x|.
#[inline(always)]
fn best_index_mxfp4(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// quantize_row_mxfp4_ref.
pub(super) fn quant_mxfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        let x: &[f32; 32] = arr(x);
        let b: &mut [u8; 17] = arr_mut(b);
        let mut amax = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        // (uint8_t)(floorf(log2f(amax)) - 2 + 127), computed in f32 like ggml
        let e = if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
        let d = e8m0_to_f32_half(e);
        b[0] = e;
        for j in 0..16 {
            b[1 + j] = best_index_mxfp4(x[j], d) | (best_index_mxfp4(x[j + 16], d) << 4);
        }
    }
}
