//! The 32-element "legacy" quants: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layouts (ggml-common.h), all little-endian:
//! - block_q4_0 (18 B): f16 d; u8 qs[16]          x = (q - 8) * d
//! - block_q4_1 (20 B): f16 d, m; u8 qs[16]       x = q * d + m
//! - block_q5_0 (22 B): f16 d; u8 qh[4]; qs[16]   x = (q - 16) * d
//! - block_q5_1 (24 B): f16 d, m; qh[4]; qs[16]   x = q * d + m
//! - block_q8_0 (34 B): f16 d; i8 qs[32]          x = q * d
//!
//! In the 4/5-bit blocks, byte j holds element j in its low nibble and element j + 16 in its
//! high nibble; bit j of the 32-bit qh is the fifth bit of element j.

use super::{arr, arr_mut, f16_bytes, f16_le};

const QK: usize = 32;

// ---- dequantization ------------------------------------------------------------------------

pub(super) fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 18] = arr(b);
        let y: &mut [f32; QK] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let qs: &[u8; 16] = arr(&b[2..]);
        for j in 0..16 {
            let x0 = (qs[j] & 0x0F) as i32 - 8;
            let x1 = (qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

pub(super) fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { dequant_q4_1_avx2(src, dst) };
        return;
    }
    dequant_q4_1_portable(src, dst)
}

/// The reference the SIMD path must match bit for bit (tests compare them).
pub(super) fn dequant_q4_1_portable(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 20] = arr(b);
        let y: &mut [f32; QK] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        let qs: &[u8; 16] = arr(&b[4..]);
        for j in 0..16 {
            let x0 = (qs[j] & 0x0F) as i32;
            let x1 = (qs[j] >> 4) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

/// Q4_1 with AVX2: 8 values per step, multiply then add as the scalar path (no FMA), so the
/// results are bit-identical; d and m converted together with one F16C instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dequant_q4_1_avx2(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let low = _mm_set1_epi8(0x0F);
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        // SAFETY: b is 20 bytes and y 32 floats (chunks_exact); every load and store below
        // stays inside them.
        unsafe {
            let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            let d = _mm256_set1_ps(_mm_cvtss_f32(scales));
            let m = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps::<0b01>(scales, scales)));
            let qs = _mm_loadu_si128(b.as_ptr().add(4).cast::<__m128i>());
            let lo = _mm_and_si128(qs, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), low);
            let out = y.as_mut_ptr();
            for (k, q) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)].into_iter().enumerate() {
                let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                _mm256_storeu_ps(out.add(8 * k), _mm256_add_ps(_mm256_mul_ps(x, d), m));
            }
        }
    }
}

pub(super) fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 22] = arr(b);
        let y: &mut [f32; QK] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs: &[u8; 16] = arr(&b[6..]);
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] & 0x0F) as u32 | xh0) as i32 - 16;
            let x1 = ((qs[j] >> 4) as u32 | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

pub(super) fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 24] = arr(b);
        let y: &mut [f32; QK] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs: &[u8; 16] = arr(&b[8..]);
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] & 0x0F) as u32 | xh0) as i32;
            let x1 = ((qs[j] >> 4) as u32 | xh1) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

pub(super) fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let b: &[u8; 34] = arr(b);
        let y: &mut [f32; QK] = arr_mut(y);
        let d = f16_le(b[0], b[1]);
        let qs: &[u8; QK] = arr(&b[2..]);
        for j in 0..QK {
            y[j] = qs[j] as i8 as f32 * d;
        }
    }
}

// ---- quantization (the *_ref routines) -----------------------------------------------------

/// (max |x|, the x that has it; first one on ties), as the symmetric quantizers scan.
#[inline(always)]
fn abs_max_signed(x: &[f32; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// (min, max) starting from (FLT_MAX, -FLT_MAX), as the asymmetric quantizers scan.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub(super) fn quant_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let x: &[f32; QK] = arr(x);
        let b: &mut [u8; 18] = arr_mut(b);
        let max = abs_max_signed(x);
        let d = max / -8.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        let qs: &mut [u8; 16] = arr_mut(&mut b[2..]);
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[j + 16] * id;
            // (int8_t)(v + 8.5f) truncates toward zero, then MIN(15, ...)
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub(super) fn quant_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let x: &[f32; QK] = arr(x);
        let b: &mut [u8; 20] = arr_mut(b);
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(min));
        let qs: &mut [u8; 16] = arr_mut(&mut b[4..]);
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + 16] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub(super) fn quant_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let x: &[f32; QK] = arr(x);
        let b: &mut [u8; 22] = arr_mut(b);
        let max = abs_max_signed(x);
        let d = max / -16.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        let mut qh = 0u32;
        let qs: &mut [u8; 16] = arr_mut(&mut b[6..]);
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[j + 16] * id;
            let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
            let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
            qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub(super) fn quant_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let x: &[f32; QK] = arr(x);
        let b: &mut [u8; 24] = arr_mut(b);
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(min));
        let mut qh = 0u32;
        let qs: &mut [u8; 16] = arr_mut(&mut b[8..]);
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + 16] - min) * id;
            // ggml casts straight to uint8_t here (no MIN); the value never exceeds 31.5
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

pub(super) fn quant_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let x: &[f32; QK] = arr(x);
        let b: &mut [u8; 34] = arr_mut(b);
        let mut amax = 0.0f32;
        for &v in x {
            // MAX(amax, fabsf(v)) == (amax > |v| ? amax : |v|)
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        let qs: &mut [u8; QK] = arr_mut(&mut b[2..]);
        for j in 0..QK {
            // roundf: half away from zero
            qs[j] = (x[j] * id).round() as i8 as u8;
        }
    }
}
