//! Quantization to the k-quants, following ggml's reference quantizers (`quantize_row_q2_K_ref`
//! ... `quantize_row_q6_K_ref`, i.e. what `llama-quantize` does without an importance matrix):
//! the same scale searches (make_qkx2_quants, make_qx_quants, make_q3_quants), the same float
//! operation order, and the same integer truncations, so the bytes are identical to ggml's
//! when ggml is built without floating-point contraction (the default on x86-64, where the
//! reference code is compiled for the baseline ISA without FMA).
//!
//! Block layouts are described in `kquants.rs`.

use super::{arr, arr_mut, f16_bytes, f16_le, nearest_int};
use crate::ggml_type::QK_K;

/// GROUP_MAX_EPS of ggml-quants.c: groups whose max |x| is below this count as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// make_qkx2_quants: an asymmetric (scale, min) fit of `x` to levels 0..=nmax minimising the
/// weighted error, trying `nstep + 1` scales around the plain min/max one. Writes the levels to
/// `l`, returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (weights, l, laux) = (&weights[..n], &mut l[..n], &mut laux[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, qf) = (weights[i], q as f32);
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// make_qx_quants with rmse_type 1 and no importance weights (weights x^2): a symmetric fit of
/// `x` to levels -nmax..nmax-1, searching 18 scales around -nmax / max. Writes level + nmax to
/// `l`, returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let w = x[i] * x[i];
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x.iter() {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let qf = q as f32;
            sumlx += w * v * qf;
            suml2 += w * qf * qf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (nmax + nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// make_q3_quants with do_rmse: a symmetric fit to levels -nmax..nmax-1 refined by up to five
/// rounds of coordinate descent. Writes level + nmax to `l`, returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    let mut li = [0i32; 16];
    let li = &mut li[..n];
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        li[i] = q;
        let w = x[i] * x[i];
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * li[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li[i] as f32 * li[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != li[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        li[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for i in 0..n {
        l[i] = (li[i] + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 2-bit levels as Q2_K / Q3_K do: byte 32*h + l of the 64 holds levels
/// 128*h + l, +32, +64, +96 in bit pairs 0, 2, 4, 6.
#[inline(always)]
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; 64]) {
    for h in 0..2 {
        let j = 128 * h;
        for l in 0..32 {
            qs[32 * h + l] =
                levels[j + l] | (levels[j + l + 32] << 2) | (levels[j + l + 64] << 4) | (levels[j + l + 96] << 6);
        }
    }
}

/// quantize_row_q2_K_ref.
pub(super) fn quant_q2_k(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(84)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 84] = arr_mut(b);
        let mut levels = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (scale, min) =
                make_qkx2_quants(3, xs, &weights, &mut levels[16 * j..16 * j + 16], &mut laux, -0.5, 0.1, 15, true);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        let mut sc = [0u8; 16];
        let (d, dmin);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            d = max_scale / Q4SCALE;
        } else {
            d = 0.0;
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            dmin = max_min / Q4SCALE;
        } else {
            dmin = 0.0;
        }
        let d16 = f16_bytes(d);
        let dmin16 = f16_bytes(dmin);
        let (df, dminf) = (f16_le(d16[0], d16[1]), f16_le(dmin16[0], dmin16[1]));
        for j in 0..16 {
            let dl = df * (sc[j] & 0xF) as f32;
            if dl == 0.0 {
                continue;
            }
            let dm = dminf * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dl).clamp(0, 3) as u8;
            }
        }

        b[..16].copy_from_slice(&sc);
        pack_2bit(&levels, arr_mut(&mut b[16..80]));
        b[80..82].copy_from_slice(&d16);
        b[82..84].copy_from_slice(&dmin16);
    }
}

/// quantize_row_q3_K_ref.
pub(super) fn quant_q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 110] = arr_mut(b);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut levels[16 * j..16 * j + 16]);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let mut sc = [0u8; 12];
        let d;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                // int8_t l = nearest_int(..); l = MAX(-32, MIN(31, l)) + 32;
                let l = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                let l = l as u8;
                if j < 8 {
                    sc[j] = l & 0xF;
                } else {
                    sc[j - 8] |= (l & 0xF) << 4;
                }
                sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            d = 1.0 / iscale;
        } else {
            d = 0.0;
        }
        let d16 = f16_bytes(d);
        let df = f16_le(d16[0], d16[1]);
        let dsc = super::kquants::q3_k_scales(&sc);
        for j in 0..16 {
            let dl = df * dsc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-4, 3) + 4) as i8;
            }
        }

        // high bit of level j goes to bit j / 32 of hmask[j % 32]
        let mut hmask = [0u8; 32];
        let mut low = [0u8; QK_K];
        for j in 0..QK_K {
            let mut q = levels[j] as u8;
            if q > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                q -= 4;
            }
            low[j] = q;
        }
        b[..32].copy_from_slice(&hmask);
        pack_2bit(&low, arr_mut(&mut b[32..96]));
        b[96..108].copy_from_slice(&sc);
        b[108..110].copy_from_slice(&d16);
    }
}

/// Packs eight 6-bit (scale, min) pairs into the 12-byte field of Q4_K / Q5_K (the inverse of
/// `scale_min_k4`).
#[inline(always)]
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The common part of quantize_row_q4_K_ref / quantize_row_q5_K_ref: levels 0..=nmax for the
/// 256 elements, and the d, dmin and scales fields.
fn q45_k_levels(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    levels: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2], [u8; 12]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) =
            make_qkx2_quants(nmax, xs, &weights, &mut levels[32 * j..32 * j + 32], &mut laux, rmin, 0.1, nstep, false);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // uint8_t ls = nearest_int(..); ls = MIN(63, ls);
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d16 = f16_bytes(max_scale / 63.0);
    let dmin16 = f16_bytes(max_min / 63.0);
    let (df, dminf) = (f16_le(d16[0], d16[1]), f16_le(dmin16[0], dmin16[1]));
    for j in 0..8 {
        let dl = df * ls[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dminf * lm[j] as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d16, dmin16, packed)
}

/// quantize_row_q4_K_ref.
pub(super) fn quant_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 144] = arr_mut(b);
        let mut levels = [0u8; QK_K];
        let (d16, dmin16, scales) = q45_k_levels(x, 15, -1.0, 20, &mut levels);
        b[..2].copy_from_slice(&d16);
        b[2..4].copy_from_slice(&dmin16);
        b[4..16].copy_from_slice(&scales);
        let qs: &mut [u8; 128] = arr_mut(&mut b[16..]);
        for jj in 0..4 {
            for l in 0..32 {
                qs[32 * jj + l] = levels[64 * jj + l] | (levels[64 * jj + l + 32] << 4);
            }
        }
    }
}

/// quantize_row_q5_K_ref.
pub(super) fn quant_q5_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 176] = arr_mut(b);
        let mut levels = [0u8; QK_K];
        let (d16, dmin16, scales) = q45_k_levels(x, 31, -0.5, 15, &mut levels);
        b[..2].copy_from_slice(&d16);
        b[2..4].copy_from_slice(&dmin16);
        b[4..16].copy_from_slice(&scales);
        let mut qh = [0u8; 32];
        let qs: &mut [u8; 128] = arr_mut(&mut b[48..]);
        for jj in 0..4 {
            let (m1, m2) = (1u8 << (2 * jj), 2u8 << (2 * jj));
            for j in 0..32 {
                let mut l1 = levels[64 * jj + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = levels[64 * jj + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[32 * jj + j] = l1 | (l2 << 4);
            }
        }
        b[16..48].copy_from_slice(&qh);
    }
}

/// quantize_row_q6_K_ref.
pub(super) fn quant_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        let x: &[f32; QK_K] = arr(x);
        let b: &mut [u8; 210] = arr_mut(b);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let scale = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            b.fill(0);
            continue;
        }

        let iscale = -128.0 / max_scale;
        let d16 = f16_bytes(1.0 / iscale);
        let df = f16_le(d16[0], d16[1]);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..16 {
            let dl = df * sc[j] as f32;
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-32, 31) + 32) as i8;
            }
        }

        let (ql, rest) = b.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        for h in 0..2 {
            let lv = &levels[128 * h..128 * h + 128];
            for l in 0..32 {
                let q = |k: usize| lv[l + 32 * k] as u8;
                ql[64 * h + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                ql[64 * h + l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                qh[32 * h + l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        for (o, s) in rest[..16].iter_mut().zip(sc) {
            *o = s as u8;
        }
        rest[16..18].copy_from_slice(&d16);
    }
}
