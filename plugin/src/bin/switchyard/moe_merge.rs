//! `switchyard moe-merge`: fine-tunes of one dense model merged into a mixture of experts with
//! routers fitted on each fine-tune's domain text (see `plugin/src/moefy/merge.rs`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use switchyard::gguf::GgufFile;
use switchyard::moefy::merge::{check_experts, merge, Attention, MergeOptions};

use crate::route::LlamaBin;
use crate::trace::TextRun;

#[derive(Args)]
pub struct MoeMergeArgs {
    /// The dense llama-architecture base GGUF the experts were fine-tuned from (its FFN is
    /// expert 0).
    base: PathBuf,
    /// A fine-tune as NAME=MODEL.gguf (same network as the base); repeat. Its FFN becomes an
    /// expert of every layer, in the order given.
    #[arg(long = "expert", value_parser = crate::parse_named_path, required = true)]
    experts: Vec<(String, PathBuf)>,
    /// Each expert's domain text as NAME=FILE: the base runs on it and the routers learn to
    /// send its tokens to that expert.
    #[arg(long = "text", value_parser = crate::parse_named_path, required = true)]
    texts: Vec<(String, PathBuf)>,
    /// Experts each token uses.
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    /// Share of every domain's tokens labelled "base" when the routers are fitted: the base's
    /// FFN becomes the usual second pick beside the domain's expert.
    #[arg(long, default_value_t = 0.25)]
    base_share: f64,
    /// Attention, norms and embeddings: every model's mean (as BTX does; on SmolLM2's three
    /// demo experts it beat the base's on every domain, docs/BENCHMARKS.md), or the base's.
    #[arg(long, value_enum, default_value_t = Attention::Mean)]
    attention: Attention,
    /// Tokens per chunk of domain text.
    #[arg(long, default_value_t = 512)]
    ctx: u32,
    /// Chunks of each domain's text to capture.
    #[arg(long, default_value_t = 8)]
    chunks: u32,
    /// Keep each domain's capture here (NAME-CTXxCHUNKS.capture), and reuse those that exist:
    /// a folder per base and texts.
    #[arg(long)]
    capture_dir: Option<PathBuf>,
    #[command(flatten)]
    llama: LlamaBin,
    /// The mixture-of-experts GGUF to write (F32; llama-quantize it for serving).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn moe_merge(a: MoeMergeArgs, threads: Option<usize>) -> Result<()> {
    for (i, (name, _)) in a.experts.iter().enumerate() {
        if name == "base" || a.experts[..i].iter().any(|(n, _)| n == name) {
            bail!("--expert {name}=...: every expert needs a name of its own, other than 'base'");
        }
    }
    if let Some((name, _)) = a.texts.iter().find(|(n, _)| !a.experts.iter().any(|(e, _)| e == n)) {
        bail!("--text {name}=...: there is no --expert {name}");
    }
    let mut texts = Vec::with_capacity(a.experts.len());
    for (name, _) in &a.experts {
        match a.texts.iter().filter(|(n, _)| n == name).collect::<Vec<_>>()[..] {
            [(_, text)] => texts.push(text),
            [] => bail!("no --text {name}=FILE: every expert needs its domain's text"),
            _ => bail!("--text {name}=... given more than once"),
        }
    }
    let base = GgufFile::open(&a.base)?;
    let mut experts = Vec::with_capacity(a.experts.len());
    for (name, path) in &a.experts {
        experts.push((name.clone(), GgufFile::open(path)?));
    }
    check_experts(&base, &experts)?;
    if let Some(dir) = &a.capture_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut captures = Vec::with_capacity(a.experts.len());
    for ((name, _), text) in a.experts.iter().zip(texts) {
        let run = TextRun {
            text: text.clone(),
            ctx: a.ctx,
            chunks: a.chunks,
            llama: LlamaBin { llama_bin: a.llama.llama_bin.clone() },
        };
        // named by what it is made of (the folder is for one base): a changed text or run makes
        // a new capture instead of reusing a stale one
        let keep = match &a.capture_dir {
            Some(dir) => Some(dir.join(format!("{name}-{}x{}-{}.capture", a.ctx, a.chunks, text_stamp(text)?))),
            None => None,
        };
        captures.push(run.capture(&a.base, keep.as_deref(), threads)?);
    }
    let opts = MergeOptions { n_used: a.top_k, base_share: a.base_share, attention: a.attention, ..Default::default() };
    let layers = merge(&base, &experts, &captures, &opts, &a.output)?;
    let names: Vec<&str> = std::iter::once("base").chain(a.experts.iter().map(|(n, _)| n.as_str())).collect();
    println!(
        "wrote {}: {} layers of {} experts ({}), top-{}",
        a.output.display(),
        layers.len(),
        names.len(),
        names.join(", "),
        a.top_k
    );
    println!(
        "routers judged on {} held-out tokens in layer 0 ({} trained; the last layer has fewer); quartiles (25/50/75%) of the top pick's weight and of w2/w1:",
        layers[0].held_out_tokens, layers[0].train_tokens
    );
    println!("| layer | domain accuracy | top weight | w2/w1 | base second |");
    println!("|---|---|---|---|---|");
    let q = |v: [f64; 3]| format!("{:.2} / {:.2} / {:.2}", v[0], v[1], v[2]);
    for (il, l) in layers.iter().enumerate() {
        println!(
            "| {il} | {:.1}% | {} | {} | {:.1}% |",
            100.0 * l.domain_accuracy,
            q(l.top_weight),
            q(l.second_over_first),
            100.0 * l.base_second
        );
    }
    Ok(())
}

/// A short stamp of a text file's path, size and modification time: which capture it made.
fn text_stamp(path: &std::path::Path) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (path, meta.len(), meta.modified().ok()).hash(&mut h);
    Ok(format!("{:08x}", h.finish() as u32))
}
