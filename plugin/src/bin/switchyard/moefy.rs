//! `switchyard moefy`: a dense GGUF refactored into a mixture of experts that stock llama.cpp
//! runs (see `plugin/src/moefy/mod.rs`), from the FFN inputs of a run on calibration text.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use switchyard::gguf::GgufFile;
use switchyard::moefy::{moefy as refactor, MoefyOptions};

use crate::trace::TextRun;

#[derive(Args)]
pub struct MoefyArgs {
    /// The dense llama-architecture GGUF.
    dense: PathBuf,
    /// Experts per layer.
    #[arg(long)]
    experts: usize,
    /// Experts each token uses (baked into the file: the down projections are scaled for it).
    #[arg(long)]
    top_k: usize,
    /// Fraction of each layer's channels kept in every expert (Read-ME's shared expert). On
    /// SmolLM2-135M, 0.25 instead of 0.5 makes top-2 of 8 far worse (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 0.5)]
    shared: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Calibration text: the dense model runs on it and its FFN inputs are captured.
    #[command(flatten)]
    calib: TextRun,
    /// Keep the capture here, and reuse it if it exists (one capture serves every --top-k).
    #[arg(long)]
    capture: Option<PathBuf>,
    /// The mixture-of-experts GGUF to write.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn moefy(a: MoefyArgs, threads: Option<usize>) -> Result<()> {
    let dense = GgufFile::open(&a.dense)?;
    let capture = a.calib.capture(&a.dense, a.capture.as_deref(), threads)?;
    let opts = MoefyOptions { n_expert: a.experts, n_used: a.top_k, shared: a.shared, seed: a.seed };
    let report = refactor(&dense, &capture, &opts, &a.output)?;
    let n = report.layers.len() as f64;
    let mean = |f: fn(&switchyard::moefy::LayerReport) -> f64| report.layers.iter().map(f).sum::<f64>() / n;
    println!(
        "wrote {}: {} layers of {} experts, top-{}, {} channels each ({} shared)",
        a.output.display(),
        report.layers.len(),
        a.experts,
        a.top_k,
        report.expert_channels,
        report.n_shared
    );
    let first = &report.layers[0];
    if a.top_k < a.experts {
        println!(
            "routers on {} held-out calibration tokens per layer ({} trained): top-1 accuracy {:.1}%, contribution recall of the top-{} {:.1}% (mean over layers)",
            first.held_out_tokens,
            first.train_tokens,
            100.0 * mean(|l| l.top1_accuracy),
            a.top_k,
            100.0 * mean(|l| l.mass_recall)
        );
    } else {
        println!("every expert runs for every token: the router is flat and the model computes the dense FFN");
    }
    Ok(())
}
