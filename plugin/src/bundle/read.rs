//! Opening a bundle: checking its keys, indexing the delta tensors per expert and base tensor,
//! and resolving an expert's delta for one tensor.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::codec::{CodecParams, Method};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::GgmlType;

use super::delta::TensorDelta;
use super::fingerprint::base_fingerprint;
use super::naming::{
    self, expert_key, parse_delta_tensor, KEY_BASE_FINGERPRINT, KEY_EXPERT_NAMES, KEY_FORMAT_VERSION, PREFIX,
};
use super::write::ExpertInfo;

pub struct Bundle {
    /// Shared with a router opened from this bundle ([`crate::router::PromptRouter::from_bundle`]),
    /// which reads its token embeddings from the same mapping.
    pub file: Arc<GgufFile>,
    pub experts: Vec<ExpertInfo>,
    pub fingerprint: String,
    /// Per expert: base tensor name -> part name -> index into `file.tensors`.
    index: Vec<BTreeMap<String, BTreeMap<String, usize>>>,
}

const PARTS: &[&str] = &["codes", "steps", "sal_idx", "sal_val", "sal_step", "lr_a", "lr_b", "delta", "full"];

impl Bundle {
    pub fn open(path: &Path) -> Result<Bundle> {
        Self::from_file(GgufFile::open(path)?)
    }

    pub fn from_file(file: GgufFile) -> Result<Bundle> {
        let label = file.label().to_string();
        let md = &file.metadata;
        let Some(version) = md.opt_u32(KEY_FORMAT_VERSION)? else {
            crate::bail_invalid!("{label}: not a switchyard bundle (no '{KEY_FORMAT_VERSION}' key)");
        };
        if version == 0 || version > naming::FORMAT_VERSION {
            crate::bail_unsupported!(
                "{label}: bundle format version {version}; this switchyard reads versions 1 to {}",
                naming::FORMAT_VERSION
            );
        }
        let fingerprint = md.get_str(KEY_BASE_FINGERPRINT)?.to_string();
        let names = md.get_str_array(KEY_EXPERT_NAMES)?.to_vec();
        let mut experts = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            naming::check_expert_name(name).map_err(|e| Error::Invalid(format!("{label}: {e}")))?;
            if names[..i].contains(name) {
                crate::bail_invalid!("{label}: expert name '{name}' appears twice in '{KEY_EXPERT_NAMES}'");
            }
            let method_name = md.get_str(&expert_key(i, "codec"))?;
            let method = Method::from_name(method_name).ok_or_else(|| {
                Error::Unsupported(format!("{label}: key '{}': unknown codec '{method_name}'", expert_key(i, "codec")))
            })?;
            let params = CodecParams {
                method,
                bits: small(md.get_u32(&expert_key(i, "bits"))?, &label, &expert_key(i, "bits"))?,
                group_size: md.get_u32(&expert_key(i, "group_size"))? as usize,
                salient_fraction: md.get_f32(&expert_key(i, "salient_fraction"))?,
                salient_bits: small(
                    md.get_u32(&expert_key(i, "salient_bits"))?,
                    &label,
                    &expert_key(i, "salient_bits"),
                )?,
            };
            params.validate().map_err(|e| Error::Invalid(format!("{label}: expert '{name}': {e}")))?;
            let imatrix = md.opt_str(&expert_key(i, "imatrix"))?.filter(|s| !s.is_empty()).map(String::from);
            let rank = md.opt_u32(&expert_key(i, "rank"))?.unwrap_or(0) as usize;
            experts.push(ExpertInfo { name: name.clone(), params, imatrix, rank });
        }

        let mut index = vec![BTreeMap::<String, BTreeMap<String, usize>>::new(); experts.len()];
        for (ti, t) in file.tensors.iter().enumerate() {
            if !t.name.starts_with(PREFIX) {
                continue;
            }
            let Some((e, base, part)) = parse_delta_tensor(&t.name) else {
                crate::bail_invalid!(
                    "{label}: tensor '{}' has the reserved prefix but no '<expert>.<tensor>.<part>' form",
                    t.name
                );
            };
            if e >= experts.len() {
                crate::bail_invalid!(
                    "{label}: tensor '{}' names expert {e}, but the bundle has {}",
                    t.name,
                    experts.len()
                );
            }
            if !PARTS.contains(&part) {
                crate::bail_invalid!("{label}: tensor '{}' has unknown part '{part}'", t.name);
            }
            if part.starts_with("lr_") && version < naming::FORMAT_VERSION_LOW_RANK {
                crate::bail_invalid!(
                    "{label}: tensor '{}' is a low-rank part, which format version {version} does not have",
                    t.name
                );
            }
            match file.tensor(base) {
                Some(b) if !b.name.starts_with(PREFIX) => {}
                _ => crate::bail_invalid!(
                    "{label}: tensor '{}' is a delta of '{base}', which the base model lacks",
                    t.name
                ),
            }
            index[e].entry(base.to_string()).or_default().insert(part.to_string(), ti);
        }
        Ok(Bundle { file: Arc::new(file), experts, fingerprint, index })
    }

    pub fn label(&self) -> &str {
        self.file.label()
    }

    /// The base model's tensors, in file order.
    pub fn base_tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.file.tensors.iter().filter(|t| !t.name.starts_with(PREFIX))
    }

    /// Index of the expert called `name`; the error lists the valid names.
    pub fn expert_index(&self, name: &str) -> Result<usize> {
        self.experts.iter().position(|e| e.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.experts.iter().map(|e| e.name.as_str()).collect();
            Error::NotFound(format!("{}: no expert '{name}' (experts: base, {})", self.label(), names.join(", ")))
        })
    }

    /// Base tensors that expert `e` changes, in file order.
    pub fn changed_tensors(&self, e: usize) -> impl Iterator<Item = &str> {
        self.base_tensors().filter(move |t| self.index[e].contains_key(&t.name)).map(|t| t.name.as_str())
    }

    /// Whether expert `e` changes base tensor `base`.
    pub fn changes(&self, e: usize, base: &str) -> bool {
        self.index[e].contains_key(base)
    }

    /// Expert `e`'s delta for base tensor `base`, or None when the expert leaves it unchanged.
    pub fn delta(&self, e: usize, base: &str) -> Result<Option<TensorDelta>> {
        let Some(parts) = self.index[e].get(base) else {
            return Ok(None);
        };
        let base_info = self.file.tensor(base).expect("checked on open");
        let parts = parts
            .iter()
            .map(|(p, &ti)| {
                let info = &self.file.tensors[ti];
                Ok((p.as_str(), (info, self.file.try_tensor_data(info)?)))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let what = format!("{}: expert '{}', tensor '{base}'", self.label(), self.experts[e].name);
        TensorDelta::from_tensors(&parts, &self.experts[e].params, base_info, &what).map(Some)
    }

    /// The type a base tensor is materialized in by whatever switches experts in place (the
    /// llama.cpp plugin) and by `extract`, or None when no expert changes it. One type for all
    /// experts, so a switch never changes a tensor's layout: F32 for 1-D tensors, F32 bases
    /// and tensors some expert replaces whole (exact), F16 otherwise (base + delta rarely fits
    /// a quantized base type; F16 keeps ~3 significant digits).
    pub fn materialized_type(&self, base: &str) -> Option<GgmlType> {
        let info = self.file.tensor(base)?;
        let mut changed = false;
        let mut needs_f32 = info.ne.len() == 1 || info.ty == GgmlType::F32;
        for e in &self.index {
            if let Some(parts) = e.get(base) {
                changed = true;
                needs_f32 |= parts.contains_key("full");
            }
        }
        changed.then_some(if needs_f32 { GgmlType::F32 } else { GgmlType::F16 })
    }

    /// The file's tensor holding part `part` (`codes`, `sal_idx`, `delta`, ...) of expert `e`'s
    /// delta of base tensor `base`.
    pub fn delta_part(&self, e: usize, base: &str, part: &str) -> Option<&TensorInfo> {
        self.index[e].get(base)?.get(part).map(|&ti| &self.file.tensors[ti])
    }

    /// The file's tensors that hold expert `e`'s delta of base tensor `base` (none when unchanged).
    pub fn delta_tensors(&self, e: usize, base: &str) -> impl Iterator<Item = &TensorInfo> {
        self.index[e].get(base).into_iter().flat_map(|parts| parts.values()).map(|&ti| &self.file.tensors[ti])
    }

    /// Whether expert `e` stores base tensor `base` whole (a `replace` delta) instead of a difference.
    pub fn replaces_whole(&self, e: usize, base: &str) -> bool {
        self.index[e].get(base).is_some_and(|parts| parts.contains_key("full"))
    }

    /// Whether the host applies the experts' deltas of base tensor `base` in its graph
    /// ([`super::in_graph`]) rather than switching the tensor in place: some expert changes it,
    /// and it is a norm's weight, or the graph reaches it through a hooked product and no
    /// expert replaces it whole.
    pub fn in_graph(&self, base: &str) -> bool {
        let Some(info) = self.file.tensor(base) else { return false };
        let changed = (0..self.experts.len()).any(|e| self.changes(e, base));
        let replaced = (0..self.experts.len()).any(|e| self.replaces_whole(e, base));
        // (rows of a multiple of 32 values: the smallest block of the types the graph's deltas
        // take; a narrower weight is switched in place)
        changed
            && (super::in_graph::is_norm_weight(base, &info.ne)
                || (super::in_graph::applies_in_graph(base, &info.ne) && !replaced && info.ne[0] % 32 == 0))
    }

    /// Bytes the stored deltas of expert `e` take in the file.
    pub fn expert_bytes(&self, e: usize) -> u64 {
        self.index[e].values().flat_map(|p| p.values()).map(|&ti| self.file.tensors[ti].n_bytes()).sum()
    }

    /// Recompute the base fingerprint and compare it with the stored one.
    pub fn verify_base(&self) -> Result<()> {
        let got = base_fingerprint(&self.file);
        if got != self.fingerprint {
            crate::bail_invalid!(
                "{}: base tensors do not match the fingerprint the deltas were made against ({} stored, {} found): the base was changed or the file is corrupt",
                self.label(),
                self.fingerprint,
                got
            );
        }
        Ok(())
    }

    /// Decode every delta once: catches every shape or size error in the file up front.
    pub fn validate_all(&self) -> Result<()> {
        for e in 0..self.experts.len() {
            for base in self.index[e].keys() {
                self.delta(e, base)?;
            }
        }
        Ok(())
    }
}

fn small(v: u32, label: &str, key: &str) -> Result<u8> {
    u8::try_from(v).map_err(|_| Error::Invalid(format!("{label}: key '{key}' is {v}, out of range")))
}
