//! The quantizers and dequantizers of `switchyard::quants` against independent
//! implementations: golden files made by `scripts/golden/make_quant_golden.py` with gguf-py's
//! numpy code (ggml-org's `gguf` package), and, for quantization to the k-quants (which gguf-py
//! lacks), with ggml's own C reference quantizers. See that script for the file formats and
//! versions.
//!
//! Every comparison is exact: dequantized f32s are compared by their bit patterns and quantized
//! blocks byte for byte. gguf-py evaluates each type's formula in the same order as ggml's C
//! reference (scale widened to f32, then `d * q`, `d * q + m` or `dl * q - ml`, never fused),
//! so no tolerance is needed for any type.

use std::path::PathBuf;

use switchyard::quants::{dequantize, dequantize_par, quantize, quantize_par, DEQUANTIZABLE, QUANTIZABLE};
use switchyard::GgmlType;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/quants")
}

fn read(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/golden/make_quant_golden.py)", path.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = read(name);
    assert_eq!(bytes.len() % 4, 0, "{name}");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// First differing element, formatted, or None when bit-identical.
fn first_bit_difference(got: &[f32], want: &[f32]) -> Option<String> {
    assert_eq!(got.len(), want.len());
    let diffs: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    diffs.first().map(|&i| {
        format!(
            "{} of {} elements differ; first at {i}: got {} ({:#010x}), gguf-py {} ({:#010x})",
            diffs.len(),
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        )
    })
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let mut failures = Vec::new();
    // every type the crate reads; Q8_K is not in gguf-py (ggml's own dequantization of it is
    // checked with the k-quants below)
    for &ty in DEQUANTIZABLE.iter().filter(|&&ty| ty != GgmlType::Q8_K) {
        let src = read(&format!("{}.bin", ty.name()));
        let want = read_f32(&format!("{}.f32", ty.name()));
        assert!(!want.is_empty(), "{ty}: empty golden file");
        let got = dequantize(ty, &src, want.len()).unwrap_or_else(|e| panic!("{ty}: {e}"));
        if let Some(d) = first_bit_difference(&got, &want) {
            failures.push(format!("{ty}: {d}"));
        }
        // one block per row: the parallel path agrees too
        let ne0 = ty.block_size().max(32);
        let par = dequantize_par(ty, &src, want.len(), ne0).unwrap_or_else(|e| panic!("{ty}: {e}"));
        if let Some(d) = first_bit_difference(&par, &want) {
            failures.push(format!("{ty} (parallel): {d}"));
        }
    }
    assert!(failures.is_empty(), "dequantization differs from gguf-py:\n{}", failures.join("\n"));
}

#[test]
fn quantize_matches_gguf_py_byte_for_byte() {
    let x = read_f32("quant_input.f32");
    assert_eq!(x.len() % 256, 0, "quant_input.f32 should hold whole 256-element rows");
    let mut failures = Vec::new();
    // every type the crate writes; gguf-py lacks the k-quants (checked against ggml below), and
    // an F32 "quantization" is the input's own bytes
    for &ty in QUANTIZABLE.iter().filter(|ty| !KQUANT_TYPES.contains(ty)) {
        let want = match ty {
            GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => read(&format!("quant_{}.bin", ty.name())),
        };
        let got = quantize(ty, &x).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(got.len(), want.len(), "{ty}: quantized size");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            let (blk, size) = ty.block_geometry();
            let b = i / size;
            failures.push(format!(
                "{ty}: byte {i} (block {b}, input elements {}..{}) is {:#04x}, gguf-py has {:#04x}",
                b * blk,
                (b + 1) * blk,
                got[i],
                want[i]
            ));
        }
        assert_eq!(quantize_par(ty, &x, 256).unwrap(), got, "{ty}: parallel quantization");
    }
    assert!(failures.is_empty(), "quantization differs from gguf-py:\n{}", failures.join("\n"));
}

/// The types whose quantization reference is ggml's C code (gguf-py cannot make them).
const KQUANT_TYPES: [GgmlType; 6] =
    [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K];

#[test]
fn kquant_quantize_matches_ggml_byte_for_byte() {
    let x = read_f32("kquant_input.f32");
    assert_eq!(x.len() % 256, 0);
    let mut failures = Vec::new();
    for ty in KQUANT_TYPES {
        let want = read(&format!("quant_{}.bin", ty.name()));
        let got = quantize(ty, &x).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(got.len(), want.len(), "{ty}: quantized size");
        let size = ty.block_geometry().1;
        let bad: Vec<usize> = (0..got.len() / size)
            .filter(|&b| got[b * size..(b + 1) * size] != want[b * size..(b + 1) * size])
            .collect();
        if let Some(&b) = bad.first() {
            failures.push(format!(
                "{ty}: {} of {} super-blocks differ from ggml, first {b}",
                bad.len(),
                got.len() / size
            ));
        }
        assert_eq!(quantize_par(ty, &x, 512).unwrap(), got, "{ty}: parallel quantization");
    }
    // and ggml's dequantization of its own Q8_K output
    let q8k = read("quant_q8_K.bin");
    let want = read_f32("quant_q8_K.f32");
    let got = dequantize(GgmlType::Q8_K, &q8k, want.len()).unwrap();
    if let Some(d) = first_bit_difference(&got, &want) {
        failures.push(format!("q8_K dequantization: {d}"));
    }
    assert!(failures.is_empty(), "k-quant quantization differs from ggml:\n{}", failures.join("\n"));
}

#[test]
fn golden_files_are_small() {
    // They are committed: keep the whole folder well under 100 KB.
    let total: u64 = std::fs::read_dir(golden_dir()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(total < 100 * 1024, "golden quant files take {total} bytes");
}
