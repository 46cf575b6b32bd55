//! One expert of a bundle as a llama.cpp LoRA adapter (`switchyard extract --lora RANK`): each
//! weight matrix the expert changes, its delta factored to rank r ([`crate::lowrank`]) and
//! written as llama.cpp's `<weight>.lora_a` / `.lora_b` pair (F16), for `--lora` on the base GGUF
//! and llama-server's per-request adapters.
//!
//! A LoRA adapter only adds products to matrices, so what else the expert changes (norm
//! weights, biases, token embeddings, 3-D expert stacks) is not in the adapter: the report
//! names it, and the adapter is then an approximation of the expert beyond the rank's.

use std::path::Path;

use half::f16;

use crate::bundle::delta::rows_of;
use crate::bundle::{Bundle, TensorDelta};
use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, Metadata, TensorInfoOut};
use crate::lowrank::truncated_svd;
use crate::GgmlType;

/// What an adapter holds: the matrices factored, with the share of the delta's squared
/// Frobenius norm the rank kept, and the changed tensors it cannot hold.
#[derive(Debug, Default)]
pub struct LoraReport {
    pub factored: Vec<(String, usize, f64)>,
    pub left_out: Vec<String>,
}

/// Whether llama.cpp applies a LoRA pair to base tensor `name` of shape `ne` as W x + B A x
/// (token embeddings are looked up, not multiplied: their pairs follow another convention).
fn takes_lora(name: &str, ne: &[u64]) -> bool {
    ne.len() == 2 && name.ends_with(".weight") && name != "token_embd.weight"
}

/// Write expert `expert` of `bundle` as a rank-`rank` LoRA adapter to `out`.
pub fn extract_lora(
    bundle: &Bundle,
    expert: &str,
    rank: usize,
    out: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<LoraReport> {
    if rank == 0 {
        return Err(Error::Invalid("--lora: the rank must be at least 1".into()));
    }
    let e = bundle.expert_index(expert)?;
    let arch = bundle.file.metadata.get_str("general.architecture")?.to_string();
    let mut report = LoraReport::default();
    let mut pending = Vec::new();
    for t in bundle.base_tensors() {
        match bundle.delta(e, &t.name)? {
            None => {}
            Some(d @ (TensorDelta::Codec(_) | TensorDelta::Dense { .. })) if takes_lora(&t.name, &t.ne) => {
                pending.push((t.clone(), d))
            }
            Some(_) => report.left_out.push(t.name.clone()),
        }
    }
    if pending.is_empty() {
        return Err(Error::Invalid(format!(
            "expert '{expert}' changes no weight matrix: there is nothing for a LoRA adapter to hold"
        )));
    }
    let mut metadata = Metadata::new();
    metadata.insert("general.architecture", arch.as_str());
    metadata.insert("general.type", "adapter");
    metadata.insert("general.name", format!("{expert} (switchyard, rank {rank})"));
    metadata.insert("adapter.type", "lora");
    metadata.insert("adapter.lora.alpha", 0.0f32); // 0: llama.cpp scales B A by 1, not alpha / rank
    let mut infos = Vec::with_capacity(2 * pending.len());
    for (t, _) in &pending {
        let (n_in, n_out) = rows_of(&t.ne);
        let r = rank.min(n_in).min(n_out) as u64;
        infos.push(TensorInfoOut::new(format!("{}.lora_a", t.name), GgmlType::F16, vec![n_in as u64, r]));
        infos.push(TensorInfoOut::new(format!("{}.lora_b", t.name), GgmlType::F16, vec![r, n_out as u64]));
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    for (k, (t, d)) in pending.iter().enumerate() {
        progress(k as u64, pending.len() as u64);
        let (n_in, n_out) = rows_of(&t.ne);
        let mut dense = vec![0.0f32; n_in * n_out];
        dense.chunks_mut(n_in).enumerate().for_each(|(r, row)| d.apply_row(r, row));
        let f = truncated_svd(&dense, n_out, n_in, rank, k as u64);
        let total: f64 = dense.iter().map(|v| (*v as f64).powi(2)).sum();
        let kept: f64 = f.singular_values.iter().map(|s| (*s as f64).powi(2)).sum();
        report.factored.push((t.name.clone(), f.rank, if total > 0.0 { kept / total } else { 1.0 }));
        w.write_tensor_data(&format!("{}.lora_a", t.name), &f16_bytes(&f.a))?;
        w.write_tensor_data(&format!("{}.lora_b", t.name), &f16_bytes(&f.b))?;
    }
    progress(pending.len() as u64, pending.len() as u64);
    w.finish()?;
    Ok(report)
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect()
}
