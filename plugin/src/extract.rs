//! `extract`: one expert of a bundle as a standalone GGUF that stock llama.cpp loads.

use std::path::Path;

use half::{bf16, f16};

use crate::bundle::naming::PREFIX;
use crate::bundle::{materialize, Bundle, TensorDelta};
use crate::codec::Output;
use crate::error::Result;
use crate::gguf::{GgufWriter, TensorInfoOut};
use crate::GgmlType;

/// The type changed tensors are written in. Unchanged tensors always keep the base's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtractType {
    /// F32 where the base is F32 (lossless), F16 otherwise: base + delta rarely fits the base's
    /// quantized type exactly, and F16 holds it to ~3 significant digits.
    Auto,
    F32,
    F16,
    BF16,
}

/// The type a changed tensor is written in. 1-D tensors (norms, biases) and whole
/// replacements are always F32 so they stay exact.
pub fn output_type(choice: ExtractType, base_ty: GgmlType, ne: &[u64], delta: &TensorDelta) -> GgmlType {
    if ne.len() == 1 || matches!(delta, TensorDelta::Replace { .. }) {
        return GgmlType::F32;
    }
    match choice {
        ExtractType::Auto if base_ty == GgmlType::F32 => GgmlType::F32,
        ExtractType::Auto => GgmlType::F16,
        ExtractType::F32 => GgmlType::F32,
        ExtractType::F16 => GgmlType::F16,
        ExtractType::BF16 => GgmlType::BF16,
    }
}

/// Per-type counts of what was written, for the command line to report.
#[derive(Debug, Default)]
pub struct ExtractReport {
    pub changed: Vec<(String, GgmlType, GgmlType)>,
    pub unchanged: usize,
}

/// Write expert `expert` (or "base") of `bundle` to `out`.
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
    for t in &base {
        let d = match e {
            Some(e) => bundle.delta(e, &t.name)?,
            None => None,
        };
        let ty = match &d {
            Some(d) => {
                let ty = output_type(choice, t.ty, &t.ne, d);
                report.changed.push((t.name.clone(), t.ty, ty));
                ty
            }
            None => {
                report.unchanged += 1;
                t.ty
            }
        };
        infos.push(TensorInfoOut::new(t.name.clone(), ty, t.ne.clone()));
        deltas.push(d);
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    for (k, ((t, d), info)) in base.iter().zip(&deltas).zip(&infos).enumerate() {
        progress(k as u64, base.len() as u64);
        let bytes = bundle.file.try_tensor_data(t)?;
        let Some(d) = d else {
            w.write_tensor_data(&t.name, bytes)?;
            continue;
        };
        let n = t.n_elements() as usize;
        let buf: Vec<u8> = match info.ty {
            GgmlType::F32 => {
                let mut v = vec![0.0f32; n];
                materialize(t, bytes, Some(d), Output::F32(&mut v))?;
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            GgmlType::F16 => {
                let mut v = vec![f16::ZERO; n];
                materialize(t, bytes, Some(d), Output::F16(&mut v))?;
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            GgmlType::BF16 => {
                let mut v = vec![bf16::ZERO; n];
                materialize(t, bytes, Some(d), Output::BF16(&mut v))?;
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            other => unreachable!("output_type never picks {other}"),
        };
        w.write_tensor_data(&t.name, &buf)?;
    }
    progress(base.len() as u64, base.len() as u64);
    w.finish()?;
    Ok(report)
}
