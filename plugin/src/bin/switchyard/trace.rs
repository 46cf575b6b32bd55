//! `switchyard trace`: record a MoE model's routing on real text, by running the patched
//! llama.cpp's llama-perplexity with `SWITCHYARD_TRACE` (see `plugin/src/moe/trace.rs`). The
//! same run, with `SWITCHYARD_CAPTURE`, records a dense model's FFN inputs for `moefy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use switchyard::moe::capture::Capture;
use switchyard::moe::trace::Trace;

use crate::route::LlamaBin;

/// Real text for llama-perplexity to run through a model, in chunks.
#[derive(Args)]
pub struct TextRun {
    /// Text to run through the model (llama-perplexity's chunks of --ctx tokens).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: u32,
    /// Chunks to run (0: the whole text).
    #[arg(long, default_value_t = 0)]
    pub chunks: u32,
    #[command(flatten)]
    pub llama: LlamaBin,
}

impl TextRun {
    /// Runs llama-perplexity over the text with `var` naming a temporary file beside `output`
    /// for the patched llama.cpp to write; `check` reads it, and only when the run and the check
    /// succeed does it become `output`.
    pub fn record<T>(
        &self,
        model: &Path,
        var: &str,
        output: &Path,
        threads: Option<usize>,
        check: impl FnOnce(&Path) -> switchyard::Result<T>,
    ) -> Result<T> {
        let exe = self.llama.llama_bin.join("llama-perplexity");
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".switchyard-record-")
            .tempfile_in(parent)
            .with_context(|| format!("{}: cannot create a temporary file", parent.display()))?;
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut cmd = Command::new(&exe);
        cmd.arg("-m").arg(model).arg("-f").arg(&self.text);
        cmd.args(["-c", &self.ctx.to_string(), "-t", &threads.to_string(), "--no-warmup"]);
        if self.chunks > 0 {
            cmd.args(["--chunks", &self.chunks.to_string()]);
        }
        let out = cmd.env(var, tmp.path()).output().with_context(|| format!("cannot run {}", exe.display()))?;
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("{} failed on {}:\n{}", exe.display(), model.display(), tail.join("\n"));
        }
        let value = check(tmp.path())?;
        tmp.persist(output).with_context(|| format!("cannot write {}", output.display()))?;
        Ok(value)
    }
}

impl TextRun {
    /// The FFN inputs of `model` on the text (`SWITCHYARD_CAPTURE`): read from `keep` when that
    /// file exists (a capture made earlier, reused as it is), else recorded, into `keep` when
    /// given (kept for later runs) or a temporary file.
    pub fn capture(&self, model: &Path, keep: Option<&Path>, threads: Option<usize>) -> Result<Capture> {
        match keep {
            Some(path) if path.exists() => Ok(Capture::load(path)?),
            Some(path) => self.record(model, "SWITCHYARD_CAPTURE", path, threads, Capture::load),
            None => {
                let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
                self.record(model, "SWITCHYARD_CAPTURE", &dir.path().join("capture"), threads, Capture::load)
            }
        }
    }
}

#[derive(Args)]
pub struct TraceArgs {
    /// A mixture-of-experts GGUF llama.cpp runs.
    model: PathBuf,
    #[command(flatten)]
    run: TextRun,
    /// The trace to write (JSON lines); written only when the run succeeds.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn trace(a: TraceArgs, threads: Option<usize>) -> Result<()> {
    let trace = a.run.record(&a.model, "SWITCHYARD_TRACE", &a.output, threads, Trace::load)?;
    println!(
        "wrote {}: {} tokens, {} MoE layers, {} experts",
        a.output.display(),
        trace.tokens.len(),
        trace.n_layers,
        trace.n_experts
    );
    Ok(())
}
