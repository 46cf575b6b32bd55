//! The k-quants: 256-element super-blocks (QK_K) with sub-block scales.
//!
//! Layouts (ggml-common.h), all little-endian:
//! - block_q2_K (84 B):  u8 scales[16] (lo nibble scale, hi nibble min); u8 qs[64]; f16 d, dmin
//! - block_q3_K (110 B): u8 hmask[32]; u8 qs[64]; u8 scales[12] (16 x 6 bit); f16 d
//! - block_q4_K (144 B): f16 d, dmin; u8 scales[12] (8 x 6-bit scale + 8 x 6-bit min); u8 qs[128]
//! - block_q5_K (176 B): f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//! - block_q6_K (210 B): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
//! - block_q8_K (292 B): f32 d; i8 qs[256]; i16 bsums[16]

use super::{arr, arr_mut, f16_le, nearest_int};
use crate::ggml_type::QK_K;

// ---- dequantization ------------------------------------------------------------------------

pub(super) fn dequant_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 84] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let scales: &[u8; 16] = arr(&b[..16]);
        let d = f16_le(b[80], b[81]);
        let dmin = f16_le(b[82], b[83]);
        for n in 0..2 {
            let q: &[u8; 32] = arr(&b[16 + 32 * n..16 + 32 * n + 32]);
            let yn: &mut [f32; 128] = arr_mut(&mut y[128 * n..128 * n + 128]);
            for j in 0..4 {
                let shift = 2 * j;
                for h in 0..2 {
                    let sc = scales[8 * n + 2 * j + h];
                    let dl = d * (sc & 0xF) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    let q: &[u8; 16] = arr(&q[16 * h..16 * h + 16]);
                    let out: &mut [f32; 16] = arr_mut(&mut yn[32 * j + 16 * h..32 * j + 16 * h + 16]);
                    for l in 0..16 {
                        out[l] = dl * ((q[l] >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// The sixteen 6-bit Q3_K scales, already minus 32.
#[inline(always)]
pub(super) fn q3_k_scales(raw: &[u8; 12]) -> [i32; 16] {
    let mut sc = [0i32; 16];
    for (is, s) in sc.iter_mut().enumerate() {
        let low = if is < 8 { raw[is] & 0xF } else { raw[is - 8] >> 4 };
        let high = (raw[8 + is % 4] >> (2 * (is / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    sc
}

pub(super) fn dequant_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 110] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let hm: &[u8; 32] = arr(&b[..32]);
        let sc = q3_k_scales(arr(&b[96..108]));
        let d_all = f16_le(b[108], b[109]);
        for n in 0..2 {
            let q: &[u8; 32] = arr(&b[32 + 32 * n..32 + 32 * n + 32]);
            let yn: &mut [f32; 128] = arr_mut(&mut y[128 * n..128 * n + 128]);
            for j in 0..4 {
                let shift = 2 * j;
                let m = 1u8 << (4 * n + j);
                for h in 0..2 {
                    let dl = d_all * sc[8 * n + 2 * j + h] as f32;
                    let q: &[u8; 16] = arr(&q[16 * h..16 * h + 16]);
                    let hm: &[u8; 16] = arr(&hm[16 * h..16 * h + 16]);
                    let out: &mut [f32; 16] = arr_mut(&mut yn[32 * j + 16 * h..32 * j + 16 * h + 16]);
                    for l in 0..16 {
                        let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        out[l] = dl * v as f32;
                    }
                }
            }
        }
    }
}

/// ggml's get_scale_min_k4: the j-th (scale, min) pair of the Q4_K / Q5_K 12-byte field.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub(super) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 144] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let min = f16_le(b[2], b[3]);
        let scales: &[u8; 12] = arr(&b[4..16]);
        for jj in 0..4 {
            let q: &[u8; 32] = arr(&b[16 + 32 * jj..16 + 32 * jj + 32]);
            let (sc, m) = scale_min_k4(2 * jj, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * jj + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let out: &mut [f32; 64] = arr_mut(&mut y[64 * jj..64 * jj + 64]);
            for l in 0..32 {
                out[l] = d1 * (q[l] & 0xF) as f32 - m1;
                out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub(super) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 176] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let min = f16_le(b[2], b[3]);
        let scales: &[u8; 12] = arr(&b[4..16]);
        let qh: &[u8; 32] = arr(&b[16..48]);
        for jj in 0..4 {
            let ql: &[u8; 32] = arr(&b[48 + 32 * jj..48 + 32 * jj + 32]);
            let u1 = 1u8 << (2 * jj);
            let u2 = 2u8 << (2 * jj);
            let (sc, m) = scale_min_k4(2 * jj, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * jj + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let out: &mut [f32; 64] = arr_mut(&mut y[64 * jj..64 * jj + 64]);
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                out[l] = d1 * ((ql[l] & 0xF) as i32 + h1) as f32 - m1;
                out[l + 32] = d2 * ((ql[l] >> 4) as i32 + h2) as f32 - m2;
            }
        }
    }
}

pub(super) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 210] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let d = f16_le(b[208], b[209]);
        for n in 0..2 {
            let ql: &[u8; 64] = arr(&b[64 * n..64 * n + 64]);
            let qh: &[u8; 32] = arr(&b[128 + 32 * n..128 + 32 * n + 32]);
            let sc: &[u8; 8] = arr(&b[192 + 8 * n..192 + 8 * n + 8]);
            let yn: &mut [f32; 128] = arr_mut(&mut y[128 * n..128 * n + 128]);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // ggml: y = d * sc[is] * q, i.e. (d * sc) * q
                yn[l] = d * sc[is] as i8 as f32 * q1 as f32;
                yn[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                yn[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                yn[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
}

pub(super) fn dequant_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(292).zip(dst.chunks_exact_mut(QK_K)) {
        let b: &[u8; 292] = arr(b);
        let y: &mut [f32; QK_K] = arr_mut(y);
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let qs: &[u8; QK_K] = arr(&b[4..4 + QK_K]);
        for j in 0..QK_K {
            y[j] = d * qs[j] as i8 as f32;
        }
    }
}

// ---- quantization --------------------------------------------------------------------------

/// quantize_row_q8_K_ref. Unlike ggml, an all-zero block also gets zero `bsums` (ggml leaves
/// them unwritten there).
pub(super) fn quant_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 292] = arr_mut(b);
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (j, g) in qs.chunks_exact(16).enumerate() {
            let sum: i32 = g.iter().map(|&q| q as i32).sum();
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        for (o, q) in b[4..4 + QK_K].iter_mut().zip(qs) {
            *o = q as u8;
        }
        b[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
