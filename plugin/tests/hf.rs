//! Hugging Face input: sharded folders, dtypes, the llama q/k permutation and qwen2's biases.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;
use switchyard::hf::{self, HfConfig, HfModel};

fn config(model_type: &str) -> HfConfig {
    HfConfig {
        model_type: model_type.into(),
        architectures: vec![],
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        vocab_size: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        head_dim: None,
        torch_dtype: None,
        num_local_experts: None,
        num_experts_per_tok: None,
    }
}

fn tensors(with_bias: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut v = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let base = v.len() as f32 * 1000.0;
        v.push((name.to_string(), shape, (0..n).map(|i| base + i as f32).collect()));
    };
    add("model.embed_tokens.weight", vec![8, 16]);
    add("model.layers.0.self_attn.q_proj.weight", vec![16, 16]);
    add("model.layers.0.self_attn.k_proj.weight", vec![8, 16]);
    add("model.layers.0.self_attn.v_proj.weight", vec![8, 16]);
    if with_bias {
        add("model.layers.0.self_attn.q_proj.bias", vec![16]);
        add("model.layers.0.self_attn.k_proj.bias", vec![8]);
        add("model.layers.0.self_attn.v_proj.bias", vec![8]);
    }
    add("model.norm.weight", vec![16]);
    v
}

/// Split the tensors over two shard files with an index, as `save_pretrained` does.
fn write_sharded(dir: &Path, config: &HfConfig, t: &[(String, Vec<usize>, Vec<f32>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut map = BTreeMap::new();
    for (k, part) in t.chunks(t.len().div_ceil(2)).enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", k + 1);
        let tmp = dir.join(format!("shard{k}"));
        hf::write_hf_folder(&tmp, config, part, Dtype::BF16).unwrap();
        std::fs::rename(tmp.join("model.safetensors"), dir.join(&name)).unwrap();
        std::fs::rename(tmp.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::remove_dir(&tmp).unwrap();
        for (n, _, _) in part {
            map.insert(n.clone(), name.clone());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_folders_read_like_single_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tensors(false);
    hf::write_hf_folder(&tmp.path().join("single"), &config("llama"), &t, Dtype::BF16).unwrap();
    write_sharded(&tmp.path().join("sharded"), &config("llama"), &t);
    let (a, b) =
        (HfModel::open(&tmp.path().join("single")).unwrap(), HfModel::open(&tmp.path().join("sharded")).unwrap());
    assert_eq!(a.tensor_names().collect::<Vec<_>>(), b.tensor_names().collect::<Vec<_>>());
    for n in a.tensor_names() {
        assert_eq!(a.tensor_f32(n).unwrap(), b.tensor_f32(n).unwrap(), "{n}");
    }
    let want: Vec<f32> = t.last().unwrap().2.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(a.tensor_f32("model.norm.weight").unwrap(), want, "BF16 values come back as stored");
}

#[test]
fn llama_q_and_k_rows_are_permuted_per_head_and_qwen2_keeps_order_with_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tensors(true);
    for (arch, permuted) in [("llama", true), ("mistral", true), ("qwen2", false)] {
        let dir = tmp.path().join(arch);
        hf::write_hf_folder(&dir, &config(arch), &t, Dtype::F32).unwrap();
        let m = HfModel::open(&dir).unwrap();
        let (q_hf, k_hf) = (
            m.tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap(),
            m.tensor_f32("model.layers.0.self_attn.k_proj.weight").unwrap(),
        );
        let (q, q_ne) = m.gguf_tensor("blk.0.attn_q.weight").unwrap();
        let (k, _) = m.gguf_tensor("blk.0.attn_k.weight").unwrap();
        assert_eq!(q_ne, vec![16, 16]);
        // head_dim 4: GGUF row 1 of head 0 is HF row 2 (the second half's first row).
        let row = |v: &[f32], r: usize| v[r * 16..(r + 1) * 16].to_vec();
        if permuted {
            assert_eq!(row(&q, 1), row(&q_hf, 2), "{arch} q");
            assert_eq!(row(&k, 5), row(&k_hf, 6), "{arch} k uses the kv head count");
        } else {
            assert_eq!(q, q_hf, "{arch} q");
            assert_eq!(k, k_hf, "{arch} k");
        }
        let (qb, _) = m.gguf_tensor("blk.0.attn_q.bias").unwrap();
        let qb_hf = m.tensor_f32("model.layers.0.self_attn.q_proj.bias").unwrap();
        if permuted {
            assert_eq!((qb[1], qb[2]), (qb_hf[2], qb_hf[1]), "{arch}")
        } else {
            assert_eq!(qb, qb_hf)
        }
        let (v, _) = m.gguf_tensor("blk.0.attn_v.weight").unwrap();
        assert_eq!(v, m.tensor_f32("model.layers.0.self_attn.v_proj.weight").unwrap(), "v is never permuted");
    }
}

#[test]
fn unsupported_architectures_and_dtypes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt2");
    hf::write_hf_folder(&dir, &config("gpt2"), &tensors(false), Dtype::F32).unwrap();
    let err = HfModel::open(&dir).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("gpt2"), "{err}");
    let err = HfModel::open(&tmp.path().join("nothing")).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
}
