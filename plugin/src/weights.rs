//! A fine-tuned model's weights by GGUF tensor name, from either form users have: a Hugging Face
//! folder (mapped and permuted as llama.cpp's converter does) or a GGUF file (dequantized).

use std::path::Path;

use crate::convert::config_from_gguf;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::hf::{self, HfConfig, HfModel};
use crate::quants;

pub enum ModelWeights {
    Hf(HfModel),
    Gguf(GgufFile),
}

impl ModelWeights {
    /// A folder is read as Hugging Face safetensors, a file as GGUF.
    pub fn open(path: &Path) -> Result<ModelWeights> {
        if path.is_dir() {
            return HfModel::open(path).map(ModelWeights::Hf);
        }
        let f = GgufFile::open(path)?;
        if f.metadata.contains_key(crate::bundle::naming::KEY_FORMAT_VERSION) {
            crate::bail_invalid!("{}: is a switchyard bundle, not a model (extract an expert first)", f.label());
        }
        Ok(ModelWeights::Gguf(f))
    }

    /// The file or folder, for messages.
    pub fn label(&self) -> String {
        match self {
            ModelWeights::Hf(m) => m.dir.display().to_string(),
            ModelWeights::Gguf(f) => f.label().to_string(),
        }
    }

    /// Where the architecture is described, for messages.
    pub fn config_label(&self) -> String {
        match self {
            ModelWeights::Hf(m) => m.dir.join("config.json").display().to_string(),
            ModelWeights::Gguf(f) => f.label().to_string(),
        }
    }

    pub fn config(&self) -> Result<HfConfig> {
        match self {
            ModelWeights::Hf(m) => Ok(m.config.clone()),
            ModelWeights::Gguf(f) => config_from_gguf(f),
        }
    }

    /// Every weight the model has, as (GGUF name, name in the source). Hugging Face tensors
    /// that carry nothing llama.cpp keeps (rotary tables, a tied lm_head) are left out; one
    /// that has no GGUF name is an error.
    pub fn tensors(&self) -> Result<Vec<(String, String)>> {
        match self {
            ModelWeights::Gguf(f) => Ok(f.tensors.iter().map(|t| (t.name.clone(), t.name.clone())).collect()),
            ModelWeights::Hf(m) => {
                let mut out = Vec::new();
                for hf_name in m.tensor_names() {
                    if hf::is_ignored_hf_tensor(hf_name)
                        || (hf_name == "lm_head.weight" && m.config.tie_word_embeddings)
                    {
                        continue;
                    }
                    let g = hf::gguf_name(hf_name).ok_or_else(|| {
                        Error::Unsupported(format!(
                            "{}: tensor '{hf_name}' has no GGUF counterpart in this architecture",
                            m.dir.display()
                        ))
                    })?;
                    out.push((g, hf_name.to_string()));
                }
                Ok(out)
            }
        }
    }

    /// The source's own name for GGUF tensor `gguf_name` if it has that tensor.
    pub fn source_name(&self, gguf_name: &str) -> Option<String> {
        match self {
            ModelWeights::Gguf(f) => f.tensor(gguf_name).map(|t| t.name.clone()),
            ModelWeights::Hf(m) => hf::hf_name(gguf_name).filter(|h| m.shape(h).is_some()),
        }
    }

    /// Tensor `gguf_name` as f32 values in GGUF row order, with its GGUF shape.
    pub fn tensor(&self, gguf_name: &str) -> Result<(Vec<f32>, Vec<u64>)> {
        match self {
            ModelWeights::Hf(m) => m.gguf_tensor(gguf_name),
            ModelWeights::Gguf(f) => gguf_tensor_f32(f, gguf_name),
        }
    }
}

/// Tensor `name` of a GGUF file dequantized to f32 values in row order, with its GGUF shape.
pub fn gguf_tensor_f32(f: &GgufFile, name: &str) -> Result<(Vec<f32>, Vec<u64>)> {
    let t = f.tensor(name).ok_or_else(|| Error::NotFound(format!("{}: no tensor '{name}'", f.label())))?;
    let values = quants::dequantize_par(t.ty, f.try_tensor_data(t)?, t.n_elements() as usize, t.ne[0] as usize)
        .map_err(|e| Error::Invalid(format!("{}: tensor '{name}': {e}", f.label())))?;
    Ok((values, t.ne.clone()))
}
