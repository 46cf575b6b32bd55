//! Every kernel against its CPU reference in the `switchyard` crate: exact for decoding,
//! conversion and quantization, a tight relative tolerance for the matmuls (their sums run in
//! another order). Without a GPU (or CUDA libraries) each test says so and passes: CI has none,
//! and scripts/check-kernels.sh is what CI runs on the kernels.

use half::f16;
use rand::{Rng, SeedableRng};
use switchyard::codec::{compress, matmul::mixed_expert_matmul, reconstruct_into, CodecParams, Method, Output};
use switchyard::quants;
use switchyard::GgmlType;
use switchyard_kernels::device::{DeviceDelta, Gpu, MatmulShape};

fn gpu() -> Option<Gpu> {
    let gpu = Gpu::open_or_log();
    if gpu.is_none() {
        eprintln!("SKIP: no usable GPU; the CPU references are what ran");
    }
    gpu
}

fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// A base weight stored as `ty`, and its bytes.
fn base_bytes(ty: GgmlType, w: &[f32], n_in: usize) -> Vec<u8> {
    let row = ty.row_bytes(n_in as u64).unwrap() as usize;
    let mut out = vec![0u8; row * (w.len() / n_in)];
    for (src, dst) in w.chunks(n_in).zip(out.chunks_mut(row)) {
        quants::quantize_row(ty, src, dst).unwrap();
    }
    out
}

fn codecs() -> Vec<CodecParams> {
    let mut all = vec![CodecParams::bitdelta(), CodecParams::rtn(2)];
    for bits in 1..=4 {
        all.push(CodecParams { bits, ..CodecParams::default() });
    }
    all.push(CodecParams { salient_bits: 8, salient_fraction: 0.05, ..CodecParams::default() });
    all
}

#[test]
fn decompress_add_equals_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let (n_in, n_out) = (256, 48);
    let w = random(n_in * n_out, 1.0, 1);
    let d = random(n_in * n_out, 0.05, 2);
    for params in codecs() {
        let delta = compress(&d, n_in, n_out, None, &params).unwrap();
        let dev_delta = DeviceDelta::upload(&gpu, &delta).unwrap();
        for base_ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let base = base_bytes(base_ty, &w, n_in);
            let dev_base = gpu.upload(&base).unwrap();
            for out_ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
                let mut want = vec![0u8; out_ty.row_bytes(n_in as u64).unwrap() as usize * n_out];
                let out = match out_ty {
                    GgmlType::Q8_0 => Output::Ggml(GgmlType::Q8_0, &mut want),
                    t => Output::from_bytes(t, &mut want).unwrap(),
                };
                reconstruct_into(base_ty, &base, n_in, n_out, out, |r, row| {
                    switchyard::codec::add_delta_row(&delta, r, row)
                })
                .unwrap();
                let got = gpu.download(&gpu.decompress_add(base_ty, &dev_base, &dev_delta, out_ty).unwrap()).unwrap();
                assert!(got == want, "{:?} {}-bit, base {base_ty}, out {out_ty}", params.method, params.bits);
            }
        }
    }
}

#[test]
fn dequantize_f16_equals_the_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let (n_in, rows) = (128, 20);
    let w = random(n_in * rows, 2.0, 3);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let bytes = base_bytes(ty, &w, n_in);
        let mut f = vec![0f32; n_in * rows];
        let row = ty.row_bytes(n_in as u64).unwrap() as usize;
        for (src, dst) in bytes.chunks(row).zip(f.chunks_mut(n_in)) {
            quants::dequantize_row(ty, src, dst).unwrap();
        }
        let mut want = vec![f16::ZERO; f.len()];
        quants::f32_to_f16(&f, &mut want);
        let got = gpu.download(&gpu.dequantize_f16(ty, &gpu.upload(&bytes).unwrap(), n_in, f.len()).unwrap()).unwrap();
        assert!(got == want, "{ty}");
    }
}

#[test]
fn mixed_expert_matmul_matches_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let (n_in, n_out, n_tok) = (512, 64, 19);
    let w: Vec<f32> = random(n_in * n_out, 1.0, 4).iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let deltas: Vec<_> = [(5u64, 2u8, Method::Salient), (6, 3, Method::Salient), (7, 1, Method::BitDelta)]
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

/// The CPU side of the above: the reference itself, on an expert whose delta is known.
#[test]
fn the_matmul_reference_adds_the_decoded_delta() {
    let (n_in, n_out) = (64, 3);
    let w = random(n_in * n_out, 1.0, 9);
    let d = compress(&random(n_in * n_out, 0.1, 10), n_in, n_out, None, &CodecParams::default()).unwrap();
    let dense = switchyard::codec::decompress_f32(&d);
    let x = random(n_in * 2, 1.0, 11);
    let y = mixed_expert_matmul(&w, &[&d], &[None, Some(0)], &x, n_in, n_out);
    for o in 0..n_out {
        let dot = |m: &[f32], t: usize| (0..n_in).map(|i| m[o * n_in + i] as f64 * x[t * n_in + i] as f64).sum::<f64>();
        assert!((y[o] as f64 - dot(&w, 0)).abs() < 1e-5);
        assert!((y[n_out + o] as f64 - dot(&w, 1) - dot(&dense, 1)).abs() < 1e-5);
    }
}
