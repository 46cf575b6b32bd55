//! Deterministic synthetic models and experts, for tests, benchmarks and the demo until real
//! fine-tunes exist. Synthetic expert deltas have the structure fine-tuning deltas show
//! (ME-Switch, BitDelta): small dense noise, a low-rank part, and a few input channels with
//! much larger values.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::Dtype;

use crate::build_bundle::is_linear_weight;
use crate::error::Result;
use crate::hf::{self, HfConfig, HfModel};

/// Shape of a synthetic delta, relative to the RMS of the weight it is added to.
#[derive(Clone, Copy, Debug)]
pub struct DeltaSpec {
    /// RMS of the dense noise.
    pub noise: f32,
    /// Rank and RMS of the low-rank part.
    pub rank: usize,
    pub low_rank: f32,
    /// Fraction of input channels that are outliers, and their RMS.
    pub outlier_fraction: f32,
    pub outlier: f32,
    /// Relative RMS of a change to the token embeddings (0: untouched).
    pub embeddings: f32,
}

impl Default for DeltaSpec {
    /// Delta RMS of a few percent of the weights, outlier channels ~10x the rest: the regime
    /// where per-output-channel quantization breaks down.
    fn default() -> Self {
        DeltaSpec { noise: 0.02, rank: 4, low_rank: 0.01, outlier_fraction: 0.005, outlier: 0.25, embeddings: 0.0 }
    }
}

impl DeltaSpec {
    /// A delta with most of its norm in a few directions, as fine-tunes' deltas have (the real
    /// math expert keeps 60% of its squared norm at rank 32): rank 24 at 3% of the weights'
    /// RMS over dense noise at 1%, about 90% of the squared norm in the 24 directions. For
    /// low-rank deltas (`pack --rank`), which keep no more of the default delta than its noise
    /// allows.
    pub const LOW_RANK: DeltaSpec =
        DeltaSpec { noise: 0.01, rank: 24, low_rank: 0.03, outlier_fraction: 0.0, outlier: 0.0, embeddings: 0.0 };
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn gaussian(rng: &mut ChaCha8Rng, n: usize, sd: f32) -> Vec<f32> {
    let dist = Normal::new(0.0f32, sd.max(f32::MIN_POSITIVE)).expect("finite sd");
    (0..n).map(|_| dist.sample(rng)).collect()
}

/// A delta of n_out rows by n_in input channels with the given structure, scaled by `scale`.
pub fn structured_delta(n_in: usize, n_out: usize, spec: &DeltaSpec, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut d = gaussian(rng, n_in * n_out, spec.noise * scale);
    if spec.rank > 0 && spec.low_rank > 0.0 {
        // U (n_out x r) V^T (r x n_in) with unit-variance factors: entry variance r, so divide.
        let u = gaussian(rng, n_out * spec.rank, 1.0);
        let v = gaussian(rng, n_in * spec.rank, 1.0);
        let a = spec.low_rank * scale / (spec.rank as f32).sqrt();
        for r in 0..n_out {
            for c in 0..n_in {
                let dot: f32 = (0..spec.rank).map(|k| u[r * spec.rank + k] * v[c * spec.rank + k]).sum();
                d[r * n_in + c] += a * dot;
            }
        }
    }
    let n_outliers =
        ((spec.outlier_fraction * n_in as f32).round() as usize).max(usize::from(spec.outlier_fraction > 0.0));
    for _ in 0..n_outliers {
        let c = rng.gen_range(0..n_in);
        let col = gaussian(rng, n_out, spec.outlier * scale);
        for r in 0..n_out {
            d[r * n_in + c] += col[r];
        }
    }
    d
}

fn rms(v: &[f32]) -> f32 {
    ((v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()) as f32
}

/// A synthetic expert of `base`: every linear weight gets a structured delta, norms a small
/// change, embeddings untouched unless `spec.embeddings` says (as in most domain fine-tunes of
/// small models). Written as F32.
pub fn make_expert(base: &HfModel, out: &Path, spec: &DeltaSpec, seed: u64) -> Result<()> {
    let mut rng = rng(seed);
    let mut tensors = Vec::new();
    let names: Vec<String> = base.tensor_names().map(String::from).collect();
    for name in names {
        let shape = base.shape(&name).expect("listed").to_vec();
        let mut w = base.tensor_f32(&name)?;
        let gguf = hf::gguf_name(&name).unwrap_or_default();
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if is_linear_weight(&gguf, &ne) {
            let d = structured_delta(shape[1], shape[0], spec, rms(&w), &mut rng);
            w.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
        } else if gguf == "token_embd.weight" && spec.embeddings > 0.0 {
            let d = gaussian(&mut rng, w.len(), spec.embeddings);
            w.iter_mut().zip(&d).for_each(|(x, y)| *x *= 1.0 + y);
        } else if shape.len() == 1 {
            let d = gaussian(&mut rng, w.len(), 0.01);
            w.iter_mut().zip(&d).for_each(|(x, y)| *x *= 1.0 + y);
        }
        tensors.push((name, shape, w));
    }
    hf::write_hf_folder(out, &base.config, &tensors, Dtype::F32)
}

/// Experts per layer and experts each token uses, for a Mixtral-style model.
#[derive(Clone, Copy, Debug)]
pub struct MoeShape {
    pub n_expert: usize,
    pub n_used: usize,
}

/// A tiny llama-architecture model with random weights (Hugging Face layout, F32). `vocab` must
/// match the tokenizer the GGUF will carry.
pub fn tiny_llama(out: &Path, vocab: usize, seed: u64) -> Result<()> {
    tiny_model(out, vocab, None, seed)
}

/// The sizes of a random llama-architecture model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub hidden: usize,
    pub ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl Dims {
    /// For tests: two layers of width 64.
    pub const TINY: Dims = Dims { hidden: 64, ff: 128, layers: 2, heads: 4, kv_heads: 2 };
    /// For tests of low-rank deltas: the narrowest shapes where rank-32 factors cost at most
    /// half a dense delta's multiply-adds (`bundle::low_rank::worth_factoring`).
    pub const SMALL: Dims = Dims { hidden: 256, ff: 512, layers: 2, heads: 4, kv_heads: 2 };
    /// Llama-3.2-1B's shapes (16 layers, width 2048, FFN 8192, 32 heads, 8 KV heads): the
    /// 1B-class model benchmarks measure at besides SmolLM2-135M.
    pub const LLAMA_3_2_1B: Dims = Dims { hidden: 2048, ff: 8192, layers: 16, heads: 32, kv_heads: 8 };
}

/// [`tiny_llama`], or with `moe` a Mixtral-style model: every layer's FFN replaced by a random
/// router (`block_sparse_moe.gate`) over `n_expert` random experts.
pub fn tiny_model(out: &Path, vocab: usize, moe: Option<MoeShape>, seed: u64) -> Result<()> {
    random_model(out, vocab, Dims::TINY, moe, seed)
}

/// A llama-architecture (or, with `moe`, Mixtral-style) model of sizes `dims` with random
/// weights (Hugging Face layout, F32).
pub fn random_model(out: &Path, vocab: usize, dims: Dims, moe: Option<MoeShape>, seed: u64) -> Result<()> {
    let config = HfConfig {
        model_type: if moe.is_some() { "mixtral" } else { "llama" }.into(),
        architectures: vec![if moe.is_some() { "MixtralForCausalLM" } else { "LlamaForCausalLM" }.into()],
        hidden_size: dims.hidden,
        intermediate_size: dims.ff,
        num_hidden_layers: dims.layers,
        num_attention_heads: dims.heads,
        num_key_value_heads: Some(dims.kv_heads),
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        head_dim: None,
        torch_dtype: Some("float32".into()),
        num_local_experts: moe.map(|m| m.n_expert),
        num_experts_per_tok: moe.map(|m| m.n_used),
    };
    let mut rng = rng(seed);
    let (h, f, kv) = (config.hidden_size, config.intermediate_size, config.n_head_kv() * config.head_dim());
    let std_in = |n: usize| 1.0 / (n as f32).sqrt();
    let mut tensors =
        vec![("model.embed_tokens.weight".to_string(), vec![vocab, h], gaussian(&mut rng, vocab * h, 0.5))];
    for l in 0..config.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        let mut linear = vec![
            (p("self_attn.q_proj"), h, h),
            (p("self_attn.k_proj"), kv, h),
            (p("self_attn.v_proj"), kv, h),
            (p("self_attn.o_proj"), h, h),
        ];
        match moe {
            None => linear.extend([(p("mlp.gate_proj"), f, h), (p("mlp.up_proj"), f, h), (p("mlp.down_proj"), h, f)]),
            Some(m) => {
                linear.push((p("block_sparse_moe.gate"), m.n_expert, h));
                for e in 0..m.n_expert {
                    let x = |w: &str| p(&format!("block_sparse_moe.experts.{e}.{w}"));
                    linear.extend([(x("w1"), f, h), (x("w3"), f, h), (x("w2"), h, f)]);
                }
            }
        }
        for (name, rows, cols) in linear {
            tensors.push((name, vec![rows, cols], gaussian(&mut rng, rows * cols, std_in(cols))));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let w: Vec<f32> = (0..h).map(|_| 1.0 + rng.gen_range(-0.1..0.1)).collect();
            tensors.push((p(norm), vec![h], w));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![h], vec![1.0; h]));
    hf::write_hf_folder(out, &config, &tensors, Dtype::F32)
}
