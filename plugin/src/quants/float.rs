//! F32, F16 and BF16 rows (little-endian bytes <-> f32).

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Elements converted per round through the stack buffer of the F16 paths.
const BUF: usize = 512;

pub(super) fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes(*super::arr(b));
    }
}

pub(super) fn quant_f32(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// F16 -> f32 through half's slice conversion (F16C / NEON when the CPU has them). The bytes
/// need not be 2-aligned: they go through a small stack buffer of `f16`s first.
pub(super) fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { dequant_f16_f16c(src, dst) };
        return;
    }
    dequant_f16_portable(src, dst)
}

/// The reference the F16C path must match bit for bit (tests compare them).
pub(super) fn dequant_f16_portable(src: &[u8], dst: &mut [f32]) {
    let mut buf = [f16::ZERO; BUF];
    for (b, y) in src.chunks(2 * BUF).zip(dst.chunks_mut(BUF)) {
        let h = &mut buf[..y.len()];
        for (h, c) in h.iter_mut().zip(b.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        h.convert_to_f32_slice(y);
    }
}

/// f32 -> f16, round to nearest even. With F16C (checked once at run time) 8 values per
/// instruction; `half`'s own slice conversion checks the CPU on every call and converts 4.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { f32_to_f16_f16c(src, dst) };
        return;
    }
    dst.convert_from_f32_slice(src);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT};
    let n = src.len().min(dst.len());
    let main = n / 8 * 8;
    for i in (0..main).step_by(8) {
        // SAFETY: i + 8 <= main <= both lengths; unaligned loads and stores.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
        }
    }
    dst[main..n].convert_from_f32_slice(&src[main..n]);
}

/// F16 bytes -> f32, 8 values per instruction, straight from the (possibly unaligned) bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
pub(super) unsafe fn dequant_f16_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = dst.len().min(src.len() / 2);
    let main = n / 8 * 8;
    for i in (0..main).step_by(8) {
        // SAFETY: i + 8 <= main: 16 readable bytes at src[2i..], 8 writable floats at dst[i..].
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i).cast::<__m128i>());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for (b, y) in src[2 * main..2 * n].chunks_exact(2).zip(&mut dst[main..n]) {
        *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// f32 -> F16, round to nearest even (what ggml_fp32_to_fp16_row does).
pub(super) fn quant_f16(src: &[f32], dst: &mut [u8]) {
    let mut buf = [f16::ZERO; BUF];
    for (x, b) in src.chunks(BUF).zip(dst.chunks_mut(2 * BUF)) {
        let h = &mut buf[..x.len()];
        f32_to_f16(x, h);
        for (h, c) in h.iter().zip(b.chunks_exact_mut(2)) {
            c.copy_from_slice(&h.to_bits().to_le_bytes());
        }
    }
}

/// BF16 -> f32 is a plain 16-bit shift, as in ggml (no NaN quieting).
pub(super) fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// ggml_compute_fp32_to_bf16: NaNs are forced quiet, everything else rounds to nearest even.
#[inline(always)]
pub(super) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        ((u >> 16) | 64) as u16
    } else {
        (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
    }
}

pub(super) fn quant_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}
