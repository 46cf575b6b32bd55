//! Building a bundle (`switchyard pack`) from a base GGUF and fine-tuned experts (Hugging Face
//! folders or GGUF files): D = W_expert - dequantize(W_base) for every tensor, then the codec
//! for linear weights, 8-bit deltas for embeddings/output and whole F32 copies for norms and
//! biases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::bundle::fingerprint::base_fingerprint;
use crate::bundle::low_rank::{may_factor, worth_factoring, LowRankDelta, FACTOR_TYPE, MIN_SHARE_KEPT};
use crate::bundle::{write_bundle, ExpertDeltas, ExpertInfo, TensorDelta};
use crate::codec::{self, CodecParams, ErrorFeedback, Method};
use crate::convert::config_from_gguf;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::hf::{self, HfConfig, HfModel};
use crate::imatrix::Imatrix;
use crate::weights::ModelWeights;
use crate::{quants, GgmlType};

/// The rank linear weights' deltas are factored at unless told otherwise. On the real math
/// expert (SmolLM2-135M) rank 64 keeps on average 77% of each matrix's delta's squared norm
/// (72% of all of them together) in 1.56 bits per
/// parameter, is closer to the expert than the 2-bit codec (mean KL 0.00097 against 0.00118,
/// both materialized in F32), and decodes 1.5x faster in llama.cpp's graph
/// (docs/BENCHMARKS.md, "Low-rank deltas in the bundle").
pub const DEFAULT_RANK: usize = 64;

/// How tensors that are not linear weights but 2-D (token embeddings, output) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingStorage {
    /// The delta as Q8_0 (8.5 bits per parameter).
    Q8_0,
    /// The expert's tensor whole in F32.
    Lossless,
}

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub params: CodecParams,
    pub imatrix: Option<PathBuf>,
    /// Feed rounding errors forward by each weight's input covariance (the salient codec only;
    /// the imatrix must hold covariances: the patched `llama-imatrix --covariance`).
    pub error_feedback: bool,
    pub embeddings: EmbeddingStorage,
    /// Factor each linear weight's delta to this rank where that makes it cheaper to apply
    /// ([`crate::bundle::low_rank::worth_factoring`]); 0: the codec for all.
    pub rank: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            params: CodecParams::default(),
            imatrix: None,
            error_feedback: false,
            embeddings: EmbeddingStorage::Q8_0,
            rank: DEFAULT_RANK,
        }
    }
}

/// The calibration statistics the codec sees: the imatrix's channel weights and, with error
/// feedback, each dense weight's covariance factor, computed on first use and shared by every
/// expert (it depends on the base's activations only).
pub struct Calibration {
    imatrix: Option<Imatrix>,
    label: String,
    feedback: Option<Mutex<HashMap<String, Arc<ErrorFeedback>>>>,
}

impl Calibration {
    pub fn load(opts: &PackOptions) -> Result<Calibration> {
        let imatrix = opts.imatrix.as_deref().map(Imatrix::load).transpose()?;
        let label = opts.imatrix.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        if opts.error_feedback {
            if opts.params.method != Method::Salient {
                crate::bail_invalid!("error feedback applies to the salient codec, not {}", opts.params.method.name());
            }
            match &imatrix {
                None => crate::bail_invalid!("error feedback needs an imatrix with covariances (--imatrix)"),
                Some(m) if !m.has_covariances() => crate::bail_invalid!(
                    "{label}: has no covariances; make it with the patched llama-imatrix --covariance"
                ),
                Some(_) => {}
            }
        }
        let feedback = opts.error_feedback.then(|| Mutex::new(HashMap::new()));
        Ok(Calibration { imatrix, label, feedback })
    }

    fn act(&self, tensor: &str) -> Option<&[f32]> {
        self.imatrix.as_ref().and_then(|m| m.get(tensor))
    }

    /// The error-feedback factor of a dense weight; stacked MoE experts keep the diagonal weights.
    fn feedback(&self, t: &TensorInfo) -> Result<Option<Arc<ErrorFeedback>>> {
        let Some(cache) = &self.feedback else {
            return Ok(None);
        };
        if t.ne.iter().skip(2).any(|&n| n > 1) {
            return Ok(None);
        }
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(&t.name) {
            return Ok(Some(f.clone()));
        }
        let Some(cov) = self.imatrix.as_ref().and_then(|m| m.covariance(&t.name)) else {
            crate::bail_invalid!("{}: no covariance for tensor '{}' ('{}.in_cov')", self.label, t.name, t.name);
        };
        let f = Arc::new(
            ErrorFeedback::new(cov, t.ne[0] as usize)
                .map_err(|e| Error::Invalid(format!("{}: tensor '{}': {e}", self.label, t.name)))?,
        );
        cache.insert(t.name.clone(), f.clone());
        Ok(Some(f))
    }
}

/// The randomized SVD's seed: a fixed one, so that packing twice writes the same bytes.
const SVD_SEED: u64 = 0x5eed;

/// Progress callback: (what, done, total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// Linear weights are the matrices that multiply activations inside a block: the codec's
/// target. Norms, biases, the MoE router, embeddings and output are stored apart.
pub fn is_linear_weight(name: &str, ne: &[u64]) -> bool {
    const LINEAR: &[&str] = &[
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_qkv",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
        "ffn_gate_exps",
        "ffn_up_exps",
        "ffn_down_exps",
        "ffn_gate_shexp",
        "ffn_up_shexp",
        "ffn_down_shexp",
    ];
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((_, part)) = rest.split_once('.') else {
        return false;
    };
    let Some(kind) = part.strip_suffix(".weight") else {
        return false;
    };
    ne.len() >= 2 && LINEAR.contains(&kind) && ne[0].is_multiple_of(8)
}

/// Check that `hf` describes the same network as the base GGUF: same architecture and sizes.
fn check_same_model(base_label: &str, base: &HfConfig, other: &HfConfig, other_label: &str) -> Result<()> {
    let fields: [(&str, usize, usize); 7] = [
        ("num_hidden_layers", base.num_hidden_layers, other.num_hidden_layers),
        ("hidden_size", base.hidden_size, other.hidden_size),
        ("intermediate_size", base.intermediate_size, other.intermediate_size),
        ("num_attention_heads", base.num_attention_heads, other.num_attention_heads),
        ("num_key_value_heads", base.n_head_kv(), other.n_head_kv()),
        ("head_dim", base.head_dim(), other.head_dim()),
        ("vocab_size", base.vocab_size, other.vocab_size),
    ];
    if hf::Arch::from_model_type(&base.model_type) != hf::Arch::from_model_type(&other.model_type) {
        crate::bail_invalid!(
            "{other_label}: model_type '{}' does not match the base's '{}' ({base_label})",
            other.model_type,
            base.model_type
        );
    }
    for (key, b, o) in fields {
        if b != o {
            let what = if key == "vocab_size" { "vocab mismatch: " } else { "" };
            crate::bail_invalid!("{what}{other_label}: {key} is {o} but the base ({base_label}) has {b}");
        }
    }
    Ok(())
}

/// Deltas of one expert against `base`.
pub fn expert_deltas(
    base: &GgufFile,
    expert: &ModelWeights,
    info: ExpertInfo,
    calib: &Calibration,
    opts: &PackOptions,
    progress: Progress<'_>,
) -> Result<(ExpertDeltas, Factoring)> {
    let label = expert.label();
    // Every expert tensor must land somewhere in the base model.
    for (g, source) in expert.tensors()? {
        if base.tensor(&g).is_none() {
            crate::bail_invalid!("{label}: tensor '{source}' ('{g}') is not in the base model {}", base.label());
        }
    }
    let total: u64 = base.tensors.len() as u64;
    let mut factoring = Factoring::default();
    let mut out = Vec::new();
    // one tensor at a time, each computed in parallel inside: a tensor's f32 copies are the
    // peak memory, and one set of them at a time keeps it bounded for any thread count
    for (k, t) in base.tensors.iter().enumerate() {
        progress(&format!("{}: {}", info.name, t.name), k as u64, total);
        if let Some(d) = tensor_delta(base, t, expert, &label, &info, calib, opts, &mut factoring)? {
            out.push((t.name.clone(), d));
        }
    }
    progress(&info.name, total, total);
    Ok((ExpertDeltas { info, tensors: out }, factoring))
}

/// The matrices `pack --rank` tried to factor: each one's name, the share of its delta's
/// squared norm the factors keep, and whether they replaced the codec (a share of at least
/// [`MIN_SHARE_KEPT`]).
#[derive(Debug, Default)]
pub struct Factoring {
    pub tried: Vec<(String, f64, bool)>,
}

impl Factoring {
    /// (matrices factored, matrices that kept the codec, mean share kept by the factored ones)
    pub fn summary(&self) -> (usize, usize, f64) {
        let kept: Vec<f64> = self.tried.iter().filter(|t| t.2).map(|t| t.1).collect();
        let mean = if kept.is_empty() { 0.0 } else { kept.iter().sum::<f64>() / kept.len() as f64 };
        (kept.len(), self.tried.len() - kept.len(), mean)
    }
}

#[allow(clippy::too_many_arguments)]
fn tensor_delta(
    base: &GgufFile,
    t: &TensorInfo,
    expert: &ModelWeights,
    label: &str,
    info: &ExpertInfo,
    calib: &Calibration,
    opts: &PackOptions,
    factoring: &mut Factoring,
) -> Result<Option<TensorDelta>> {
    let Some(source) = expert.source_name(&t.name) else {
        let hf_name = hf::hf_name(&t.name).unwrap_or_default();
        crate::bail_invalid!("{label}: missing tensor '{hf_name}' (base tensor '{}')", t.name);
    };
    let (w_expert, ne) = expert.tensor(&t.name)?;
    if ne != t.ne {
        let vocab = if t.name == "token_embd.weight" || t.name == "output.weight" { "vocab mismatch: " } else { "" };
        crate::bail_invalid!(
            "{vocab}{label}: tensor '{source}' has shape {ne:?} (ggml order) but base tensor '{}' in {} has {:?}",
            t.name,
            base.label(),
            t.ne
        );
    }
    let base_bytes = base.try_tensor_data(t)?;
    let n = t.n_elements() as usize;
    let w_base = quants::dequantize_par(t.ty, base_bytes, n, t.ne[0] as usize)
        .map_err(|e| Error::Invalid(format!("{}: tensor '{}': {e}", base.label(), t.name)))?;
    let mut d = w_expert;
    d.par_iter_mut().zip(&w_base).for_each(|(e, b)| *e -= b);
    if d.par_iter().all(|&x| x == 0.0) {
        return Ok(None);
    }
    if let Some(bad) = d.iter().position(|x| !x.is_finite()) {
        crate::bail_invalid!("{label}: tensor '{source}' has a non-finite value at element {bad}");
    }
    let n_in = t.ne[0] as usize;
    if may_factor(&t.name, &t.ne) && worth_factoring(n_in, n / n_in, opts.rank) {
        let what = format!("expert '{}', tensor '{}'", info.name, t.name);
        let (l, share) = LowRankDelta::factor(&d, n_in, n / n_in, opts.rank, SVD_SEED, &what)?;
        let replaces = share >= MIN_SHARE_KEPT;
        factoring.tried.push((t.name.clone(), share, replaces));
        if replaces {
            return Ok(Some(TensorDelta::LowRank(l)));
        }
    }
    if is_linear_weight(&t.name, &t.ne) {
        let feedback = calib.feedback(t)?;
        let c =
            codec::compress_with_feedback(&d, n_in, n / n_in, calib.act(&t.name), feedback.as_deref(), &info.params)
                .map_err(|e| Error::Invalid(format!("expert '{}', tensor '{}': {e}", info.name, t.name)))?;
        return Ok(Some(TensorDelta::Codec(c)));
    }
    if t.ne.len() >= 2 && opts.embeddings == EmbeddingStorage::Q8_0 && n_in.is_multiple_of(GgmlType::Q8_0.block_size())
    {
        let data = quants::quantize_par(GgmlType::Q8_0, &d, n_in)?;
        return Ok(Some(TensorDelta::Dense { ty: GgmlType::Q8_0, data }));
    }
    // Whole tensor, losslessly: the expert's own values (base + d exactly as the expert has them).
    d.iter_mut().zip(&w_base).for_each(|(x, b)| *x += b);
    Ok(Some(TensorDelta::Replace { data: d }))
}

/// What [`pack`] made for one expert.
#[derive(Debug)]
pub struct ExpertReport {
    pub name: String,
    pub n_tensors: usize,
    pub stored_bytes: usize,
    pub factoring: Factoring,
}

/// What [`pack`] made, for the command line to print.
#[derive(Debug)]
pub struct PackReport {
    pub experts: Vec<ExpertReport>,
    pub bundle_bytes: u64,
}

/// Build the bundle at `out` from `base_gguf` and `experts` as (name, Hugging Face folder or
/// GGUF file). `base_hf`, the base's Hugging Face folder, if given, is checked to describe the
/// same network as the base GGUF.
pub fn pack(
    base_gguf: &Path,
    base_hf: Option<&Path>,
    experts: &[(String, PathBuf)],
    opts: &PackOptions,
    out: &Path,
    progress: Progress<'_>,
) -> Result<PackReport> {
    opts.params.validate()?;
    if !opts.rank.is_multiple_of(FACTOR_TYPE.block_size()) {
        crate::bail_invalid!(
            "rank {}: must be a multiple of {} (the factors are {FACTOR_TYPE} rows)",
            opts.rank,
            FACTOR_TYPE.block_size()
        );
    }
    if experts.is_empty() {
        crate::bail_invalid!("no experts given (use --expert NAME=HF_DIR or NAME=MODEL.gguf)");
    }
    let base = GgufFile::open(base_gguf)?;
    if base.metadata.contains_key(crate::bundle::naming::KEY_FORMAT_VERSION) {
        crate::bail_invalid!("{}: is already a switchyard bundle; give the plain base model GGUF", base.label());
    }
    let gguf_cfg = config_from_gguf(&base)?;
    let gguf_label = base.label().to_string();
    if let Some(base_hf) = base_hf {
        let base_model = HfModel::open(base_hf)?;
        let hf_label = base_hf.join("config.json").display().to_string();
        check_same_model(&gguf_label, &gguf_cfg, &base_model.config, &format!("wrong base: {hf_label}"))?;
    }
    let calib = Calibration::load(opts)?;
    let fingerprint = base_fingerprint(&base);
    let mut deltas = Vec::new();
    let mut reports = Vec::new();
    for (name, path) in experts {
        crate::bundle::naming::check_expert_name(name)?;
        let model = ModelWeights::open(path)?;
        check_same_model(&gguf_label, &gguf_cfg, &model.config()?, &model.config_label())?;
        let info = ExpertInfo {
            name: name.clone(),
            params: opts.params,
            imatrix: opts.imatrix.as_ref().and_then(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()),
            rank: opts.rank,
        };
        let (mut d, factoring) = expert_deltas(&base, &model, info, &calib, opts, progress)?;
        // the bundle records a rank only for an expert it holds factors of
        if factoring.summary().0 == 0 {
            d.info.rank = 0;
        }
        reports.push(ExpertReport {
            name: name.clone(),
            n_tensors: d.tensors.len(),
            stored_bytes: d.stored_bytes(),
            factoring,
        });
        deltas.push(d);
    }
    write_bundle(out, &base, &fingerprint, &deltas)?;
    let bundle_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(PackReport { experts: reports, bundle_bytes })
}
