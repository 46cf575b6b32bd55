//! `switchyard moe-prune`: a mixture-of-experts GGUF with N experts per layer kept of E, chosen
//! on calibration text (see `plugin/src/moe/prune.rs`); the rest dropped from the file. Pruning
//! for one task is pruning on calibration text of that task.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use switchyard::gguf::GgufFile;
use switchyard::moe::prune::{
    check_model, choose, write_pruned, PruneMethod, PruneOptions, Search, DEFAULT_MAX_SUBSETS,
};

use crate::trace::TextRun;

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    /// Per layer, the subset of experts whose output on the calibration tokens is closest to the
    /// unpruned layer's ("Not All Experts are Equal", arXiv 2402.14800).
    Enum,
    /// Router weight times expert output norm, averaged over the tokens routed to the expert
    /// (REAP, arXiv 2510.13999).
    Reap,
    /// The experts most often in a token's top-k.
    Freq,
    /// A seeded uniform choice (a baseline).
    Random,
}

impl From<Method> for PruneMethod {
    fn from(m: Method) -> PruneMethod {
        match m {
            Method::Enum => PruneMethod::Enum,
            Method::Reap => PruneMethod::Reap,
            Method::Freq => PruneMethod::Freq,
            Method::Random => PruneMethod::Random,
        }
    }
}

#[derive(Args)]
pub struct MoePruneArgs {
    /// The mixture-of-experts GGUF (llama architecture, stacked experts, as Mixtral).
    model: PathBuf,
    /// Experts to keep per layer.
    #[arg(long)]
    keep: usize,
    #[arg(long, value_enum, default_value_t = Method::Enum)]
    method: Method,
    /// Seed of --method random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// --method enum tries every subset of --keep experts up to this many (at most 1048576),
    /// else searches greedily (drops one expert at a time).
    #[arg(long, default_value_t = DEFAULT_MAX_SUBSETS)]
    max_subsets: usize,
    /// Calibration text: the model runs on it and its FFN inputs are captured. Text of one task
    /// prunes for that task.
    #[command(flatten)]
    calib: TextRun,
    /// Keep the capture here, and reuse it if it exists (one capture serves every method and
    /// --keep).
    #[arg(long)]
    capture: Option<PathBuf>,
    /// The pruned GGUF to write.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn moe_prune(a: MoePruneArgs, threads: Option<usize>) -> Result<()> {
    let model = GgufFile::open(&a.model)?;
    // an impossible request fails before the calibration run
    check_model(&model, a.keep)?;
    let capture = a.calib.capture(&a.model, a.capture.as_deref(), threads)?;
    let method = PruneMethod::from(a.method);
    let opts = PruneOptions { keep: a.keep, method, seed: a.seed, max_subsets: a.max_subsets };
    let start = std::time::Instant::now();
    let report = choose(&model, &capture, &opts)?;
    let chosen = start.elapsed().as_secs_f64();
    let kept: Vec<Vec<usize>> = report.layers.iter().map(|l| l.kept.clone()).collect();
    write_pruned(&model, &kept, method.name(), &a.output)?;
    let search = match report.layers.first().map(|l| l.search) {
        Some(Search::Exhaustive(n)) => format!(" (every one of {n} subsets per layer)"),
        Some(Search::Greedy) => " (greedy: more than --max-subsets subsets per layer)".to_string(),
        _ => String::new(),
    };
    println!(
        "wrote {}: {} layers, {} -> {} experts, top-{} -> top-{}, method {}{search}; chosen in {chosen:.1} s, written in {:.1} s",
        a.output.display(),
        report.layers.len(),
        report.experts_before,
        report.experts_after,
        report.used_before,
        report.used_after,
        method.name(),
        start.elapsed().as_secs_f64() - chosen
    );
    println!(
        "per layer: calibration tokens, experts kept, relative loss ||Z - Z'|| / ||Z||, scores ({})",
        method.score_meaning()
    );
    for (il, l) in report.layers.iter().enumerate() {
        let kept: Vec<String> = l.kept.iter().map(|j| j.to_string()).collect();
        let scores: Vec<String> = l.scores.iter().map(|s| format!("{s:.4}")).collect();
        println!(
            "layer {il}: {} tokens, kept [{}], relative loss {:.4}, scores [{}]",
            l.tokens,
            kept.join(", "),
            l.relative_loss,
            if method == PruneMethod::Random { "-".to_string() } else { scores.join(", ") }
        );
    }
    println!("mean relative loss {:.4}", report.mean_relative_loss());
    Ok(())
}
