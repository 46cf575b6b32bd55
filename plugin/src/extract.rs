//! `extract`: one expert of a bundle as a standalone GGUF that stock llama.cpp loads.

use std::path::Path;

use crate::bundle::naming::PREFIX;
use crate::bundle::{materialize, Bundle};
use crate::codec::Output;
use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, TensorInfoOut};
use crate::{quants, GgmlType};

/// The type changed tensors are written in. Unchanged tensors always keep the base's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtractType {
    /// [`Bundle::materialized_type`]: F32 where that is exact (1-D tensors, F32 bases, whole
    /// replacements), F16 otherwise. Every expert of a bundle, "base" included, gets the same
    /// types. (The patched llama.cpp does not materialize: it adds each delta's product in
    /// the graph, within a small KL divergence of this; tests/plugin_llama.rs.)
    Auto,
    /// Each changed tensor in its base tensor's own type, so the expert has the base file's
    /// quantization layout (a Q4_K_M base gives a Q4_K_M expert, at the base's speed).
    /// Quantized with ggml's reference quantizers, as llama-quantize without an imatrix.
    Base,
    /// Every changed tensor of two or more dimensions in this type (float or quantized).
    Type(GgmlType),
}

impl ExtractType {
    /// `auto`, `base` or a ggml type name (`f16`, `q8_0`, `q4_K`, ...; any case).
    pub fn parse(s: &str) -> Result<ExtractType> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(ExtractType::Auto),
            "base" => Ok(ExtractType::Base),
            _ => {
                // every type switchyard quantizes but Q8_K, which llama.cpp only uses inside products
                let types = || quants::QUANTIZABLE.iter().filter(|&&t| t != GgmlType::Q8_K);
                match GgmlType::from_name(s) {
                    Some(ty) if types().any(|&t| t == ty) => Ok(ExtractType::Type(ty)),
                    _ => Err(Error::Invalid(format!(
                        "unknown output type '{s}': auto, base or one of {}",
                        types().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }
}

/// The type tensor `name` (changed by some expert) is written in.
pub fn output_type(bundle: &Bundle, choice: ExtractType, name: &str) -> Option<GgmlType> {
    let auto = bundle.materialized_type(name)?;
    let t = bundle.file.tensor(name)?;
    Some(match choice {
        ExtractType::Auto => auto,
        // 1-D tensors stay F32 whatever is asked: they are exact there.
        _ if auto == GgmlType::F32 && t.ne.len() == 1 => GgmlType::F32,
        ExtractType::Base => t.ty,
        ExtractType::Type(ty) => ty,
    })
}

/// Refuse, before anything is written, a tensor switchyard cannot write in type `ty`: one it
/// does not quantize (the base's IQ types) or whose rows are not whole blocks of it.
fn check_output_type(name: &str, ne: &[u64], ty: GgmlType) -> Result<()> {
    if !quants::can_quantize(ty) {
        return Err(Error::Unsupported(format!(
            "tensor '{name}': switchyard cannot quantize to {ty}; extract with --type f16 and run llama-quantize"
        )));
    }
    if !ne[0].is_multiple_of(ty.block_size() as u64) {
        return Err(Error::Invalid(format!(
            "tensor '{name}': rows of {} values are not whole {ty} blocks of {}",
            ne[0],
            ty.block_size()
        )));
    }
    Ok(())
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
                check_output_type(&t.name, &t.ne, ty)?;
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
        // untouched by this expert and asked for in the base's own type: the base's bytes (a
        // dequantize-requantize round trip is not the identity for every k-quant)
        if !managed || (d.is_none() && info.ty == t.ty) {
            w.write_tensor_data(&t.name, bytes)?;
            continue;
        }
        let d = d.as_ref();
        let bytes_out = info.n_bytes() as usize;
        // u32 storage: aligned for every float type, reused across tensors (quantized types
        // are re-quantized row by row into it).
        scratch.resize(bytes_out.div_ceil(4), 0);
        let buf = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut scratch[..])[..bytes_out];
        materialize(t, bytes, d, Output::from_bytes(info.ty, buf)?)?;
        w.write_tensor_data(&t.name, buf)?;
    }
    progress(base.len() as u64, base.len() as u64);
    w.finish()?;
    Ok(report)
}
