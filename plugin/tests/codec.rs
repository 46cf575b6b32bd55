//! Codec round trips and error bounds on deltas with the structure fine-tunes show.

use half::f16;
use switchyard::codec::{self, relative_error, CodecParams, CompressedDelta, Method, Output, SalientValues};
use switchyard::synth::{self, DeltaSpec};
use switchyard::{quants, GgmlType};

fn delta(n_in: usize, n_out: usize, spec: &DeltaSpec, seed: u64) -> Vec<f32> {
    synth::structured_delta(n_in, n_out, spec, 0.02, &mut synth::rng(seed))
}

fn err(d: &[f32], n_in: usize, p: &CodecParams, act: Option<&[f32]>) -> (f64, f64) {
    let c = codec::compress(d, n_in, d.len() / n_in, act, p).unwrap();
    c.validate("test").unwrap();
    (relative_error(&codec::decompress_f32(&c), d), c.bits_per_param())
}

/// The acceptance bound of the Foundation issue: at 2 bits on deltas with a few large input
/// channels, at most half the error of the best per-output-channel RTN, at <= 2.5 bits.
#[test]
fn salient_two_bit_halves_best_rtn_error_on_outlier_channels() {
    for (n_in, n_out, seed) in [(576, 576, 1), (1536, 576, 2), (576, 1536, 3), (4096, 256, 4)] {
        let d = delta(n_in, n_out, &DeltaSpec::default(), seed);
        let (e_sal, b_sal) = err(&d, n_in, &CodecParams::default(), None);
        let (e_rtn, b_rtn) = err(&d, n_in, &CodecParams::rtn(2), None);
        assert!(b_sal <= 2.5, "{n_in}x{n_out}: {b_sal} bits");
        assert!(b_rtn <= b_sal);
        assert!(e_sal <= 0.5 * e_rtn, "{n_in}x{n_out}: salient {e_sal:.4} vs rtn {e_rtn:.4}");
    }
}

#[test]
fn more_bits_never_hurt() {
    let d = delta(512, 256, &DeltaSpec::default(), 9);
    let mut last = f64::INFINITY;
    for bits in 1..=4 {
        let (e, b) = err(&d, 512, &CodecParams { bits, ..Default::default() }, None);
        assert!(e < last, "{bits} bits: {e} >= {last}");
        assert!(b < bits as f64 + 0.5, "{bits} bits cost {b}");
        last = e;
    }
    // 4-bit uniform quantization of Gaussian-like deltas: well under 10% error.
    assert!(last < 0.1, "{last}");
}

#[test]
fn salient_channels_are_the_outlier_channels() {
    let (n_in, n_out) = (256, 128);
    let mut d = delta(n_in, n_out, &DeltaSpec { outlier_fraction: 0.0, ..Default::default() }, 5);
    for r in 0..n_out {
        for &c in &[17usize, 200] {
            d[r * n_in + c] *= 40.0;
        }
    }
    let p = CodecParams { salient_fraction: 2.0 / n_in as f32, ..Default::default() };
    let c = codec::compress(&d, n_in, n_out, None, &p).unwrap();
    assert_eq!(c.salient_idx, vec![17, 200]);
    // Salient channels come back to f16 precision.
    let back = codec::decompress_f32(&c);
    for r in 0..n_out {
        let x = d[r * n_in + 17];
        assert_eq!(back[r * n_in + 17], f16::from_f32(x).to_f32());
    }
}

#[test]
fn activation_statistics_steer_the_choice() {
    // No outliers in the weights; channel 99 sees activations 1000x larger. Weighted by the
    // imatrix it must be kept, weight-only it must not.
    let (n_in, n_out) = (256, 64);
    let d = delta(n_in, n_out, &DeltaSpec { outlier_fraction: 0.0, rank: 0, ..Default::default() }, 6);
    let mut act = vec![1.0f32; n_in];
    act[99] = 1000.0;
    let p = CodecParams { salient_fraction: 1.0 / n_in as f32, ..Default::default() };
    let weighted = codec::compress(&d, n_in, n_out, Some(&act), &p).unwrap();
    assert_eq!(weighted.salient_idx, vec![99]);
    let plain = codec::compress(&d, n_in, n_out, None, &p).unwrap();
    assert_ne!(plain.salient_idx, vec![99]);
    // Stacked matrices (MoE): one statistic per matrix.
    let act2: Vec<f32> = act.iter().chain(act.iter()).copied().collect();
    assert!(codec::compress(&d, n_in, n_out, Some(&act2), &p).is_ok());
    assert!(codec::compress(&d, n_in, n_out, Some(&act[..100]), &p).is_err());
}

#[test]
fn eight_bit_salient_values_are_close_to_sixteen_bit() {
    let d = delta(512, 128, &DeltaSpec::default(), 7);
    let (e16, b16) = err(&d, 512, &CodecParams::default(), None);
    let (e8, b8) = err(&d, 512, &CodecParams { salient_bits: 8, ..Default::default() }, None);
    assert!(b8 < b16);
    assert!(e8 < e16 * 1.1, "{e8} vs {e16}");
}

#[test]
fn bitdelta_is_sign_times_mean_magnitude() {
    let d = delta(64, 32, &DeltaSpec::default(), 8);
    let c = codec::compress(&d, 64, 32, None, &CodecParams::bitdelta()).unwrap();
    let mean_abs = d.iter().map(|x| x.abs()).sum::<f32>() / d.len() as f32;
    let back = codec::decompress_f32(&c);
    for (x, y) in d.iter().zip(&back) {
        assert_eq!(y.signum(), if *x >= 0.0 { 1.0 } else { -1.0 });
        assert!((y.abs() - mean_abs).abs() <= mean_abs * 1e-3);
    }
    assert!(c.bits_per_param() < 1.01);
}

#[test]
fn zero_delta_decodes_to_zero_and_bad_params_are_refused() {
    let d = vec![0.0f32; 64 * 8];
    let c = codec::compress(&d, 64, 8, None, &CodecParams::default()).unwrap();
    assert!(codec::decompress_f32(&c).iter().all(|&x| x == 0.0));
    for bad in [
        CodecParams { bits: 0, ..Default::default() },
        CodecParams { bits: 5, ..Default::default() },
        CodecParams { salient_bits: 12, ..Default::default() },
        CodecParams { group_size: 100, ..Default::default() },
        CodecParams { salient_fraction: f32::NAN, ..Default::default() },
        CodecParams { method: Method::BitDelta, bits: 2, ..CodecParams::bitdelta() },
    ] {
        assert!(codec::compress(&d, 64, 8, None, &bad).is_err(), "{bad:?}");
    }
    assert!(codec::compress(&d[..60], 60, 1, None, &CodecParams::default()).is_err());
}

#[test]
fn reconstruction_into_every_output_type_matches_base_plus_delta() {
    let (n_in, n_out) = (256, 48);
    let w: Vec<f32> = delta(n_in, n_out, &DeltaSpec { outlier_fraction: 0.0, ..Default::default() }, 10)
        .iter()
        .map(|x| x * 50.0)
        .collect();
    let d = delta(n_in, n_out, &DeltaSpec::default(), 11);
    let c = codec::compress(&d, n_in, n_out, None, &CodecParams { bits: 3, ..Default::default() }).unwrap();
    let dd = codec::decompress_f32(&c);
    // every base type the crate can write (and so read)
    for &base_ty in quants::QUANTIZABLE {
        let base = quants::quantize_par(base_ty, &w, n_in).unwrap();
        let wb = quants::dequantize(base_ty, &base, w.len()).unwrap();
        let expect: Vec<f32> = wb.iter().zip(&dd).map(|(a, b)| a + b).collect();
        let add = |r: usize, row: &mut [f32]| codec::add_delta_row(&c, r, row);

        let mut f = vec![0.0f32; w.len()];
        codec::reconstruct_into(base_ty, &base, n_in, n_out, Output::F32(&mut f), add).unwrap();
        assert_eq!(f, expect, "{base_ty} -> f32");

        let mut h = vec![f16::ZERO; w.len()];
        codec::reconstruct_into(base_ty, &base, n_in, n_out, Output::F16(&mut h), add).unwrap();
        assert!(h.iter().zip(&expect).all(|(a, b)| *a == f16::from_f32(*b)), "{base_ty} -> f16");

        let mut q = vec![0u8; GgmlType::Q8_0.row_bytes(n_in as u64).unwrap() as usize * n_out];
        codec::reconstruct_into(base_ty, &base, n_in, n_out, Output::Ggml(GgmlType::Q8_0, &mut q), add).unwrap();
        assert_eq!(q, quants::quantize_par(GgmlType::Q8_0, &expect, n_in).unwrap(), "{base_ty} -> q8_0");
    }
    // Wrong buffer sizes are errors, not panics.
    let mut small = vec![0.0f32; 10];
    let base = quants::quantize_par(GgmlType::F32, &w, n_in).unwrap();
    assert!(codec::reconstruct_into(GgmlType::F32, &base, n_in, n_out, Output::F32(&mut small), |_, _| {}).is_err());
    assert!(
        codec::reconstruct_into(GgmlType::F32, &base[..100], n_in, n_out, Output::F32(&mut small), |_, _| {}).is_err()
    );
}

#[test]
fn validate_rejects_inconsistent_deltas() {
    let d = delta(64, 8, &DeltaSpec::default(), 12);
    let good = codec::compress(&d, 64, 8, None, &CodecParams { salient_fraction: 0.05, ..Default::default() }).unwrap();
    good.validate("t").unwrap();
    let mut bad: Vec<CompressedDelta> = vec![good.clone(); 5];
    bad[0].codes.pop();
    bad[1].steps.push(f16::ONE);
    bad[2].salient_idx.reverse();
    bad[3].salient = SalientValues::F16(vec![]);
    bad[4].steps[0] = f16::NAN;
    for b in &bad {
        assert!(b.validate("blk.0.attn_q.weight").unwrap_err().to_string().contains("blk.0.attn_q.weight"));
    }
}

/// Calibration inputs whose channels are correlated, as a layer's inputs are: a few shared
/// factors plus noise. Returns the inputs (m rows of n) and their mean x x^T.
fn correlated_inputs(n: usize, m: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    use rand::Rng;
    let mut rng = synth::rng(seed);
    let factors = 4;
    let mix: Vec<f32> = (0..factors * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut x = vec![0.0f32; m * n];
    for row in x.chunks_mut(n) {
        let z: Vec<f32> = (0..factors).map(|_| rng.gen_range(-2.0..2.0)).collect();
        for (i, v) in row.iter_mut().enumerate() {
            *v = (0..factors).map(|f| z[f] * mix[f * n + i]).sum::<f32>() + rng.gen_range(-0.3..0.3);
        }
    }
    let mut cov = vec![0.0f32; n * n];
    for row in x.chunks(n) {
        for i in 0..n {
            for j in 0..n {
                cov[i * n + j] += row[i] * row[j] / m as f32;
            }
        }
    }
    (x, cov)
}

/// sum over calibration rows x and output rows r of (x . (d_r - q_r))^2
fn output_error(x: &[f32], d: &[f32], q: &[f32], n: usize) -> f64 {
    let diff: Vec<f32> = d.iter().zip(q).map(|(a, b)| a - b).collect();
    x.chunks(n)
        .map(|xr| diff.chunks(n).map(|e| xr.iter().zip(e).map(|(a, b)| a * b).sum::<f32>().powi(2) as f64).sum::<f64>())
        .sum()
}

/// Error feedback minimises the error of the layer's outputs on calibration inputs: with
/// correlated inputs it must beat quantizing each channel on its own, at the same size, for
/// one step per row (RTN's layout) and for the default layout with salient channels.
#[test]
fn error_feedback_lowers_the_output_error_on_correlated_inputs() {
    let (n_in, n_out) = (128, 48);
    let (x, cov) = correlated_inputs(n_in, 512, 11);
    let act: Vec<f32> = (0..n_in).map(|i| cov[i * n_in + i]).collect();
    let f = codec::ErrorFeedback::new(&cov, n_in).unwrap();
    let d = delta(n_in, n_out, &DeltaSpec::default(), 12);
    for p in [
        CodecParams { salient_fraction: 0.0, group_size: 0, ..Default::default() },
        CodecParams { salient_fraction: 0.02, group_size: 64, bits: 3, ..Default::default() },
    ] {
        let plain = codec::compress(&d, n_in, n_out, Some(&act), &p).unwrap();
        let fed = codec::compress_with_feedback(&d, n_in, n_out, Some(&act), Some(&f), &p).unwrap();
        fed.validate("test").unwrap();
        assert_eq!(fed.bits_per_param(), plain.bits_per_param());
        assert_eq!(fed.salient_idx, plain.salient_idx);
        let e_plain = output_error(&x, &d, &codec::decompress_f32(&plain), n_in);
        let e_fed = output_error(&x, &d, &codec::decompress_f32(&fed), n_in);
        assert!(e_fed < 0.5 * e_plain, "{p:?}: with feedback {e_fed:.4e}, without {e_plain:.4e}");
    }
    // the wrong width, or a baseline codec, is refused
    assert!(
        codec::compress_with_feedback(&d[..64 * n_out], 64, n_out, None, Some(&f), &CodecParams::default()).is_err()
    );
    assert!(codec::compress_with_feedback(&d, n_in, n_out, None, Some(&f), &CodecParams::rtn(2)).is_err());
}
