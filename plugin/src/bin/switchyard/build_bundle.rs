//! `switchyard pack`: a bundle from a base GGUF and fine-tuned experts (the library half is
//! `switchyard::build_bundle`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use switchyard::build_bundle::{pack as pack_bundle, EmbeddingStorage, PackOptions, DEFAULT_RANK};
use switchyard::bundle::low_rank::MIN_SHARE_KEPT;
use switchyard::codec::{CodecParams, Method};

use crate::progress;

#[derive(Clone, Copy, ValueEnum)]
pub enum CodecArg {
    /// ME-Switch salient-aware mixed precision.
    Salient,
    /// Sign bits and one scale per matrix.
    Bitdelta,
    /// Round-to-nearest, one step per output row.
    Rtn,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EmbedArg {
    Q8_0,
    Lossless,
}

#[derive(Args)]
pub struct PackArgs {
    /// The base model as llama.cpp runs it (any type switchyard dequantizes).
    #[arg(long)]
    base_gguf: PathBuf,
    /// The base model's Hugging Face folder, checked to describe the same network.
    #[arg(long)]
    base: Option<PathBuf>,
    /// An expert as NAME=HF_DIR or NAME=MODEL.gguf (any type switchyard dequantizes); repeat.
    #[arg(long = "expert", value_parser = crate::parse_named_path, required = true)]
    experts: Vec<(String, PathBuf)>,
    /// Bits per non-salient delta parameter (1-4).
    #[arg(long, default_value_t = 2)]
    bits: u8,
    /// Fraction of input channels kept at high precision.
    #[arg(long, default_value_t = 0.01)]
    salient: f32,
    /// Bits of the salient channels (8 or 16).
    #[arg(long, default_value_t = 16)]
    salient_bits: u8,
    /// Input channels per step size (0: one per output row).
    #[arg(long, default_value_t = 128)]
    group_size: usize,
    /// Codec: salient (default), or a baseline for comparisons.
    #[arg(long, value_enum, default_value = "salient")]
    codec: CodecArg,
    /// llama.cpp importance matrix (legacy .dat or GGUF) weighting the salient-channel choice.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Feed each channel's rounding error forward by the input covariance (GPTQ-style), so the
    /// output error on calibration text is what is minimised; needs an --imatrix made with
    /// the patched llama-imatrix --covariance. Salient codec only.
    #[arg(long)]
    error_feedback: bool,
    /// Store each linear weight's delta as two factors of this rank (a multiple of 32), D ~ B A,
    /// where that costs at most half the multiply-adds of a dense delta and keeps at least half
    /// the delta's squared norm; the graph then applies it in r (n_in + n_out) instead of
    /// n_in n_out per token. The other weights, and all with 0, get the codec.
    #[arg(long, default_value_t = DEFAULT_RANK)]
    rank: usize,
    /// How changed embeddings/output are stored.
    #[arg(long, value_enum, default_value = "q8-0")]
    embeddings: EmbedArg,
    /// Output bundle.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn pack(a: PackArgs) -> Result<()> {
    let params = match a.codec {
        CodecArg::Salient => CodecParams {
            method: Method::Salient,
            bits: a.bits,
            salient_fraction: a.salient,
            salient_bits: a.salient_bits,
            group_size: a.group_size,
        },
        CodecArg::Bitdelta => CodecParams::bitdelta(),
        CodecArg::Rtn => CodecParams::rtn(a.bits),
    };
    params.validate()?;
    let opts = PackOptions {
        params,
        imatrix: a.imatrix,
        error_feedback: a.error_feedback,
        embeddings: match a.embeddings {
            EmbedArg::Q8_0 => EmbeddingStorage::Q8_0,
            EmbedArg::Lossless => EmbeddingStorage::Lossless,
        },
        rank: a.rank,
    };
    let pb = progress::bar("pack");
    let report = pack_bundle(&a.base_gguf, a.base.as_deref(), &a.experts, &opts, &a.output, &progress::reporter(&pb))?;
    pb.finish_and_clear();
    println!("wrote {} ({})", a.output.display(), crate::mib(report.bundle_bytes));
    for e in report.experts {
        println!(
            "  expert {}: {} tensors changed, {} of deltas",
            e.name,
            e.n_tensors,
            crate::mib(e.stored_bytes as u64)
        );
        if !e.factoring.tried.is_empty() {
            let (factored, declined, mean) = e.factoring.summary();
            println!(
                "    {factored} matrices factored at rank {} (share of ||D||^2 kept: mean {mean:.3}); {declined} kept the codec (factors would keep under {MIN_SHARE_KEPT})",
                a.rank
            );
        }
    }
    Ok(())
}
