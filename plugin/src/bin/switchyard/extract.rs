//! `switchyard extract`: one expert of a bundle (or its base) as a standalone GGUF.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use switchyard::bundle::Bundle;
use switchyard::extract::{extract as extract_expert, ExtractType};

use crate::progress;

#[derive(Clone, Copy, ValueEnum)]
pub enum TypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
pub struct ExtractArgs {
    bundle: PathBuf,
    /// Expert name, or "base".
    #[arg(long)]
    expert: String,
    /// Type of changed tensors: auto = F32 where the base is F32, else F16.
    #[arg(long = "type", value_enum, default_value = "auto")]
    ty: TypeArg,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn extract(a: ExtractArgs) -> Result<()> {
    let bundle = Bundle::open(&a.bundle)?;
    bundle.verify_base()?;
    let ty = match a.ty {
        TypeArg::Auto => ExtractType::Auto,
        TypeArg::F32 => ExtractType::F32,
        TypeArg::F16 => ExtractType::F16,
        TypeArg::Bf16 => ExtractType::BF16,
    };
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
