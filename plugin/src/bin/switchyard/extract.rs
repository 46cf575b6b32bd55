//! `switchyard extract`: one expert of a bundle (or its base) as a standalone GGUF.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use switchyard::bundle::Bundle;
use switchyard::extract::{extract as extract_expert, ExtractType};
use switchyard::lora_adapter::extract_lora;

use crate::progress;

#[derive(Args)]
pub struct ExtractArgs {
    bundle: PathBuf,
    /// Expert name, or "base".
    #[arg(long)]
    expert: String,
    /// Type of changed tensors: auto = F32 where the base is F32, else F16; base = each in its
    /// base tensor's type (the base file's quantization, e.g. Q4_K_M's mix); or a ggml type
    /// (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K, ...). 1-D tensors stay F32.
    #[arg(long = "type", default_value = "auto", value_parser = parse_type, conflicts_with = "lora")]
    ty: ExtractType,
    /// Write the expert as a llama.cpp LoRA adapter of this rank instead (its weight matrices'
    /// deltas factored by a truncated SVD; for --lora on the base GGUF). What else the expert
    /// changes (norms, biases, token embeddings, MoE expert stacks) is listed and left out.
    #[arg(long, value_name = "RANK")]
    lora: Option<usize>,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn extract(a: ExtractArgs) -> Result<()> {
    let bundle = Bundle::open(&a.bundle)?;
    bundle.verify_base()?;
    if let Some(rank) = a.lora {
        return lora(&bundle, &a, rank);
    }
    let ty = a.ty;
    let pb = progress::bar("extract");
    let report = extract_expert(&bundle, &a.expert, ty, &a.output, &|d, n| {
        pb.set_length(n);
        pb.set_position(d);
    })?;
    pb.finish_and_clear();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, from, to) in &report.changed {
        *kinds.entry(format!("{from} -> {to}")).or_default() += 1;
    }
    println!("wrote {} (expert '{}')", a.output.display(), a.expert);
    println!("  {} tensors unchanged (base bytes kept)", report.unchanged);
    for (k, n) in kinds {
        println!("  {n} tensors reconstructed, {k}");
    }
    Ok(())
}

fn parse_type(s: &str) -> std::result::Result<ExtractType, String> {
    ExtractType::parse(s).map_err(|e| e.to_string())
}

fn lora(bundle: &Bundle, a: &ExtractArgs, rank: usize) -> Result<()> {
    let pb = progress::bar("factor");
    let report = extract_lora(bundle, &a.expert, rank, &a.output, &|d, n| {
        pb.set_length(n);
        pb.set_position(d);
    })?;
    pb.finish_and_clear();
    let kept: Vec<f64> = report.factored.iter().map(|(_, _, k)| *k).collect();
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    let min = kept.iter().copied().fold(f64::INFINITY, f64::min);
    let top = report.factored.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
    println!("wrote {} (expert '{}' as a LoRA adapter, rank {top})", a.output.display(), a.expert);
    println!(
        "  {} weight matrices factored (rank capped at each one's smaller side); share of each delta's squared norm kept: mean {mean:.3}, least {min:.3}",
        kept.len()
    );
    if !report.left_out.is_empty() {
        println!(
            "  {} changed tensors not in the adapter, left at the base's: {}",
            report.left_out.len(),
            report.left_out.join(", ")
        );
    }
    Ok(())
}
