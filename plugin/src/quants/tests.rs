//! Unit tests of the quants module. Bit-exactness against an independent implementation
//! (gguf-py) is checked by `tests/quants_golden.rs`; these cover round trips, hand-made
//! blocks, error paths and the parallel wrappers.

use super::*;
use crate::ggml_type::QK_K;

/// llama.cpp test-quantize-fns' synthetic data: 0.1 + 2 cos(i + offset), in [-1.9, 2.1].
fn synth(n: usize, offset: f32) -> Vec<f32> {
    (0..n).map(|i| 0.1 + 2.0 * (i as f32 + offset).cos()).collect()
}

/// A tiny deterministic generator (splitmix64) so the tests need no RNG crate.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Data with a different magnitude in each 32-element group, as real weights have.
fn varied(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Mix(seed);
    let mut out = Vec::with_capacity(n);
    for g in 0..n / 32 {
        let scale = [0.01f32, 0.3, 1.0, 7.5][g % 4];
        out.extend((0..32).map(|_| r.unit() * scale));
    }
    out
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

fn rms(a: &[f32]) -> f64 {
    (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

/// Round-trip error bound of each quantizable type on `synth` data, in the spirit of llama.cpp's
/// test-quantize-fns. A uniform quantizer with step s has RMS error s / sqrt(12); the data
/// reaches |x| = 2.1, so Q8_0's step is 2.1 / 127 = 0.0165 -> 0.0048, Q5_0's 2.1 / 16 -> 0.038,
/// Q4_0's 2.1 / 8 -> 0.076; F16 rounds |x| in [1, 2) to 2^-10 -> 2.8e-4. The bounds are ~1.4x
/// the measured errors (which match these estimates).
fn rmse_bound(ty: GgmlType) -> f64 {
    use GgmlType::*;
    match ty {
        F32 => 0.0,
        F16 => 4e-4,
        BF16 => 3.5e-3,
        Q8_0 | Q8_K => 0.007,
        Q5_0 | Q5_1 => 0.055,
        Q4_0 | Q4_1 => 0.1,
        MXFP4 => 0.17,
        // k-quants: Q2_K has 4 levels per 16 (step ~4/3 -> 0.38, its search gets 0.30),
        // Q3_K 8 symmetric levels (2.1 / 4 -> 0.15), Q6_K 64 (2.1 / 32 -> 0.019)
        Q2_K => 0.4,
        Q3_K => 0.22,
        Q4_K => 0.085,
        Q5_K => 0.046,
        Q6_K => 0.023,
        _ => unreachable!(),
    }
}

#[test]
fn round_trip_rmse_within_bounds() {
    for &ty in QUANTIZABLE {
        for offset in [0.0f32, 1.0, 3.5] {
            let x = synth(4096, offset);
            let q = quantize(ty, &x).unwrap();
            assert_eq!(q.len() as u64, ty.row_bytes(4096).unwrap());
            let y = dequantize(ty, &q, x.len()).unwrap();
            let e = rmse(&x, &y);
            assert!(e <= rmse_bound(ty), "{ty}: rmse {e} > {}", rmse_bound(ty));
        }
        // Relative error on data whose magnitude changes from block to block.
        let x = varied(4096, 7);
        let y = dequantize(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
        let rel = rmse(&x, &y) / rms(&x);
        let bound = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 3e-4,
            GgmlType::BF16 => 2.5e-3,
            GgmlType::Q8_0 => 0.0055,
            // one scale per 256 elements: the small groups lose precision to the 7.5 ones
            GgmlType::Q8_K => 0.0095,
            GgmlType::Q5_0 | GgmlType::Q5_1 => 0.045,
            GgmlType::Q4_0 | GgmlType::Q4_1 => 0.09,
            GgmlType::MXFP4 => 0.16,
            GgmlType::Q2_K => 0.32,
            GgmlType::Q3_K => 0.17,
            GgmlType::Q4_K => 0.075,
            GgmlType::Q5_K => 0.038,
            GgmlType::Q6_K => 0.018,
            _ => unreachable!(),
        };
        assert!(rel <= bound, "{ty}: relative rmse {rel} > {bound}");
    }
}

#[test]
fn k_quant_error_falls_with_bits() {
    let x = varied(8192, 21);
    let errs: Vec<f64> =
        [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K]
            .iter()
            .map(|&ty| rmse(&x, &dequantize(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap()))
            .collect();
    assert!(errs.windows(2).all(|w| w[1] < w[0]), "{errs:?}");
}

#[test]
fn k_quant_edge_blocks() {
    // all zero, constant, a single spike, values too small for an f16 scale, all negative
    let mut x = vec![0f32; 256];
    x.extend([-0.25f32; 256]);
    x.extend((0..256).map(|i| if i == 77 { 1.0 } else { 0.0 }));
    x.extend((0..256).map(|i| (i as f32 - 100.0) * 1e-20));
    x.extend((0..256).map(|i| -3.0 + (i % 7) as f32 * 0.01));
    for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K] {
        let q = quantize(ty, &x).unwrap();
        let y = dequantize(ty, &q, x.len()).unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{ty}");
        assert!(y[..256].iter().all(|v| *v == 0.0), "{ty}: zero block");
        assert!((y[512 + 77] - 1.0).abs() < 0.2, "{ty}: spike {}", y[512 + 77]);
        assert!(y[768..1024].iter().all(|v| v.abs() < 1e-6), "{ty}: tiny block");
        let e = rmse(&x[1024..], &y[1024..]);
        assert!(e < 0.05, "{ty}: negative block rmse {e}");
    }
}

#[test]
fn q8_0_error_is_at_most_half_a_step() {
    let x = varied(1024, 3);
    let q = quantize(GgmlType::Q8_0, &x).unwrap();
    let y = dequantize(GgmlType::Q8_0, &q, x.len()).unwrap();
    for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
        let d = f16_le(q[34 * blk], q[34 * blk + 1]);
        for (a, b) in xb.iter().zip(yb) {
            // half a step, plus what rounding d to f16 moves the largest level (127 * d * 2^-11)
            assert!((a - b).abs() <= d * (0.5 + 127.0 / 2048.0) * 1.0001, "block {blk}: {a} vs {b}, d {d}");
        }
    }
}

#[test]
fn quantize_is_idempotent_on_its_own_grid() {
    // Dequantized values re-quantize to the same bytes for the symmetric types.
    for ty in [GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16] {
        let x = synth(512, 0.25);
        let q1 = quantize(ty, &x).unwrap();
        let y = dequantize(ty, &q1, x.len()).unwrap();
        let q2 = quantize(ty, &y).unwrap();
        assert_eq!(q1, q2, "{ty}");
    }
}

#[test]
fn zero_input_quantizes_to_zero_scales() {
    let x = vec![0f32; QK_K];
    for &ty in QUANTIZABLE {
        let q = quantize(ty, &x).unwrap();
        let y = dequantize(ty, &q, x.len()).unwrap();
        assert!(y.iter().all(|v| *v == 0.0), "{ty}: {y:?}");
    }
    // Q8_K: d, qs and bsums all zero
    assert!(quantize(GgmlType::Q8_K, &x).unwrap().iter().all(|b| *b == 0));
}

#[test]
fn hand_made_q4_0_block() {
    let mut b = vec![0u8; 18];
    b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    for j in 0..16u8 {
        b[2 + j as usize] = j | ((15 - j) << 4);
    }
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
    }
}

#[test]
fn hand_made_q5_1_block() {
    // d = 2, m = -1, element j has value j (j < 32): low nibble in qs, fifth bit in qh.
    let mut b = vec![0u8; 24];
    b[..2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
    b[2..4].copy_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
    let mut qh = 0u32;
    for j in 0..32u32 {
        if j & 16 != 0 {
            qh |= 1 << j;
        }
    }
    b[4..8].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16u8 {
        b[8 + j as usize] = (j & 15) | (((j + 16) & 15) << 4);
    }
    let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, j as f32 * 2.0 - 1.0, "element {j}");
    }
}

#[test]
fn hand_made_q8_0_and_q8_k() {
    let mut b = vec![0u8; 34];
    b[..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
    for j in 0..32 {
        b[2 + j] = (j as i8 - 16) as u8;
    }
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, (j as f32 - 16.0) * 0.25);
    }

    let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 128.0) / 128.0).collect();
    let q = quantize(GgmlType::Q8_K, &x).unwrap();
    // max |x| is x[0] = -1 -> iscale = 127, d = 1/127
    assert_eq!(f32::from_le_bytes(q[..4].try_into().unwrap()), 1.0 / 127.0);
    assert_eq!(q[4] as i8, -127);
    for j in 0..16 {
        let sum: i32 = q[4 + 16 * j..4 + 16 * j + 16].iter().map(|b| *b as i8 as i32).sum();
        assert_eq!(i16::from_le_bytes([q[260 + 2 * j], q[261 + 2 * j]]) as i32, sum);
    }
}

#[test]
fn hand_made_mxfp4_block() {
    // e = 128 -> d = 2^(128-128) = 1 (the half-scale), values are the doubled E2M1 codes.
    let mut b = vec![0u8; 17];
    b[0] = 128;
    for j in 0..16u8 {
        b[1 + j as usize] = j | (j << 4);
    }
    let y = dequantize(GgmlType::MXFP4, &b, 32).unwrap();
    let k = [0.0f32, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0];
    assert_eq!(&y[..16], &k);
    assert_eq!(&y[16..], &k);
    // the two smallest exponents are subnormal
    b[0] = 0;
    assert_eq!(dequantize(GgmlType::MXFP4, &b, 32).unwrap()[1], f32::from_bits(0x0020_0000));
    b[0] = 1;
    assert_eq!(dequantize(GgmlType::MXFP4, &b, 32).unwrap()[1], f32::from_bits(0x0040_0000));
}

#[test]
fn q3_k_scales_match_ggmls_word_shuffle() {
    // ggml unpacks the 12 scale bytes with 32-bit masks and shifts; q3_k_scales does it per
    // scale. Compare the two on random bytes.
    let mut r = Mix(11);
    for _ in 0..200 {
        let raw: [u8; 12] = r.bytes(12).try_into().unwrap();
        let a = [
            u32::from_le_bytes(raw[0..4].try_into().unwrap()),
            u32::from_le_bytes(raw[4..8].try_into().unwrap()),
            u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        ];
        let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
        let words = [
            (a[0] & k2) | ((a[2] & k1) << 4),
            (a[1] & k2) | (((a[2] >> 2) & k1) << 4),
            ((a[0] >> 4) & k2) | (((a[2] >> 4) & k1) << 4),
            ((a[1] >> 4) & k2) | (((a[2] >> 6) & k1) << 4),
        ];
        let expect: Vec<i32> = words.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8 as i32 - 32).collect();
        assert_eq!(kquants::q3_k_scales(&raw).to_vec(), expect);
    }
}

#[test]
fn nearest_int_rounds_half_to_even() {
    for (x, want) in [(0.5f32, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (2.4, 2), (-2.6, -3), (127.0, 127)] {
        assert_eq!(nearest_int(x), want, "{x}");
    }
}

#[test]
fn bf16_rounding_matches_ggml() {
    use super::float::f32_to_bf16_bits;
    assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
    // exactly halfway: ties to even
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
    // NaN is kept and made quiet
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
    // overflow rounds to infinity
    assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
}

#[test]
fn f16_rows_need_no_alignment() {
    let x = synth(1000, 0.0);
    let q = quantize(GgmlType::F16, &x).unwrap();
    let mut shifted = vec![0u8; q.len() + 1];
    shifted[1..].copy_from_slice(&q);
    let mut y = vec![0f32; x.len()];
    dequantize_row(GgmlType::F16, &shifted[1..], &mut y).unwrap();
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(half::f16::from_f32(*a).to_f32(), *b);
    }
}

#[test]
fn every_type_dequantizes_random_blocks_finitely() {
    // Random bytes with sane f16 scale fields (exponent < 31) never produce NaN/inf garbage,
    // and parallel and serial agree bit for bit.
    let mut r = Mix(5);
    for &ty in DEQUANTIZABLE {
        let (blk, size) = ty.block_geometry();
        let n = blk.max(32) * 64;
        let mut bytes = r.bytes(ty.row_bytes(n as u64).unwrap() as usize);
        match ty {
            GgmlType::F32 => {
                for c in bytes.chunks_exact_mut(4) {
                    c.copy_from_slice(&r.unit().to_le_bytes());
                }
            }
            GgmlType::F16 | GgmlType::BF16 => {
                for c in bytes.chunks_exact_mut(2) {
                    c[1] &= 0x3f; // small exponent
                }
            }
            GgmlType::Q8_K => {
                for c in bytes.chunks_exact_mut(size) {
                    c[..4].copy_from_slice(&r.unit().to_le_bytes());
                }
            }
            GgmlType::MXFP4 => {}
            _ => {
                // clear the top exponent bit of every f16 scale field
                for c in bytes.chunks_exact_mut(size) {
                    for off in f16_fields(ty) {
                        c[off + 1] &= 0x3f;
                    }
                }
            }
        }
        let y = dequantize(ty, &bytes, n).unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{ty}");
        let ne0 = blk.max(32) * 4;
        let p = dequantize_par(ty, &bytes, n, ne0).unwrap();
        assert!(y.iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty}");
    }
}

/// Byte offsets of the f16 fields in one block.
fn f16_fields(ty: GgmlType) -> Vec<usize> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => vec![0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => vec![0, 2],
        Q2_K => vec![80, 82],
        Q3_K => vec![108],
        Q6_K => vec![208],
        _ => vec![],
    }
}

#[test]
fn parallel_matches_serial() {
    // Many rows, so that the work is split into several rayon tasks.
    let ne0 = 512;
    let x = varied(ne0 * 300, 9);
    for &ty in QUANTIZABLE {
        let q = quantize(ty, &x).unwrap();
        assert_eq!(quantize_par(ty, &x, ne0).unwrap(), q, "{ty}");
        let y = dequantize(ty, &q, x.len()).unwrap();
        let p = dequantize_par(ty, &q, x.len(), ne0).unwrap();
        assert!(y.iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty}");
    }
}

#[test]
fn size_mismatches_are_errors_naming_the_sizes() {
    let mut dst = vec![0f32; 32];
    let err = dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut dst).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
    let msg = err.to_string();
    assert!(msg.contains("q4_0") && msg.contains("17") && msg.contains("18") && msg.contains("32"), "{msg}");

    // element count not a multiple of the block size
    let mut dst = vec![0f32; 33];
    let msg = dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut dst).unwrap_err().to_string();
    assert!(msg.contains("33") && msg.contains("32"), "{msg}");
    let msg = dequantize(GgmlType::Q6_K, &[0u8; 210], 255).unwrap_err().to_string();
    assert!(msg.contains("255") && msg.contains("256"), "{msg}");

    // too many source bytes is as wrong as too few
    let mut dst = vec![0f32; 256];
    assert!(matches!(dequantize_row(GgmlType::Q4_K, &[0u8; 145], &mut dst), Err(Error::Invalid(_))));

    // quantize: wrong destination size, bad element count
    let src = vec![0f32; 64];
    let msg = quantize_row(GgmlType::Q8_0, &src, &mut [0u8; 67]).unwrap_err().to_string();
    assert!(msg.contains("67") && msg.contains("68"), "{msg}");
    assert!(matches!(quantize(GgmlType::Q4_1, &src[..40]), Err(Error::Invalid(_))));

    // parallel versions: bad ne0, count not a whole number of rows, wrong byte count
    assert!(matches!(dequantize_par(GgmlType::Q8_0, &[0u8; 68], 64, 0), Err(Error::Invalid(_))));
    assert!(matches!(dequantize_par(GgmlType::Q8_0, &[0u8; 68], 64, 48), Err(Error::Invalid(_))));
    assert!(matches!(dequantize_par(GgmlType::Q8_0, &[0u8; 68], 64, 16), Err(Error::Invalid(_))));
    let msg = dequantize_par(GgmlType::Q8_0, &[0u8; 70], 64, 32).unwrap_err().to_string();
    assert!(msg.contains("70") && msg.contains("68"), "{msg}");
    assert!(matches!(quantize_par(GgmlType::Q8_0, &src, 48), Err(Error::Invalid(_))));
    let mut dst = vec![0f32; 64];
    assert!(matches!(dequantize_par_into(GgmlType::Q8_0, &[0u8; 67], 32, &mut dst), Err(Error::Invalid(_))));

    // empty input is fine
    assert!(dequantize(GgmlType::Q4_0, &[], 0).unwrap().is_empty());
    assert!(quantize(GgmlType::Q4_0, &[]).unwrap().is_empty());
}

#[test]
fn unsupported_types_say_so() {
    for ty in [GgmlType::IQ2_XXS, GgmlType::Q8_1, GgmlType::I32, GgmlType::TQ1_0, GgmlType::F64] {
        assert!(!can_dequantize(ty));
        let err = dequantize(ty, &[], 0).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)));
        assert_eq!(err.to_string(), format!("dequantizing {} is not supported", ty.name()));
        let mut dst = [0f32; 0];
        assert!(matches!(dequantize_row(ty, &[], &mut dst), Err(Error::Unsupported(_))));
        assert!(matches!(dequantize_par(ty, &[], 0, 1), Err(Error::Unsupported(_))));
    }
    for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::IQ2_XXS, GgmlType::Q8_1, GgmlType::TQ2_0] {
        assert!(!can_quantize(ty));
        let err = quantize(ty, &[0f32; 256]).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)));
        assert_eq!(err.to_string(), format!("quantizing to {} is not supported", ty.name()));
    }
    // what can be written can be read back
    for &ty in QUANTIZABLE {
        assert!(can_dequantize(ty), "{ty}");
    }
}

/// The SIMD paths this CPU takes must equal the portable ones bit for bit, so that machines
/// without them compute the same weights (and the goldens, made on one path, hold on both).
#[cfg(target_arch = "x86_64")]
#[test]
fn simd_paths_match_the_portable_ones_bit_for_bit() {
    use half::f16;
    let simd = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c");
    if !simd {
        eprintln!("SKIP: this CPU has no AVX2/F16C, only the portable paths run");
        return;
    }
    // Random bytes cover every nibble; the f16 fields get finite values, zero, subnormals,
    // infinities and NaN.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let specials = [0x0000u16, 0x8000, 0x0001, 0x03ff, 0x7c00, 0xfc00, 0x7e00, 0x3c00, 0xbc00];
    let n_blocks = 257;
    let mut q4_1 = vec![0u8; 20 * n_blocks];
    q4_1.iter_mut().for_each(|b| *b = next() as u8);
    for (i, block) in q4_1.chunks_exact_mut(20).enumerate() {
        let d = if i % 5 == 0 {
            specials[i % specials.len()]
        } else {
            f16::from_f32((next() % 1000) as f32 / 997.0 - 0.5).to_bits()
        };
        block[..2].copy_from_slice(&d.to_le_bytes());
    }
    let (mut a, mut b) = (vec![0.0f32; 32 * n_blocks], vec![0.0f32; 32 * n_blocks]);
    super::legacy::dequant_q4_1_portable(&q4_1, &mut a);
    // SAFETY: checked above that the CPU has AVX2 and F16C.
    unsafe { super::legacy::dequant_q4_1_avx2(&q4_1, &mut b) };
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "q4_1");

    // F16 rows of odd lengths (the tails) and every special value.
    let mut bytes: Vec<u8> = (0..1003).flat_map(|_| (next() as u16).to_le_bytes()).collect();
    for (i, s) in specials.iter().enumerate() {
        bytes[2 * i..2 * i + 2].copy_from_slice(&s.to_le_bytes());
    }
    let (mut a, mut b) = (vec![0.0f32; 1003], vec![0.0f32; 1003]);
    super::float::dequant_f16_portable(&bytes, &mut a);
    // SAFETY: as above.
    unsafe { super::float::dequant_f16_f16c(&bytes, &mut b) };
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())), "f16 -> f32");

    // f32 -> f16: rounding ties, overflow, subnormals.
    let src: Vec<f32> =
        (0..1003).map(|i| f32::from_bits(next() as u32) * if i % 3 == 0 { 1.0 } else { 1e-30 }).collect();
    let (mut a, mut b) = (vec![f16::ZERO; 1003], vec![f16::ZERO; 1003]);
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut a[..], &src);
    // SAFETY: as above.
    unsafe { super::float::f32_to_f16_f16c(&src, &mut b) };
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())), "f32 -> f16");
}
