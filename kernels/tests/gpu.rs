//! Every kernel against its CPU reference in the `switchyard` crate: exact for decoding,
//! conversion and quantization, a tight relative tolerance for the matmuls (their sums run in
//! another order).
//!
//! Each test has two halves. The CPU half always runs: it computes the reference the GPU is held
//! to and checks it against a second computation that shares none of its fused, parallel code
//! (whole-tensor dequantization, the decoded delta, f64 dot products). The GPU half compares the
//! kernel with that reference and needs a GPU with CUDA's libraries: without one it prints
//! "SKIP: the GPU half ..." and the test passes on its CPU half alone, unless
//! `SWITCHYARD_REQUIRE_GPU=1` is set, which turns a missing GPU into a failure (for machines that
//! have one). CI has none; scripts/check-kernels.sh is what CI runs on the kernels.

use half::f16;
use rand::{Rng, SeedableRng};
use switchyard::codec::{
    add_delta_row, compress, decompress_f32, matmul::mixed_expert_matmul, reconstruct_into, relative_error,
    CodecParams, CompressedDelta, Method, Output,
};
use switchyard::quants;
use switchyard::GgmlType;
use switchyard_kernels::device::{reads_weights, DeviceDelta, Gpu, MatmulShape};

/// The GPU for a test's GPU half, or None (after a SKIP line) when there is none; a failure
/// instead when `SWITCHYARD_REQUIRE_GPU=1`.
fn gpu(test: &str) -> Option<Gpu> {
    let gpu = Gpu::open_or_log();
    if gpu.is_none() {
        let required = std::env::var_os("SWITCHYARD_REQUIRE_GPU").is_some_and(|v| v == "1");
        assert!(!required, "{test}: no usable GPU, and SWITCHYARD_REQUIRE_GPU=1 asks for the GPU half");
        eprintln!("SKIP: the GPU half of {test}: no usable GPU (its CPU reference was computed and checked)");
    }
    gpu
}

fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// The weight types the kernels read, in rows of `n_in`: those of ggml's types the CPU both
/// quantizes and dequantizes that `reads_weights` accepts (so a type the kernels learn to read
/// is tested here without being listed again).
fn kernel_weight_types(n_in: usize) -> Vec<GgmlType> {
    quants::QUANTIZABLE.iter().copied().filter(|&ty| reads_weights(ty, n_in)).collect()
}

/// A base weight stored as `ty`, and its bytes.
fn base_bytes(ty: GgmlType, w: &[f32], n_in: usize) -> Vec<u8> {
    quants::quantize_par(ty, w, n_in).unwrap()
}

/// `n` elements of `ty` as f32.
fn dequantized(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    quants::dequantize(ty, bytes, n).unwrap()
}

fn codecs() -> Vec<CodecParams> {
    let mut all = vec![CodecParams::bitdelta(), CodecParams::rtn(2)];
    for bits in 1..=4 {
        all.push(CodecParams { bits, ..CodecParams::default() });
    }
    all.push(CodecParams { salient_bits: 8, salient_fraction: 0.05, ..CodecParams::default() });
    all
}

/// The output types `decompress_add` writes.
const OUTPUT_TYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

#[test]
fn decompress_add_reference_is_base_plus_decoded_delta_and_the_gpu_half_equals_it_bit_for_bit() {
    let (n_in, n_out) = (256, 48);
    let w = random(n_in * n_out, 1.0, 1);
    let d = random(n_in * n_out, 0.05, 2);
    let base_types = kernel_weight_types(n_in);
    assert!(base_types.len() >= 6, "the float types, Q8_0, Q4_0 and Q4_1 at least: {base_types:?}");
    // the CPU half: every reference, checked
    let mut cases = Vec::new();
    for params in codecs() {
        let delta = compress(&d, n_in, n_out, None, &params).unwrap();
        let decoded = decompress_f32(&delta);
        // the decoded delta is the delta, to the codec's precision (2^-bits of its range, loosely)
        let err = relative_error(&decoded, &d);
        assert!(err < 1.2 / f64::from(1u32 << params.bits), "{params:?}: decoded delta off by {err}");
        for &base_ty in &base_types {
            let base = base_bytes(base_ty, &w, n_in);
            let sum: Vec<f32> = dequantized(base_ty, &base, w.len()).iter().zip(&decoded).map(|(a, b)| a + b).collect();
            for out_ty in OUTPUT_TYPES {
                let mut want = vec![0u8; out_ty.row_bytes(n_in as u64).unwrap() as usize * n_out];
                let out = match out_ty {
                    GgmlType::Q8_0 => Output::Ggml(GgmlType::Q8_0, &mut want),
                    t => Output::from_bytes(t, &mut want).unwrap(),
                };
                reconstruct_into(base_ty, &base, n_in, n_out, out, |r, row| add_delta_row(&delta, r, row)).unwrap();
                // base + decoded delta, converted to the output type as one tensor, equals the
                // reference (compared as values: a zero's sign may differ)
                let independent = dequantized(out_ty, &base_bytes(out_ty, &sum, n_in), sum.len());
                let reference = dequantized(out_ty, &want, sum.len());
                let what = format!("{:?} {}-bit, base {base_ty}, out {out_ty}", params.method, params.bits);
                if let Some(i) = (0..sum.len()).find(|&i| reference[i] != independent[i]) {
                    panic!("{what}: reference element {i} is {}, base + delta gives {}", reference[i], independent[i]);
                }
                cases.push((delta.clone(), base_ty, base.clone(), out_ty, want, what));
            }
        }
    }
    let Some(gpu) = gpu("decompress_add") else { return };
    for (delta, base_ty, base, out_ty, want, what) in cases {
        let dev_delta = DeviceDelta::upload(&gpu, &delta).unwrap();
        let got = gpu.download(&gpu.decompress_add(base_ty, &gpu.upload(&base).unwrap(), &dev_delta, out_ty).unwrap());
        assert!(got.unwrap() == want, "{what}");
    }
}

#[test]
fn dequantize_f16_reference_is_the_weights_to_their_type_precision_and_the_gpu_half_equals_it_bit_for_bit() {
    let (n_in, rows) = (128, 20);
    let w = random(n_in * rows, 2.0, 3);
    let mut cases = Vec::new();
    for ty in kernel_weight_types(n_in) {
        let bytes = base_bytes(ty, &w, n_in);
        let mut f = vec![0f32; n_in * rows];
        let row = ty.row_bytes(n_in as u64).unwrap() as usize;
        for (src, dst) in bytes.chunks(row).zip(f.chunks_mut(n_in)) {
            quants::dequantize_row(ty, src, dst).unwrap();
        }
        // each value within the type's rounding of the weight: at most `tol` of its block's
        // largest magnitude (Q4_0 clips the one value opposite its scale's sign to 7/8 of it)
        let tol = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1.0 / 2048.0,
            GgmlType::BF16 => 1.0 / 256.0,
            GgmlType::Q8_0 => 1.0 / 127.0,
            GgmlType::Q4_1 => 1.0 / 14.0,
            GgmlType::Q4_0 => 1.0 / 7.5,
            other => panic!("{other}: no tolerance for a weight type the kernels learned to read"),
        };
        let block = ty.block_geometry().0;
        for (b, (got, orig)) in f.chunks(block).zip(w.chunks(block)).enumerate() {
            let amax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, o) in got.iter().zip(orig) {
                assert!((g - o).abs() <= tol * amax, "{ty} block {b}: {g} for {o} (largest {amax})");
            }
        }
        // the vectorised conversion is the scalar one
        let mut want = vec![f16::ZERO; f.len()];
        quants::f32_to_f16(&f, &mut want);
        assert!(want.iter().zip(&f).all(|(h, v)| *h == f16::from_f32(*v)), "{ty}: f32_to_f16");
        cases.push((ty, bytes, want));
    }
    let Some(gpu) = gpu("dequantize_f16") else { return };
    for (ty, bytes, want) in cases {
        let got = gpu.download(&gpu.dequantize_f16(ty, &gpu.upload(&bytes).unwrap(), n_in, want.len()).unwrap());
        assert!(got.unwrap() == want, "{ty}");
    }
}

#[test]
fn mixed_expert_matmul_reference_is_the_dense_product_and_the_gpu_half_matches_it() {
    let (n_in, n_out, n_tok) = (512, 64, 19);
    let w: Vec<f32> = random(n_in * n_out, 1.0, 4).iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let deltas: Vec<CompressedDelta> =
        [(5u64, 2u8, Method::Salient), (6, 3, Method::Salient), (7, 1, Method::BitDelta)]
            .iter()
            .map(|&(seed, bits, method)| {
                let p = if method == Method::BitDelta {
                    CodecParams::bitdelta()
                } else {
                    CodecParams { bits, ..CodecParams::default() }
                };
                compress(&random(n_in * n_out, 0.05, seed), n_in, n_out, None, &p).unwrap()
            })
            .collect();
    let x = random(n_in * n_tok, 1.0, 8);
    // tokens 0-3 base, 4-10 expert 0, 11-12 expert 2, 13-18 expert 1
    let segments = [(0, 4, 11), (2, 11, 13), (1, 13, 19)];
    let mut experts = vec![None; n_tok];
    for &(e, b, end) in &segments {
        experts[b..end].iter_mut().for_each(|x| *x = Some(e));
    }
    let refs: Vec<_> = deltas.iter().collect();
    let want = mixed_expert_matmul(&w, &refs, &experts, &x, n_in, n_out);

    // the CPU half: (W_base + D_e) x[t] with each expert's whole decoded delta added to the weight
    let merged: Vec<Vec<f32>> =
        deltas.iter().map(|d| w.iter().zip(decompress_f32(d)).map(|(a, b)| a + b).collect()).collect();
    for (t, e) in experts.iter().enumerate() {
        let m = e.map_or(&w, |e| &merged[e]);
        let xt = &x[t * n_in..(t + 1) * n_in];
        for o in 0..n_out {
            let dot: f64 = m[o * n_in..(o + 1) * n_in].iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = want[t * n_out + o] as f64;
            assert!((got - dot).abs() <= 1e-6 * dot.abs().max(1.0), "y[{t}][{o}]: reference {got}, dense {dot}");
        }
    }

    let Some(gpu) = gpu("mixed_expert_matmul") else { return };
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let dev: Vec<_> = deltas.iter().map(|d| DeviceDelta::upload(&gpu, d).unwrap()).collect();
    let dev_refs: Vec<_> = dev.iter().collect();
    let y = gpu
        .mixed_expert_matmul(
            &gpu.upload(&w16).unwrap(),
            &dev_refs,
            &segments,
            &gpu.upload(&x).unwrap(),
            MatmulShape { n_in, n_out, n_tok },
        )
        .unwrap();
    let got = gpu.download(&y).unwrap();
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale, "y[{}][{}]: gpu {g}, cpu {w}", i / n_out, i % n_out);
    }
}
