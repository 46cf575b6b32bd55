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
    let mut buf = [f16::ZERO; BUF];
    for (b, y) in src.chunks(2 * BUF).zip(dst.chunks_mut(BUF)) {
        let h = &mut buf[..y.len()];
        for (h, c) in h.iter_mut().zip(b.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        h.convert_to_f32_slice(y);
    }
}

/// f32 -> F16, round to nearest even (what ggml_fp32_to_fp16_row does).
pub(super) fn quant_f16(src: &[f32], dst: &mut [u8]) {
    let mut buf = [f16::ZERO; BUF];
    for (x, b) in src.chunks(BUF).zip(dst.chunks_mut(2 * BUF)) {
        let h = &mut buf[..x.len()];
        h.convert_from_f32_slice(x);
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
