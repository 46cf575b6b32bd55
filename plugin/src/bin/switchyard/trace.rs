//! `switchyard trace`: record a MoE model's routing on real text, by running the patched
//! llama.cpp's llama-perplexity with `SWITCHYARD_TRACE` (see `plugin/src/moe/trace.rs`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use switchyard::moe::trace::Trace;

use crate::route::LlamaBin;

#[derive(Args)]
pub struct TraceArgs {
    /// A mixture-of-experts GGUF llama.cpp runs.
    model: PathBuf,
    /// Text to run through the model (llama-perplexity's chunks of --ctx tokens).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: u32,
    /// Chunks to run (0: the whole text).
    #[arg(long, default_value_t = 0)]
    chunks: u32,
    /// The trace to write (JSON lines); written only when the run succeeds.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    llama: LlamaBin,
}

pub fn trace(a: TraceArgs, threads: Option<usize>) -> Result<()> {
    let exe = a.llama.llama_bin.join("llama-perplexity");
    let parent = a.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".switchyard-trace-")
        .tempfile_in(parent)
        .with_context(|| format!("{}: cannot create a temporary file", parent.display()))?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut cmd = Command::new(&exe);
    cmd.arg("-m").arg(&a.model).arg("-f").arg(&a.text);
    cmd.args(["-c", &a.ctx.to_string(), "-t", &threads.to_string(), "--no-warmup"]);
    if a.chunks > 0 {
        cmd.args(["--chunks", &a.chunks.to_string()]);
    }
    let out =
        cmd.env("SWITCHYARD_TRACE", tmp.path()).output().with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{} failed on {}:\n{}", exe.display(), a.model.display(), tail.join("\n"));
    }
    let trace = Trace::load(tmp.path())?;
    tmp.persist(&a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    println!(
        "wrote {}: {} tokens, {} MoE layers, {} experts",
        a.output.display(),
        trace.tokens.len(),
        trace.n_layers,
        trace.n_experts
    );
    Ok(())
}
