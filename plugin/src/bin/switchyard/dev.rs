//! Conversions and synthetic models: the plumbing tests, demos and fine-tuning scripts need.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand, ValueEnum};
use safetensors::Dtype;

use switchyard::convert::{gguf_to_hf, hf_to_gguf};
use switchyard::gguf::GgufFile;
use switchyard::hf::HfModel;
use switchyard::synth::{self, DeltaSpec};
use switchyard::GgmlType;

#[derive(Args)]
pub struct ToHfArgs {
    model: PathBuf,
    /// Safetensors dtype: f32 (exact) or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn to_hf(a: ToHfArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => Dtype::F32,
        "bf16" => Dtype::BF16,
        "f16" => Dtype::F16,
        other => return Err(anyhow!("--dtype must be f32, f16 or bf16 (got '{other}')")),
    };
    let f = GgufFile::open(&a.model)?;
    gguf_to_hf(&f, &a.output, dtype)?;
    println!("wrote {} ({} tensors)", a.output.display(), f.tensors.len());
    Ok(())
}

#[derive(Args)]
pub struct FromHfArgs {
    hf_dir: PathBuf,
    /// GGUF whose tokenizer.* metadata the new model carries (its vocabulary must match).
    #[arg(long)]
    tokenizer_from: PathBuf,
    /// Type of 2-D weights (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1).
    #[arg(long = "type", default_value = "f32")]
    ty: String,
    #[arg(long, default_value = "switchyard model")]
    name: String,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn from_hf(a: FromHfArgs) -> Result<()> {
    let ty = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown type '{}'", a.ty))?;
    let hf = HfModel::open(&a.hf_dir)?;
    let tok = GgufFile::open(&a.tokenizer_from)?;
    let n_tokens = tok.metadata.get_str_array("tokenizer.ggml.tokens")?.len();
    if n_tokens != hf.config.vocab_size {
        return Err(anyhow!(
            "vocab mismatch: {} has {n_tokens} tokens, {} has vocab_size {}",
            a.tokenizer_from.display(),
            a.hf_dir.join("config.json").display(),
            hf.config.vocab_size
        ));
    }
    hf_to_gguf(&hf, Some(&tok), &a.name, ty, &a.output)?;
    println!("wrote {}", a.output.display());
    Ok(())
}

#[derive(Subcommand)]
pub enum SynthCommand {
    /// A random llama model (Hugging Face folder, F32) with a given vocabulary size, tiny or of
    /// a real model's shapes; with --experts, a Mixtral-style mixture of experts.
    #[command(alias = "tiny")]
    Model {
        /// Take the vocabulary size from this GGUF's tokenizer.
        #[arg(long)]
        vocab_from: PathBuf,
        /// tiny (2 layers of width 64, for tests) or llama-3.2-1b (16 layers of width 2048).
        #[arg(long, default_value = "tiny")]
        shape: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Experts per layer (a Mixtral-style model).
        #[arg(long)]
        experts: Option<usize>,
        /// Experts each token uses.
        #[arg(long, default_value_t = 2, requires = "experts")]
        used: usize,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// A synthetic expert of a base: structured deltas (noise, low rank, outlier channels).
    Expert {
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Scale of the whole delta relative to the default structure.
        #[arg(long, default_value_t = 1.0)]
        strength: f32,
        /// Relative RMS of a change to the token embeddings (default: untouched).
        #[arg(long, default_value_t = 0.0)]
        embeddings: f32,
        /// The delta's structure: noise with a small low-rank part and outlier channels
        /// (`structured`), or most of its norm in 24 directions, as fine-tunes have (`low-rank`).
        #[arg(long, value_enum, default_value = "structured")]
        kind: DeltaKind,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeltaKind {
    Structured,
    LowRank,
}

pub fn synth(c: SynthCommand) -> Result<()> {
    match c {
        SynthCommand::Model { vocab_from, shape, seed, experts, used, output } => {
            let dims = match shape.as_str() {
                "tiny" => synth::Dims::TINY,
                "llama-3.2-1b" => synth::Dims::LLAMA_3_2_1B,
                _ => anyhow::bail!("--shape {shape}: expected tiny or llama-3.2-1b"),
            };
            let tok = GgufFile::open(&vocab_from)?;
            let vocab = tok.metadata.get_str_array("tokenizer.ggml.tokens")?.len();
            if let Some(n) = experts {
                if !(1..=n).contains(&used) {
                    anyhow::bail!("--used {used} must be 1 to --experts {n}");
                }
            }
            let moe = experts.map(|n_expert| synth::MoeShape { n_expert, n_used: used });
            synth::random_model(&output, vocab, dims, moe, seed)?;
            println!("wrote {} (vocab {vocab})", output.display());
        }
        SynthCommand::Expert { base, seed, strength, embeddings, kind, output } => {
            let d = match kind {
                DeltaKind::Structured => DeltaSpec::default(),
                DeltaKind::LowRank => DeltaSpec::LOW_RANK,
            };
            let spec = DeltaSpec {
                noise: d.noise * strength,
                low_rank: d.low_rank * strength,
                outlier: d.outlier * strength,
                embeddings,
                ..d
            };
            synth::make_expert(&HfModel::open(&base)?, &output, &spec, seed)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}
