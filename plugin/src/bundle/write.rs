//! Writing a bundle: the base GGUF's metadata and tensors unchanged, in their order, then the
//! bundle keys and every expert's delta tensors. Written through a temporary file and renamed,
//! so a failure leaves no partial bundle.

use std::path::Path;

use crate::codec::CodecParams;
use crate::error::Result;
use crate::gguf::{Array, GgufFile, GgufWriter, TensorInfoOut, Value};

use super::delta::TensorDelta;
use super::naming::{
    self, check_expert_name, expert_key, KEY_BASE_FINGERPRINT, KEY_EXPERT_NAMES, KEY_FORMAT_VERSION, PREFIX,
};

/// An expert's name and how its deltas were made.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertInfo {
    pub name: String,
    pub params: CodecParams,
    /// File name of the importance matrix used, if any (informational).
    pub imatrix: Option<String>,
    /// The rank linear weights were factored at (`pack --rank`; 0: all by the codec). Each
    /// matrix the factors make cheaper is a [`super::low_rank::LowRankDelta`], the others codec
    /// deltas.
    pub rank: usize,
}

/// One expert's deltas: (base tensor name, delta). Tensors without a delta are unchanged.
#[derive(Clone, Debug)]
pub struct ExpertDeltas {
    pub info: ExpertInfo,
    pub tensors: Vec<(String, TensorDelta)>,
}

impl ExpertDeltas {
    pub fn stored_bytes(&self) -> usize {
        self.tensors.iter().map(|(_, d)| d.stored_bytes()).sum()
    }
}

pub(crate) fn expert_metadata(index: usize, info: &ExpertInfo) -> Vec<(String, Value)> {
    let p = &info.params;
    vec![
        (expert_key(index, "codec"), Value::String(p.method.name().into())),
        (expert_key(index, "bits"), Value::U32(p.bits as u32)),
        (expert_key(index, "group_size"), Value::U32(p.group_size as u32)),
        (expert_key(index, "salient_fraction"), Value::F32(p.salient_fraction)),
        (expert_key(index, "salient_bits"), Value::U32(p.salient_bits as u32)),
        (expert_key(index, "imatrix"), Value::String(info.imatrix.clone().unwrap_or_default())),
    ]
    .into_iter()
    // only with factors: a bundle without stays byte for byte what version 1 writers wrote
    .chain((info.rank > 0).then(|| (expert_key(index, "rank"), Value::U32(info.rank as u32))))
    .collect()
}

/// Write `base` plus `experts` to `path`. `fingerprint` is [`super::fingerprint::base_fingerprint`]
/// of `base` (passed in because the caller usually has it already).
pub fn write_bundle(path: &Path, base: &GgufFile, fingerprint: &str, experts: &[ExpertDeltas]) -> Result<()> {
    if base.metadata.contains_key(KEY_FORMAT_VERSION) {
        crate::bail_invalid!("{}: is already a switchyard bundle; give the plain base model GGUF", base.label());
    }
    let mut names = Vec::new();
    for e in experts {
        check_expert_name(&e.info.name)?;
        if names.contains(&e.info.name) {
            crate::bail_invalid!("expert name '{}' is given twice", e.info.name);
        }
        names.push(e.info.name.clone());
    }

    let mut metadata = base.metadata.clone();
    metadata.insert(KEY_FORMAT_VERSION, Value::U32(naming::format_version_for(experts)));
    metadata.insert(KEY_BASE_FINGERPRINT, Value::String(fingerprint.to_string()));
    metadata.insert(KEY_EXPERT_NAMES, Value::Array(Array::String(names)));
    for (i, e) in experts.iter().enumerate() {
        for (k, v) in expert_metadata(i, &e.info) {
            metadata.insert(k, v);
        }
    }

    let mut infos: Vec<TensorInfoOut> = Vec::with_capacity(base.tensors.len());
    for t in &base.tensors {
        if t.name.starts_with(PREFIX) {
            crate::bail_invalid!("{}: tensor '{}' uses the reserved prefix '{PREFIX}'", base.label(), t.name);
        }
        infos.push(TensorInfoOut::from(t));
    }
    let mut payload: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, e) in experts.iter().enumerate() {
        for (tname, delta) in &e.tensors {
            let Some(bt) = base.tensor(tname) else {
                crate::bail_invalid!("expert '{}': tensor '{tname}' is not in the base {}", e.info.name, base.label());
            };
            for (info, bytes) in delta.to_tensors(i, tname, &bt.ne) {
                if info.name.len() >= crate::gguf::MAX_NAME_BYTES {
                    crate::bail_invalid!(
                        "expert '{}': tensor name '{}' is {} bytes, over ggml's limit of {}",
                        e.info.name,
                        info.name,
                        info.name.len(),
                        crate::gguf::MAX_NAME_BYTES - 1
                    );
                }
                payload.push((info.name.clone(), bytes));
                infos.push(info);
            }
        }
    }

    let mut w = GgufWriter::create(path, &metadata, &infos)?;
    for t in &base.tensors {
        w.write_tensor_data(&t.name, base.tensor_data(t))?;
    }
    for (name, bytes) in &payload {
        w.write_tensor_data(name, bytes)?;
    }
    w.finish()
}
