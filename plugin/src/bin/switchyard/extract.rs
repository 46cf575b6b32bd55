//! `switchyard extract`: one expert of a bundle (or its base) as a standalone GGUF.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use switchyard::bundle::Bundle;
use switchyard::extract::{extract as extract_expert, ExtractType};

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
    #[arg(long = "type", default_value = "auto", value_parser = parse_type)]
    ty: ExtractType,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn extract(a: ExtractArgs) -> Result<()> {
    let bundle = Bundle::open(&a.bundle)?;
    bundle.verify_base()?;
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
