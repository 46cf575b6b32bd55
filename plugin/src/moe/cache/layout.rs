//! Where a mixture-of-experts GGUF keeps its experts: per layer, the stacked tensors
//! ffn_{gate,up,down}_exps (all experts of a layer in one tensor, expert e's bytes at e times
//! the size of one), the low-precision copies `moe-pack` adds beside them, and the per-layer
//! skipping thresholds it stores.

use crate::error::Result;
use crate::gguf::{Array, GgufFile, Value};
use crate::moe::low_precision::{low_name, EXPERT_KINDS, SKIP_BETA_KEY};
use crate::GgmlType;

/// One stacked expert tensor of a layer.
pub struct StackedTensor {
    pub name: String,
    pub ty: GgmlType,
    /// Values per row.
    pub ne0: usize,
    /// Where expert 0 starts in the file.
    pub file_offset: u64,
    pub expert_bytes: usize,
    pub total_bytes: usize,
    pub low: Option<LowCopy>,
}

/// Where a stacked tensor's low-precision copy lies in the file.
pub struct LowCopy {
    pub ty: GgmlType,
    pub file_offset: u64,
    pub expert_bytes: usize,
}

pub struct ExpertLayout {
    pub n_expert: usize,
    /// Per layer of the model, its stacked tensors (empty for a dense layer).
    pub layers: Vec<Vec<StackedTensor>>,
    /// Bytes of all experts, in their own precision.
    pub total_bytes: u64,
}

impl ExpertLayout {
    /// Every layer's stacked expert tensors, with their low-precision copies; `need_low` refuses
    /// a tensor without one.
    pub fn find(gguf: &GgufFile, need_low: bool) -> Result<ExpertLayout> {
        let label = gguf.label();
        let (n_layer, n_expert) = crate::moe::moe_shape(gguf, "offload")?;
        let mut layers = Vec::with_capacity(n_layer);
        let mut total_bytes = 0u64;
        for il in 0..n_layer {
            let mut stacked = Vec::new();
            for kind in EXPERT_KINDS {
                let name = format!("blk.{il}.{kind}.weight");
                let Some(t) = gguf.tensor(&name) else { continue };
                let bytes = t.n_bytes();
                if t.ne.len() != 3 || t.ne[2] != n_expert as u64 || !bytes.is_multiple_of(n_expert as u64) {
                    crate::bail_invalid!("{label}: tensor '{name}' is {:?}, not [.., .., {n_expert}] experts", t.ne);
                }
                total_bytes += bytes;
                let low = match gguf.tensor(&low_name(&name)) {
                    Some(c) if c.ne == t.ne && c.n_bytes().is_multiple_of(n_expert as u64) => Some(LowCopy {
                        ty: c.ty,
                        file_offset: gguf.data_offset + c.offset,
                        expert_bytes: (c.n_bytes() / n_expert as u64) as usize,
                    }),
                    Some(c) => crate::bail_invalid!("{label}: tensor '{}' is {:?}, its expert {:?}", c.name, c.ne, t.ne),
                    None if need_low => crate::bail_invalid!(
                        "{label}: t1 < 1 loads low-precision copies, and '{name}' has none: pack the model with `switchyard moe-pack`"
                    ),
                    None => None,
                };
                stacked.push(StackedTensor {
                    name,
                    ty: t.ty,
                    ne0: t.ne[0] as usize,
                    file_offset: gguf.data_offset + t.offset,
                    expert_bytes: (bytes / n_expert as u64) as usize,
                    total_bytes: bytes as usize,
                    low,
                });
            }
            layers.push(stacked);
        }
        if total_bytes == 0 {
            crate::bail_invalid!("{label}: no ffn_*_exps tensors to offload");
        }
        Ok(ExpertLayout { n_expert, layers, total_bytes })
    }

    /// The stacked tensor called `name`: its layer and its place among the layer's tensors.
    pub fn tensor(&self, name: &str) -> Option<(usize, usize)> {
        self.layers.iter().enumerate().find_map(|(il, ts)| ts.iter().position(|s| s.name == name).map(|i| (il, i)))
    }

    /// Bytes of one expert of layer `layer` in all its tensors.
    pub fn expert_bytes(&self, layer: usize) -> u64 {
        self.layers[layer].iter().map(|s| s.expert_bytes as u64).sum()
    }
}

/// Per layer, the skipping threshold beta that `moe-pack --trace` stores.
pub fn skip_betas(gguf: &GgufFile, n_layer: usize) -> Result<Vec<f64>> {
    match gguf.metadata.get(SKIP_BETA_KEY) {
        Some(Value::Array(Array::F32(b))) if b.len() == n_layer => Ok(b.iter().map(|&v| v as f64).collect()),
        _ => crate::bail_invalid!(
            "{}: no per-layer skipping thresholds ({SKIP_BETA_KEY}, {n_layer} f32): pack the model with `switchyard moe-pack --trace`",
            gguf.label()
        ),
    }
}
