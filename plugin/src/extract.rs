//! `extract`: one expert of a bundle as a standalone GGUF that stock llama.cpp loads.

use std::path::Path;

use crate::bundle::naming::PREFIX;
use crate::bundle::{materialize, Bundle};
use crate::codec::Output;
use crate::error::Result;
use crate::gguf::{GgufWriter, TensorInfoOut};
use crate::GgmlType;

/// The type changed tensors are written in. Unchanged tensors always keep the base's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtractType {
    /// [`Bundle::materialized_type`]: F32 where that is exact (1-D tensors, F32 bases, whole
    /// replacements), F16 otherwise. Every expert of a bundle, "base" included, gets the same
    /// types. (The patched llama.cpp does not materialize: it adds each delta's product in
    /// the graph, within a small KL divergence of this; tests/plugin_llama.rs.)
    Auto,
    F32,
    F16,
    BF16,
}

/// The type tensor `name` (changed by some expert) is written in.
pub fn output_type(bundle: &Bundle, choice: ExtractType, name: &str) -> Option<GgmlType> {
    let auto = bundle.materialized_type(name)?;
    Some(match choice {
        ExtractType::Auto => auto,
        // 1-D tensors and whole replacements stay F32 whatever is asked: they are exact there.
        _ if auto == GgmlType::F32 && bundle.file.tensor(name).is_some_and(|t| t.ne.len() == 1) => GgmlType::F32,
        ExtractType::F32 => GgmlType::F32,
        ExtractType::F16 => GgmlType::F16,
        ExtractType::BF16 => GgmlType::BF16,
    })
}

/// Per-type counts of what was written, for the command line to report.
#[derive(Debug, Default)]
pub struct ExtractReport {
    pub changed: Vec<(String, GgmlType, GgmlType)>,
    pub unchanged: usize,
}

/// Write expert `expert` (or "base") of `bundle` to `out`: tensors no expert changes keep the
/// base's bytes, the others are materialized (W_base + this expert's delta, if any).
pub fn extract(
    bundle: &Bundle,
    expert: &str,
    choice: ExtractType,
    out: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<ExtractReport> {
    let e = if expert == "base" { None } else { Some(bundle.expert_index(expert)?) };
    let mut metadata = bundle.file.metadata.clone();
    let ours: Vec<String> = metadata.keys().filter(|k| k.starts_with(PREFIX)).map(String::from).collect();
    for k in ours {
        metadata.remove(&k);
    }
    let base: Vec<_> = bundle.base_tensors().collect();
    let mut deltas = Vec::with_capacity(base.len());
    let mut infos = Vec::with_capacity(base.len());
    let mut report = ExtractReport::default();
    let mut managed = Vec::with_capacity(base.len());
    for t in &base {
        let d = match e {
            Some(e) => bundle.delta(e, &t.name)?,
            None => None,
        };
        let ty = match output_type(bundle, choice, &t.name) {
            Some(ty) => {
                report.changed.push((t.name.clone(), t.ty, ty));
                ty
            }
            None => {
                report.unchanged += 1;
                t.ty
            }
        };
        // Tensors some expert changes are materialized for every expert, "base" included.
        managed.push(bundle.materialized_type(&t.name).is_some());
        infos.push(TensorInfoOut::new(t.name.clone(), ty, t.ne.clone()));
        deltas.push(d);
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    let mut scratch: Vec<u32> = Vec::new();
    for (k, (((t, d), info), &managed)) in base.iter().zip(&deltas).zip(&infos).zip(&managed).enumerate() {
        progress(k as u64, base.len() as u64);
        let bytes = bundle.file.try_tensor_data(t)?;
        if !managed {
            w.write_tensor_data(&t.name, bytes)?;
            continue;
        }
        let d = d.as_ref();
        let bytes_out = info.n_bytes() as usize;
        // u32 storage: aligned for every float type, reused across tensors.
        scratch.resize(bytes_out.div_ceil(4), 0);
        let buf = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut scratch[..])[..bytes_out];
        materialize(t, bytes, d, Output::from_bytes(info.ty, buf)?)?;
        w.write_tensor_data(&t.name, buf)?;
    }
    progress(base.len() as u64, base.len() as u64);
    w.finish()?;
    Ok(report)
}
