//! `switchyard moe-pack`: a MoE GGUF with low-precision copies of its experts and per-layer
//! skipping thresholds for `--moe-cache` (the library half is `switchyard::moe::low_precision`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use switchyard::gguf::GgufFile;
use switchyard::moe::low_precision::{moe_pack as pack, MoePackOptions};
use switchyard::moe::trace::Trace;
use switchyard::GgmlType;

#[derive(Args)]
pub struct MoePackArgs {
    /// The mixture-of-experts GGUF.
    model: PathBuf,
    /// ggml type of the low-precision copies (q4_0, q8_0, q4_k, ...; k-quants need rows of
    /// multiples of 256 values).
    #[arg(long, default_value = "q4_0")]
    low_type: String,
    /// A routing trace of the model on calibration text (`switchyard trace`): each layer's
    /// beta for `--moe-skip-beta` is the median of its tokens' second over first gate weight.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// The packed GGUF to write (the patched llama.cpp loads it; stock llama.cpp refuses the
    /// extra tensors).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn moe_pack(a: MoePackArgs) -> Result<()> {
    let Some(low_type) = GgmlType::from_name(&a.low_type) else {
        bail!("--low-type '{}' is not a ggml type (e.g. q4_0, q8_0)", a.low_type);
    };
    let trace = a.trace.as_deref().map(Trace::load).transpose()?;
    let model = GgufFile::open(&a.model)?;
    let report = pack(&model, &MoePackOptions { low_type, trace }, &a.output)?;
    println!(
        "wrote {}: {} expert tensors with {low_type} copies ({:.1} MiB beside {:.1} MiB, {:.3} of the bytes)",
        a.output.display(),
        report.n_tensors,
        report.low_bytes as f64 / 1048576.0,
        report.high_bytes as f64 / 1048576.0,
        report.low_bytes as f64 / report.high_bytes as f64
    );
    if let Some(beta) = &report.skip_beta {
        let list: Vec<String> = beta.iter().map(|b| format!("{b:.3}")).collect();
        println!("skipping thresholds (beta per layer): {}", list.join(" "));
    }
    Ok(())
}
