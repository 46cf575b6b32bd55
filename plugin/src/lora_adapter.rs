//! One expert of a bundle as a llama.cpp LoRA adapter (`switchyard extract --lora RANK`): each
//! weight matrix the expert changes, its delta factored to rank r ([`crate::lowrank`]; factors
//! the bundle stores at rank r or less, `pack --rank`, as they are) and
//! written as llama.cpp's `<weight>.lora_a` / `.lora_b` pair (F16), for `--lora` on the base GGUF
//! and llama-server's per-request adapters.
//!
//! An adapter holds products with 2-D weight matrices (the linear weights and the output). What
//! else the expert changes is left at the base's and named in the report: norm weights and
//! biases (an adapter cannot hold them), token embeddings (llama.cpp pairs them the other way
//! round) and 3-D MoE expert stacks (not written by switchyard yet, though llama.cpp reads
//! them).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use rayon::prelude::*;

use crate::bundle::delta::rows_of;
use crate::bundle::in_graph::applies_in_graph;
use crate::bundle::low_rank::FACTOR_TYPE;
use crate::bundle::{Bundle, TensorDelta};
use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, Metadata, TensorInfo, TensorInfoOut};
use crate::lowrank::truncated_svd;
use crate::{quants, GgmlType};

/// What an adapter holds: each matrix factored with its rank and the share of its delta's
/// squared Frobenius norm the rank kept; the changed tensors left at the base's.
#[derive(Debug, Default)]
pub struct LoraReport {
    pub factored: Vec<(String, usize, f64)>,
    pub left_out: Vec<String>,
}

/// Whether an adapter pair for base tensor `name` of shape `ne` is applied by llama.cpp as
/// W x + B A x: the 2-D weights the bundle's graph hooks multiply by, but the token
/// embeddings, which are looked up.
fn takes_lora(name: &str, ne: &[u64]) -> bool {
    ne.len() == 2 && applies_in_graph(name, ne) && name != "token_embd.weight"
}

/// Write expert `expert` of `bundle` as a rank-`rank` LoRA adapter to `out`.
pub fn extract_lora(
    bundle: &Bundle,
    expert: &str,
    rank: usize,
    out: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<LoraReport> {
    if rank == 0 {
        return Err(Error::Invalid("--lora: the rank must be at least 1".into()));
    }
    let e = bundle.expert_index(expert)?;
    let arch = bundle.file.metadata.get_str("general.architecture")?.to_string();
    let mut report = LoraReport::default();
    let mut matrices: Vec<&TensorInfo> = Vec::new();
    for t in bundle.base_tensors() {
        if !bundle.changes(e, &t.name) {
            continue;
        }
        if takes_lora(&t.name, &t.ne) {
            matrices.push(t);
        } else {
            report.left_out.push(t.name.clone());
        }
    }
    if matrices.is_empty() {
        return Err(Error::Invalid(format!(
            "expert '{expert}' changes no weight matrix: there is nothing for a LoRA adapter to hold"
        )));
    }
    let mut metadata = Metadata::new();
    metadata.insert("general.architecture", arch.as_str());
    metadata.insert("general.type", "adapter");
    metadata.insert("general.name", format!("{expert} (switchyard, rank {rank})"));
    metadata.insert("adapter.type", "lora");
    // 0: llama.cpp scales B A by 1, not alpha / rank
    metadata.insert("adapter.lora.alpha", 0.0f32);
    // factors the bundle stores at no more than the rank asked for are written as they are
    let stored =
        |t: &TensorInfo| bundle.delta_part(e, &t.name, "lr_a").map(|a| a.ne[1] as usize).filter(|&r| r <= rank);
    let mut infos = Vec::with_capacity(2 * matrices.len());
    for t in &matrices {
        let (n_in, n_out) = rows_of(&t.ne);
        let r = stored(t).unwrap_or(rank.min(n_in).min(n_out)) as u64;
        infos.push(TensorInfoOut::new(format!("{}.lora_a", t.name), GgmlType::F16, vec![n_in as u64, r]));
        infos.push(TensorInfoOut::new(format!("{}.lora_b", t.name), GgmlType::F16, vec![r, n_out as u64]));
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    // Matrices factored a few at a time in parallel (the SVD's products are parallel inside
    // too), the factors, small beside the deltas, kept until written in order.
    let done = AtomicU64::new(0);
    let factored = matrices
        .par_iter()
        .enumerate()
        .map(|(k, t)| {
            let (n_in, n_out) = rows_of(&t.ne);
            let delta = bundle.delta(e, &t.name)?.expect("only changed tensors are factored");
            let factors = match (stored(t), delta) {
                (Some(r), TensorDelta::LowRank(l)) => {
                    let a = quants::dequantize(FACTOR_TYPE, &l.a, r * n_in)?;
                    (r, a, quants::dequantize(FACTOR_TYPE, &l.b, n_out * r)?, 1.0)
                }
                (_, delta) => {
                    let f = truncated_svd(expert_delta(bundle, t, &delta)?, n_out, n_in, rank, k as u64);
                    (f.rank, f.a, f.b, f.share_kept)
                }
            };
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, matrices.len() as u64);
            Ok(factors)
        })
        .collect::<Result<Vec<_>>>()?;
    for (t, (r, a, b, share)) in matrices.iter().zip(factored) {
        report.factored.push((t.name.clone(), r, share));
        for (part, values) in [("lora_a", &a), ("lora_b", &b)] {
            w.write_tensor_data(&format!("{}.{part}", t.name), &f16_bytes(values, expert, &t.name)?)?;
        }
    }
    w.finish()?;
    Ok(report)
}

/// `delta` (an expert's stored delta of base tensor `t`) as values, row-major: W_expert - W_base
/// as llama.cpp computes with them (the base dequantized), whatever form the bundle stores it in.
fn expert_delta(bundle: &Bundle, t: &TensorInfo, delta: &TensorDelta) -> Result<Vec<f32>> {
    let (n_in, n_out) = rows_of(&t.ne);
    let base = quants::dequantize_par(t.ty, bundle.file.try_tensor_data(t)?, n_in * n_out, n_in)
        .map_err(|err| Error::Invalid(format!("tensor '{}': {err}", t.name)))?;
    let mut d = base.clone();
    d.chunks_mut(n_in).enumerate().for_each(|(r, row)| delta.apply_row(r, row));
    d.iter_mut().zip(&base).for_each(|(x, b)| *x -= b);
    Ok(d)
}

/// F16 bytes of `v`, refusing values F16 cannot hold (they would load as infinities).
fn f16_bytes(v: &[f32], expert: &str, tensor: &str) -> Result<Vec<u8>> {
    if let Some(x) = v.iter().find(|x| !x.is_finite() || x.abs() > f16::MAX.to_f32()) {
        return Err(Error::Invalid(format!(
            "expert '{expert}', tensor '{tensor}': a LoRA factor value {x} does not fit F16"
        )));
    }
    Ok(v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect())
}
