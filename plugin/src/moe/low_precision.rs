//! Low-precision expert copies and skipping thresholds (`switchyard moe-pack`): a
//! mixture-of-experts GGUF with what the `--moe-cache` runtime needs besides the model: a
//! low-precision copy of every expert (the mixed-precision loading of HOBBIT, "A Mixed Precision
//! Expert Offloading System for Fast MoE Inference", arXiv 2411.01433) and, per layer, the
//! dynamic-skipping threshold beta of "Not All Experts are Equal: Efficient Expert Pruning and
//! Skipping for Mixture-of-Experts Large Language Models" (arXiv 2402.14800).
//!
//! The copies are tensors named `switchyard.low.<name>` beside each stacked expert tensor, in a
//! ggml quant type (Q4_0 by default: 4.5 bits against the experts' own 16 or 32). The patched
//! llama.cpp never loads tensors named `switchyard.*` (as with a bundle's deltas); stock
//! llama.cpp refuses the extra tensors, so the unpacked file stays the one to compare against.
//! At run time a low-precision load reads the copy and widens it into the expert's own type in
//! place ([`widen_expert`]): on CPU it saves the read, not the memory.
//!
//! beta of a layer is the median over calibration tokens of w2 / w1, the gate weights of the
//! token's second and first pick (from a routing trace), stored as `switchyard.moe.skip_beta`,
//! one f32 per layer (0, never skip, for a layer without experts).

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, GgufWriter, TensorInfo, TensorInfoOut, Value};
use crate::moe::trace::Trace;
use crate::quants::{can_dequantize, can_quantize, dequantize_par, dequantize_par_into, quantize_par, quantize_row};
use crate::GgmlType;

/// The three stacked expert tensors of a layer, as llama.cpp names them.
pub const EXPERT_KINDS: [&str; 3] = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"];

/// What prefixes a low-precision copy's name.
pub const LOW_PREFIX: &str = "switchyard.low.";

/// Per-layer skipping thresholds (f32 array, one per layer).
pub const SKIP_BETA_KEY: &str = "switchyard.moe.skip_beta";

/// The name of the low-precision copy of expert tensor `name`.
pub fn low_name(name: &str) -> String {
    format!("{LOW_PREFIX}{name}")
}

#[derive(Clone, Debug)]
pub struct MoePackOptions {
    /// The copies' ggml type.
    pub low_type: GgmlType,
    /// Routing on calibration text, for the skipping thresholds (none: no thresholds stored).
    pub trace: Option<Trace>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoePackReport {
    pub n_tensors: usize,
    /// Bytes of the experts, and of their low-precision copies.
    pub high_bytes: u64,
    pub low_bytes: u64,
    /// Per layer (model numbering), when a trace was given.
    pub skip_beta: Option<Vec<f32>>,
}

/// Per MoE layer of `trace`, the median over its tokens of w2 / w1 (tokens with a second pick
/// and a positive first weight; 0 for a layer with none).
pub fn skip_betas(trace: &Trace) -> Vec<f32> {
    (0..trace.n_layers)
        .map(|l| {
            let mut ratios: Vec<f32> = trace
                .tokens
                .iter()
                .filter_map(|t| match t.layers[l].as_slice() {
                    [(_, w1), (_, w2), ..] if *w1 > 0.0 => Some(w2 / w1),
                    _ => None,
                })
                .collect();
            ratios.sort_by(f32::total_cmp);
            match ratios.len() {
                0 => 0.0,
                n if n % 2 == 1 => ratios[n / 2],
                n => 0.5 * (ratios[n / 2 - 1] + ratios[n / 2]),
            }
        })
        .collect()
}

/// Writes `src` with a low-precision copy of every expert tensor and, given a trace, the
/// layers' skipping thresholds, to `output` (atomically).
pub fn moe_pack(src: &GgufFile, opts: &MoePackOptions, output: &Path) -> Result<MoePackReport> {
    let label = src.label();
    let (n_layer, n_expert) = crate::moe::moe_shape(src, "pack")?;
    if let Some(t) = src.tensors.iter().find(|t| t.name.starts_with(LOW_PREFIX)) {
        crate::bail_invalid!("{label}: already packed (it holds '{}'); pack the original model", t.name);
    }
    let low = opts.low_type;
    if !can_quantize(low) || low.is_float() {
        crate::bail_invalid!("{label}: low-precision type {low}: not a ggml quant type switchyard can write");
    }
    // per layer, its expert tensors; a layer with none is dense
    let mut experts: Vec<Vec<&TensorInfo>> = vec![Vec::new(); n_layer];
    for (il, found) in experts.iter_mut().enumerate() {
        for kind in EXPERT_KINDS {
            let name = format!("blk.{il}.{kind}.weight");
            let Some(t) = src.tensor(&name) else { continue };
            if t.ne.len() != 3 || t.ne[2] != n_expert as u64 {
                crate::bail_invalid!("{label}: tensor '{name}' is {:?}, not [.., .., {n_expert}] experts", t.ne);
            }
            // the runtime widens a copy back into this type
            if !can_dequantize(t.ty) || !can_quantize(t.ty) {
                crate::bail_invalid!("{label}: tensor '{name}' is {}, which switchyard cannot convert", t.ty);
            }
            if !(t.ne[0] as usize).is_multiple_of(low.block_size()) {
                crate::bail_invalid!(
                    "{label}: tensor '{name}' has rows of {} values, not whole {low} blocks of {} (try q8_0 or q4_0)",
                    t.ne[0],
                    low.block_size()
                );
            }
            found.push(t);
        }
    }
    let moe_layers: Vec<usize> = (0..n_layer).filter(|&l| !experts[l].is_empty()).collect();
    if moe_layers.is_empty() {
        crate::bail_invalid!("{label}: no ffn_*_exps tensors to pack");
    }
    let mut metadata = src.metadata.clone();
    let skip_beta = match &opts.trace {
        None => None,
        Some(trace) => {
            if trace.n_layers != moe_layers.len() || trace.n_experts != n_expert {
                crate::bail_invalid!(
                    "{label}: the trace has {} MoE layers of {} experts, the model {} of {n_expert}",
                    trace.n_layers,
                    trace.n_experts,
                    moe_layers.len()
                );
            }
            let mut beta = vec![0f32; n_layer];
            for (&l, b) in moe_layers.iter().zip(skip_betas(trace)) {
                beta[l] = b;
            }
            metadata.insert(SKIP_BETA_KEY, Value::Array(Array::F32(beta.clone())));
            Some(beta)
        }
    };

    let mut infos: Vec<TensorInfoOut> =
        src.tensors.iter().map(|t| TensorInfoOut::new(t.name.clone(), t.ty, t.ne.clone())).collect();
    let copies: Vec<&TensorInfo> = experts.iter().flatten().copied().collect();
    infos.extend(copies.iter().map(|t| TensorInfoOut::new(low_name(&t.name), low, t.ne.clone())));
    let mut w = GgufWriter::create(output, &metadata, &infos)?;
    for t in &src.tensors {
        w.write_tensor_data(&t.name, src.try_tensor_data(t)?)?;
    }
    let (mut high_bytes, mut low_bytes) = (0u64, 0u64);
    for t in &copies {
        let data = src.try_tensor_data(t)?;
        let per_expert = data.len() / n_expert;
        let ne0 = t.ne[0] as usize;
        let n = (t.ne[0] * t.ne[1]) as usize;
        w.begin_tensor(&low_name(&t.name))?;
        for expert in data.chunks_exact(per_expert) {
            let named = |e: Error| Error::Invalid(format!("{label}: tensor '{}': {e}", t.name));
            let values = dequantize_par(t.ty, expert, n, ne0).map_err(named)?;
            let narrowed = quantize_par(low, &values, ne0).map_err(named)?;
            low_bytes += narrowed.len() as u64;
            w.write_chunk(&narrowed)?;
        }
        w.end_tensor()?;
        high_bytes += data.len() as u64;
    }
    w.finish()?;
    Ok(MoePackReport { n_tensors: copies.len(), high_bytes, low_bytes, skip_beta })
}

/// Widens one expert's low-precision copy `low` (type `low_ty`, rows of `ne0`) into `dst`, the
/// expert's place in its own type `high_ty`: dequantized, then quantized to `high_ty`.
pub fn widen_expert(low_ty: GgmlType, low: &[u8], high_ty: GgmlType, ne0: usize, dst: &mut [u8]) -> Result<()> {
    let row_bytes = high_ty.row_bytes(ne0 as u64)? as usize;
    if ne0 == 0 || row_bytes == 0 || !dst.len().is_multiple_of(row_bytes) {
        crate::bail_invalid!("widening {low_ty} to {high_ty}: {} bytes are not whole rows of {ne0}", dst.len());
    }
    let mut values = vec![0f32; dst.len() / row_bytes * ne0];
    dequantize_par_into(low_ty, low, ne0, &mut values)?;
    for (x, y) in values.chunks_exact(ne0).zip(dst.chunks_exact_mut(row_bytes)) {
        quantize_row(high_ty, x, y)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{write_gguf, Metadata};
    use crate::moe::trace::TokenRoute;

    fn route(layers: Vec<Vec<(u32, f32)>>) -> TokenRoute {
        TokenRoute { seq: 0, layers }
    }

    #[test]
    fn beta_is_the_median_of_the_second_over_the_first_weight() {
        let tokens = vec![
            route(vec![vec![(0, 0.8), (1, 0.2)], vec![(2, 0.5)]]),
            route(vec![vec![(1, 0.5), (3, 0.4)], vec![(2, 0.5)]]),
            route(vec![vec![(2, 0.6), (0, 0.3)], vec![(1, 0.0), (0, 0.0)]]),
        ];
        let trace = Trace { n_layers: 2, n_experts: 4, tokens };
        // layer 0: ratios 0.25, 0.8, 0.5 -> 0.5; layer 1: no token with two weighted picks
        assert_eq!(skip_betas(&trace), vec![0.5, 0.0]);
    }

    /// A 2-layer model whose layer 1 alone has 2 experts of F32 [64, 3].
    fn model(dir: &Path) -> std::path::PathBuf {
        let mut md = Metadata::new();
        md.insert("general.architecture", Value::String("llama".into()));
        md.insert("llama.block_count", Value::U32(2));
        md.insert("llama.expert_count", Value::U32(2));
        let values: Vec<f32> = (0..64 * 3 * 2).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors: Vec<(TensorInfoOut, &[u8])> = EXPERT_KINDS
            .iter()
            .map(|k| (TensorInfoOut::new(format!("blk.1.{k}.weight"), GgmlType::F32, [64u64, 3, 2]), &bytes[..]))
            .collect();
        let path = dir.join("moe.gguf");
        write_gguf(&path, &md, &tensors).unwrap();
        path
    }

    #[test]
    fn copies_widen_back_close_to_the_experts_and_betas_land_per_layer() {
        let dir = tempfile::tempdir().unwrap();
        let src = GgufFile::open(model(dir.path())).unwrap();
        let tokens = vec![route(vec![vec![(0, 0.6), (1, 0.3)]])];
        let opts =
            MoePackOptions { low_type: GgmlType::Q4_0, trace: Some(Trace { n_layers: 1, n_experts: 2, tokens }) };
        let out = dir.path().join("packed.gguf");
        let report = moe_pack(&src, &opts, &out).unwrap();
        assert_eq!((report.n_tensors, report.high_bytes), (3, 3 * 64 * 3 * 2 * 4));
        assert_eq!(report.low_bytes, 3 * 2 * 3 * 2 * 18, "two Q4_0 blocks of 18 bytes per row");
        let packed = GgufFile::open(&out).unwrap();
        match packed.metadata.get_array(SKIP_BETA_KEY).unwrap() {
            Array::F32(b) => assert_eq!(b, &vec![0.0, 0.5]),
            other => panic!("{other:?}"),
        }
        let high = packed.tensor("blk.1.ffn_up_exps.weight").unwrap();
        let copy = packed.tensor(&low_name(&high.name)).unwrap();
        assert_eq!((copy.ty, &copy.ne), (GgmlType::Q4_0, &high.ne));
        // expert 1, widened into F32 as the runtime does
        let half = copy.n_bytes() as usize / 2;
        let mut widened = vec![0u8; 64 * 3 * 4];
        widen_expert(GgmlType::Q4_0, &packed.tensor_data(copy)[half..], GgmlType::F32, 64, &mut widened).unwrap();
        let original = &packed.tensor_data(high)[64 * 3 * 4..];
        let f = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let max_err = f(original).iter().zip(f(&widened)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // within one Q4_0 step of a block whose largest magnitude is 2: 2 / 8
        assert!(max_err > 0.0 && max_err <= 0.25 + 1e-6, "{max_err}");
        // packing twice is refused, naming the copy found
        let err = moe_pack(&packed, &opts, &dir.path().join("again.gguf")).unwrap_err().to_string();
        assert!(err.contains("already packed") && err.contains("switchyard.low.blk.1"), "{err}");
    }

    #[test]
    fn bad_inputs_are_named_and_leave_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let src = GgufFile::open(model(dir.path())).unwrap();
        let out = dir.path().join("packed.gguf");
        let opts = MoePackOptions { low_type: GgmlType::Q4_K, trace: None };
        let err = moe_pack(&src, &opts, &out).unwrap_err().to_string();
        assert!(err.contains("'blk.1.ffn_gate_exps.weight'") && err.contains("rows of 64"), "{err}");
        let trace = Trace { n_layers: 2, n_experts: 2, tokens: vec![] };
        let opts = MoePackOptions { low_type: GgmlType::Q8_0, trace: Some(trace) };
        let err = moe_pack(&src, &opts, &out).unwrap_err().to_string();
        assert!(err.contains("2 MoE layers") && err.contains("the model 1"), "{err}");
        let opts = MoePackOptions { low_type: GgmlType::F16, trace: None };
        assert!(moe_pack(&src, &opts, &out).unwrap_err().to_string().contains("not a ggml quant type"));
        assert!(!out.exists());
        let mut narrow = vec![0u8; 10];
        assert!(widen_expert(GgmlType::Q4_0, &[0; 18], GgmlType::F32, 32, &mut narrow).is_err());
    }
}
