//! `eval`: codec vs baselines on an expert's real deltas.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use switchyard::bundle::Bundle;
use switchyard::eval::eval as eval_expert;

use crate::progress;

#[derive(Args)]
pub struct EvalArgs {
    bundle: PathBuf,
    #[arg(long)]
    expert: String,
    /// The expert at full precision: a Hugging Face folder or a GGUF file.
    #[arg(long)]
    reference: PathBuf,
    /// Only totals.
    #[arg(long)]
    summary: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let bundle = Bundle::open(&a.bundle)?;
    bundle.verify_base()?;
    let pb = progress::bar("eval");
    let report = eval_expert(&bundle, &a.expert, &a.reference, &|d, n| {
        pb.set_length(n);
        pb.set_position(d);
    })?;
    pb.finish_and_clear();
    let p = report.params;
    let rank = bundle.experts[bundle.expert_index(&a.expert)?].rank;
    // the bundle's own deltas: the codec's, or rank-r factors where pack made them
    let stored = if rank > 0 { format!("rank {rank} factors, else codec") } else { "codec".to_string() };
    println!(
        "expert '{}' vs {}: relative error ||D_hat - D|| / ||D|| of linear-weight deltas",
        report.expert,
        a.reference.display()
    );
    println!(
        "{stored}: {} {} bits, salient {:.2}%; baselines on the same deltas: rtn {} bits per output row, bitdelta 1 bit",
        p.method.name(),
        p.bits,
        100.0 * p.salient_fraction,
        p.bits
    );
    if !a.summary {
        println!(
            "{:<28} {:>9} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6}",
            "tensor", "params", "stored", "bits", "rtn", "bits", "bitdelta", "bits"
        );
        for t in &report.tensors {
            println!(
                "{:<28} {:>9} | {:>9.5} {:>6.3} | {:>9.5} {:>6.3} | {:>9.5} {:>6.3}",
                t.name,
                t.params,
                t.codec.relative(),
                t.codec.bits,
                t.rtn.relative(),
                t.rtn.bits,
                t.bitdelta.relative(),
                t.bitdelta.bits
            );
        }
    }
    let (c, r, b) = report.totals();
    println!(
        "{:<28} {:>9} | {:>9.5} {:>6.3} | {:>9.5} {:>6.3} | {:>9.5} {:>6.3}",
        "TOTAL",
        report.tensors.iter().map(|t| t.params).sum::<usize>(),
        c.relative(),
        c.bits,
        r.relative(),
        r.bits,
        b.relative(),
        b.bits
    );
    println!(
        "stored error / rtn error = {:.3} at {:.3} vs {:.3} bits/param; stored error / bitdelta error = {:.3}",
        c.relative() / r.relative(),
        c.bits,
        r.bits,
        c.relative() / b.relative()
    );
    Ok(())
}
