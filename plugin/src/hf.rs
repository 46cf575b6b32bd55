//! Hugging Face model folders: `config.json` plus safetensors weights (one file, or shards
//! listed by `model.safetensors.index.json`), and the mapping of their tensors onto the names
//! and row order llama.cpp's converter gives them in GGUF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architectures whose tensor mapping is known. The value is the GGUF `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama, Mistral, SmolLM2: q/k rows permuted by llama.cpp's converter.
    Llama,
    /// Qwen2: q/k/v biases, no row permutation.
    Qwen2,
}

impl Arch {
    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        match model_type {
            // llama.cpp runs Mixtral as llama with expert tensors
            "llama" | "mistral" | "mixtral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }

    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

/// The fields of `config.json` that the mapping and the checks need.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Mixture of experts (Mixtral): experts per layer and experts each token uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_local_experts: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}
fn default_ctx() -> usize {
    2048
}

impl HfConfig {
    pub fn arch(&self, dir: &Path) -> Result<Arch> {
        Arch::from_model_type(&self.model_type).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: model_type '{}' is not supported (supported: llama, mistral, mixtral, qwen2)",
                dir.join("config.json").display(),
                self.model_type
            ))
        })
    }

    pub fn n_head_kv(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// Where one tensor's bytes are: shard index, dtype, shape, byte range inside the shard.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// A Hugging Face folder opened for reading; shards are memory-mapped.
pub struct HfModel {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub arch: Arch,
    shards: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, Entry>,
}

impl HfModel {
    pub fn open(dir: &Path) -> Result<HfModel> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: HfConfig =
            serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", config_path.display())))?;
        let arch = config.arch(dir)?;

        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", index_path.display())))?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Invalid(format!("{}: no 'weight_map' object", index_path.display())))?;
            let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names
        } else {
            vec!["model.safetensors".to_string()]
        };

        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            if name.contains('/') || name.contains("..") {
                crate::bail_invalid!("{}: shard name '{name}' leaves the folder", index_path.display());
            }
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map of a file we do not modify; a concurrent writer could
            // change the bytes under us, which is the same contract every mmap loader has.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::Invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
            let data_start = 8 + header_len;
            for (tname, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let entry = Entry {
                    shard: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (data_start + a, data_start + b),
                };
                if tensors.insert(tname.clone(), entry).is_some() {
                    crate::bail_invalid!("{}: tensor '{tname}' appears in two shards", path.display());
                }
            }
            shards.push((path, mmap));
        }
        Ok(HfModel { dir: dir.to_path_buf(), config, arch, shards, tensors })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// One tensor converted to f32, in its Hugging Face layout.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("{}: no tensor '{name}'", self.dir.display())))?;
        let (path, mmap) = &self.shards[e.shard];
        let bytes = &mmap[e.range.0..e.range.1];
        let n: usize = e.shape.iter().product();
        let bad_len = || {
            Error::Invalid(format!(
                "{}: tensor '{name}' has {} bytes for shape {:?}",
                path.display(),
                bytes.len(),
                e.shape
            ))
        };
        Ok(match e.dtype {
            Dtype::F32 => {
                if bytes.len() != n * 4 {
                    return Err(bad_len());
                }
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                if bytes.len() != n * 2 {
                    return Err(bad_len());
                }
                bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                if bytes.len() != n * 2 {
                    return Err(bad_len());
                }
                bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => crate::bail_unsupported!(
                "{}: tensor '{name}' has dtype {other:?}; only F32, F16 and BF16 are supported",
                path.display()
            ),
        })
    }

    /// The tensor llama.cpp calls `gguf_name`, in GGUF row order, with its GGUF shape
    /// (`ne`, fastest dimension first).
    pub fn gguf_tensor(&self, gguf_name: &str) -> Result<(Vec<f32>, Vec<u64>)> {
        if let Some(names) = hf_expert_names(gguf_name, self.config.num_local_experts.unwrap_or(0)) {
            return self.stacked_experts(gguf_name, &names);
        }
        let hf = hf_name(gguf_name).ok_or_else(|| {
            Error::Invalid(format!("{}: no Hugging Face tensor maps to '{gguf_name}'", self.dir.display()))
        })?;
        let shape = self.shape(&hf).ok_or_else(|| {
            Error::Invalid(format!("{}: missing tensor '{hf}' (for '{gguf_name}')", self.dir.display()))
        })?;
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let mut data = self.tensor_f32(&hf)?;
        if let Some(n_head) = rope_permute_heads(self.arch, &self.config, gguf_name) {
            data = permute_rows(&data, shape[0], n_head, Direction::HfToGguf);
        }
        Ok((data, ne))
    }

    /// GGUF keeps a layer's experts as one 3-D tensor (`ne` = [cols, rows, n_expert]), expert
    /// after expert; Hugging Face keeps one 2-D tensor per expert.
    fn stacked_experts(&self, gguf_name: &str, names: &[String]) -> Result<(Vec<f32>, Vec<u64>)> {
        let mut data = Vec::new();
        let mut first: Option<Vec<usize>> = None;
        for hf in names {
            let shape = self.shape(hf).ok_or_else(|| {
                Error::Invalid(format!("{}: missing tensor '{hf}' (for '{gguf_name}')", self.dir.display()))
            })?;
            match &first {
                None => first = Some(shape.to_vec()),
                Some(s) if s.as_slice() != shape => crate::bail_invalid!(
                    "{}: expert tensor '{hf}' has shape {shape:?}, the layer's first expert {s:?}",
                    self.dir.display()
                ),
                Some(_) => {}
            }
            data.extend(self.tensor_f32(hf)?);
        }
        let shape = first.unwrap_or_default();
        if shape.len() != 2 {
            crate::bail_invalid!("{}: expert tensors of '{gguf_name}' are not matrices", self.dir.display());
        }
        Ok((data, vec![shape[1] as u64, shape[0] as u64, names.len() as u64]))
    }
}

/// llama.cpp's converter reorders the rows of q and k in llama-family models so that the two
/// halves rotated together by RoPE become interleaved pairs. Returns the head count to permute
/// with, or None for tensors that keep Hugging Face's row order.
pub fn rope_permute_heads(arch: Arch, config: &HfConfig, gguf_name: &str) -> Option<usize> {
    if arch != Arch::Llama {
        return None;
    }
    if gguf_name.ends_with(".attn_q.weight") || gguf_name.ends_with(".attn_q.bias") {
        Some(config.num_attention_heads)
    } else if gguf_name.ends_with(".attn_k.weight") || gguf_name.ends_with(".attn_k.bias") {
        Some(config.n_head_kv())
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    HfToGguf,
    GgufToHf,
}

/// Row permutation within each head: Hugging Face row `i*half + j` is GGUF row `2*j + i`
/// (i in {0,1}, j < half), where half = head_dim / 2. `data` is `n_rows` rows.
pub fn permute_rows(data: &[f32], n_rows: usize, n_head: usize, dir: Direction) -> Vec<f32> {
    let row_len = data.len() / n_rows;
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + i * half + j;
                let gguf_row = h * head_dim + 2 * j + i;
                let (src, dst) = match dir {
                    Direction::HfToGguf => (hf_row, gguf_row),
                    Direction::GgufToHf => (gguf_row, hf_row),
                };
                out[dst * row_len..(dst + 1) * row_len].copy_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// GGUF tensor name -> Hugging Face tensor name, for the architectures in [`Arch`].
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf_part = LAYER_MAP.iter().find(|(g, _)| *g == part)?.1;
    Some(format!("model.layers.{layer}.{hf_part}.{suffix}"))
}

/// Mixtral's per-expert matrices and the GGUF tensor that stacks each kind.
const EXPERT_MAP: &[(&str, &str)] = &[("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")];

/// The Hugging Face tensors (one per expert, in order) a stacked GGUF expert tensor holds;
/// None for other tensors.
pub fn hf_expert_names(gguf: &str, n_experts: usize) -> Option<Vec<String>> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let w = EXPERT_MAP.iter().find(|(g, _)| rest == format!("{g}.weight"))?.1;
    Some((0..n_experts).map(|e| format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight")).collect())
}

/// Hugging Face tensor name -> GGUF tensor name; None for tensors GGUF does not keep. Every
/// expert of a layer maps to the one stacked tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    if let Some(expert) = rest.strip_prefix("block_sparse_moe.experts.") {
        let (e, w) = expert.split_once('.')?;
        e.parse::<u32>().ok()?;
        let g = EXPERT_MAP.iter().find(|(_, h)| w == format!("{h}.weight"))?.0;
        return Some(format!("blk.{layer}.{g}.weight"));
    }
    let (part, suffix) = rest.rsplit_once('.')?;
    let g = LAYER_MAP.iter().find(|(_, h)| *h == part)?.0;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Hugging Face tensors that carry no weight llama.cpp uses (recomputed at load time).
pub fn is_ignored_hf_tensor(hf: &str) -> bool {
    hf.ends_with("rotary_emb.inv_freq")
}

const LAYER_MAP: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate_inp", "block_sparse_moe.gate"),
];

/// Write a Hugging Face folder (config.json + one model.safetensors, BF16/F32 as given)
/// atomically: everything goes to a temporary sibling folder that is renamed at the end.
pub fn write_hf_folder(
    dir: &Path,
    config: &HfConfig,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp =
        tempfile::Builder::new().prefix(".switchyard-hf-").tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes = match dtype {
                Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::BF16 => data.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
                Dtype::F16 => data.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
                _ => Vec::new(),
            };
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    if !matches!(dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
        crate::bail_unsupported!("writing safetensors as {dtype:?} is not supported");
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor '{n}': {e}")))
        })
        .collect::<Result<_>>()?;
    let st_path = tmp.path().join("model.safetensors");
    safetensors::serialize_to_file(views, &None, &st_path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", st_path.display())))?;
    let cfg_path = tmp.path().join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for g in
            ["token_embd.weight", "output.weight", "blk.3.attn_q.weight", "blk.12.ffn_down.weight", "blk.0.attn_k.bias"]
        {
            let h = hf_name(g).unwrap();
            assert_eq!(gguf_name(&h).as_deref(), Some(g));
        }
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_interleaves_rope_halves_and_inverts() {
        // 2 heads of dim 4, rows of length 1 holding their own HF row index.
        let hf: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let g = permute_rows(&hf, 8, 2, Direction::HfToGguf);
        assert_eq!(g, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&g, 8, 2, Direction::GgufToHf), hf);
    }
}
