//! Whole-model conversion between Hugging Face folders and GGUF files for the supported
//! architectures: HF -> GGUF (tests' fixture models) and GGUF -> HF (the dequantized base that
//! fine-tunes and synthetic experts start from).

use std::path::Path;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufWriter, Metadata, TensorInfoOut, Value};
use crate::hf::{self, Arch, Direction, HfConfig, HfModel};
use crate::{quants, GgmlType};

/// ggml's `llama_ftype` numbers for `general.file_type`, for the types we write.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// Architecture metadata llama.cpp reads for llama and qwen2.
pub fn arch_metadata(arch: Arch, c: &HfConfig, name: &str, ty: GgmlType) -> Metadata {
    let a = arch.gguf_name();
    let mut m = Metadata::new();
    m.insert("general.architecture", Value::String(a.into()));
    m.insert("general.name", Value::String(name.into()));
    m.insert("general.file_type", Value::U32(file_type(ty)));
    m.insert(format!("{a}.block_count"), Value::U32(c.num_hidden_layers as u32));
    m.insert(format!("{a}.context_length"), Value::U32(c.max_position_embeddings as u32));
    m.insert(format!("{a}.embedding_length"), Value::U32(c.hidden_size as u32));
    m.insert(format!("{a}.feed_forward_length"), Value::U32(c.intermediate_size as u32));
    m.insert(format!("{a}.attention.head_count"), Value::U32(c.num_attention_heads as u32));
    m.insert(format!("{a}.attention.head_count_kv"), Value::U32(c.n_head_kv() as u32));
    m.insert(format!("{a}.rope.freq_base"), Value::F32(c.rope_theta as f32));
    m.insert(format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32));
    m.insert(format!("{a}.rope.dimension_count"), Value::U32(c.head_dim() as u32));
    m.insert(format!("{a}.vocab_size"), Value::U32(c.vocab_size as u32));
    if let Some(n) = c.num_local_experts {
        m.insert(format!("{a}.expert_count"), Value::U32(n as u32));
        m.insert(format!("{a}.expert_used_count"), Value::U32(c.num_experts_per_tok.unwrap_or(2) as u32));
    }
    m
}

/// The Hugging Face config a GGUF's metadata describes (inverse of [`arch_metadata`]).
pub fn config_from_gguf(file: &GgufFile) -> Result<HfConfig> {
    let md = &file.metadata;
    let a = md.get_str("general.architecture")?;
    let arch = Arch::from_gguf_name(a).ok_or_else(|| {
        Error::Unsupported(format!("{}: architecture '{a}' is not supported (llama, qwen2)", file.label()))
    })?;
    let key = |k: &str| format!("{a}.{k}");
    let vocab = match md.opt_u32(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => md.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let n_head = md.get_u32(&key("attention.head_count"))? as usize;
    let hidden = md.get_u32(&key("embedding_length"))? as usize;
    let head_dim = md.opt_u32(&key("rope.dimension_count"))?.map(|d| d as usize);
    let n_expert = md.opt_u32(&key("expert_count"))?.filter(|&n| n > 0).map(|n| n as usize);
    let (model_type, class) = match (arch, n_expert) {
        (Arch::Llama, Some(_)) => ("mixtral", "MixtralForCausalLM"),
        (Arch::Llama, None) => ("llama", "LlamaForCausalLM"),
        (Arch::Qwen2, _) => ("qwen2", "Qwen2ForCausalLM"),
    };
    Ok(HfConfig {
        model_type: model_type.into(),
        architectures: vec![class.into()],
        hidden_size: hidden,
        intermediate_size: md.get_u32(&key("feed_forward_length"))? as usize,
        num_hidden_layers: md.get_u32(&key("block_count"))? as usize,
        num_attention_heads: n_head,
        num_key_value_heads: Some(md.opt_u32(&key("attention.head_count_kv"))?.map_or(n_head, |v| v as usize)),
        vocab_size: vocab,
        rms_norm_eps: shortest_f64(md.opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5)),
        rope_theta: shortest_f64(md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0)),
        max_position_embeddings: md.opt_u32(&key("context_length"))?.unwrap_or(2048) as usize,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        head_dim: head_dim.filter(|&d| d != hidden / n_head),
        torch_dtype: Some("float32".into()),
        num_local_experts: n_expert,
        num_experts_per_tok: match n_expert {
            Some(_) => Some(md.get_u32(&key("expert_used_count"))? as usize),
            None => None,
        },
    })
}

/// The f64 whose shortest decimal form is the f32's (1e-5, not 9.999999747378752e-6), so a
/// config.json written from GGUF metadata reads like the original.
fn shortest_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Write `hf` as a GGUF: architecture keys from its config, `tokenizer.*` keys copied from
/// `tokenizer_from` (llama.cpp needs them to load the model; switchyard does not), 2-D weights
/// in `ty`, everything else F32.
pub fn hf_to_gguf(hf: &HfModel, tokenizer_from: Option<&GgufFile>, name: &str, ty: GgmlType, out: &Path) -> Result<()> {
    let mut md = arch_metadata(hf.arch, &hf.config, name, ty);
    for (k, v) in tokenizer_from.iter().flat_map(|t| t.metadata.iter()).filter(|(k, _)| k.starts_with("tokenizer.")) {
        md.insert(k, v.clone());
    }
    let mut names: Vec<String> = Vec::new();
    for hf_name in hf.tensor_names() {
        if hf::is_ignored_hf_tensor(hf_name) || (hf_name == "lm_head.weight" && hf.config.tie_word_embeddings) {
            continue;
        }
        let g = hf::gguf_name(hf_name)
            .ok_or_else(|| Error::Unsupported(format!("{}: tensor '{hf_name}' has no GGUF name", hf.dir.display())))?;
        names.push(g);
    }
    names.sort_by_key(|n| gguf_order_key(n));
    names.dedup(); // a layer's experts share one stacked tensor
    let mut infos = Vec::new();
    let mut data = Vec::new();
    for g in &names {
        let (values, ne) = hf.gguf_tensor(g)?;
        // like llama.cpp's converter and quantizer, routers stay F32
        let quantizable = ne.len() >= 2 && ne[0] % ty.block_size() as u64 == 0 && !g.contains(".ffn_gate_inp.");
        let t = if quantizable { ty } else { GgmlType::F32 };
        let bytes = quants::quantize_par(t, &values, ne[0] as usize)
            .map_err(|e| Error::Invalid(format!("tensor '{g}': {e}")))?;
        infos.push(TensorInfoOut::new(g.clone(), t, ne));
        data.push(bytes);
    }
    let mut w = GgufWriter::create(out, &md, &infos)?;
    for (info, bytes) in infos.iter().zip(&data) {
        w.write_tensor_data(&info.name, bytes)?;
    }
    w.finish()
}

/// llama.cpp's converter order: token_embd, then layer by layer, then output_norm, output.
fn gguf_order_key(name: &str) -> (u32, u32, String) {
    if name == "token_embd.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        let (l, part) = rest.split_once('.').unwrap_or(("0", rest));
        return (1, l.parse().unwrap_or(0), part.to_string());
    }
    (2, 0, name.to_string())
}

/// Write a GGUF model as a Hugging Face folder: every tensor dequantized, q/k rows put back in
/// Hugging Face order, config.json from the metadata.
pub fn gguf_to_hf(file: &GgufFile, out_dir: &Path, dtype: Dtype) -> Result<()> {
    let config = config_from_gguf(file)?;
    let arch = Arch::from_model_type(&config.model_type).expect("from config_from_gguf");
    let mut tensors = Vec::new();
    for t in &file.tensors {
        let mut values =
            quants::dequantize_par(t.ty, file.try_tensor_data(t)?, t.n_elements() as usize, t.ne[0] as usize)
                .map_err(|e| Error::Invalid(format!("{}: tensor '{}': {e}", file.label(), t.name)))?;
        let shape: Vec<usize> = t.ne.iter().rev().map(|&d| d as usize).collect();
        if let Some(names) = hf::hf_expert_names(&t.name, config.num_local_experts.unwrap_or(0)) {
            // one 3-D tensor, expert after expert -> one Hugging Face matrix per expert
            if shape.len() != 3 || shape[0] != names.len() {
                crate::bail_invalid!(
                    "{}: tensor '{}' has shape {shape:?}, not [{}, rows, cols]",
                    file.label(),
                    t.name,
                    names.len()
                );
            }
            let per_expert = values.len() / names.len();
            for (name, chunk) in names.into_iter().zip(values.chunks_exact(per_expert)) {
                tensors.push((name, shape[1..].to_vec(), chunk.to_vec()));
            }
            continue;
        }
        let hf_name = hf::hf_name(&t.name).ok_or_else(|| {
            Error::Unsupported(format!("{}: tensor '{}' has no Hugging Face name", file.label(), t.name))
        })?;
        if let Some(n_head) = hf::rope_permute_heads(arch, &config, &t.name) {
            values = hf::permute_rows(&values, shape[0], n_head, Direction::GgufToHf);
        }
        tensors.push((hf_name, shape, values));
    }
    hf::write_hf_folder(out_dir, &config, &tensors, dtype)
}
