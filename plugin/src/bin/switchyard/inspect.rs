//! `inspect`: what a bundle holds, or a plain GGUF's metadata and tensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use switchyard::bundle::low_rank::FACTOR_TYPE;
use switchyard::bundle::naming::{KEY_FORMAT_VERSION, PREFIX};
use switchyard::bundle::{Bundle, TensorDelta};
use switchyard::codec::SalientValues;
use switchyard::gguf::{GgufFile, Value};

#[derive(Args)]
pub struct InspectArgs {
    file: PathBuf,
    /// Only the summary, no per-tensor lines.
    #[arg(long)]
    summary: bool,
    /// Skip recomputing the base fingerprint.
    #[arg(long)]
    no_verify: bool,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let file = GgufFile::open(&a.file)?;
    if !file.metadata.contains_key(KEY_FORMAT_VERSION) {
        return inspect_plain(&file, a.summary);
    }
    let bundle = Bundle::from_file(file)?;
    let size = bundle.file.file_size();
    let base_bytes: u64 = bundle.base_tensors().map(|t| t.n_bytes()).sum();
    let n_base = bundle.base_tensors().count();
    println!(
        "bundle {} ({}), format version {}",
        a.file.display(),
        crate::mib(size),
        bundle.file.metadata.get_u32(KEY_FORMAT_VERSION)?
    );
    println!(
        "base: {} '{}', {n_base} tensors, {} ({})",
        arch(&bundle.file),
        name(&bundle.file),
        crate::mib(base_bytes),
        type_mix(bundle.base_tensors().map(|t| t.ty.name()))
    );
    let verified = if a.no_verify {
        "not verified"
    } else {
        bundle.verify_base()?;
        "verified"
    };
    println!("base fingerprint: {} ({verified})", bundle.fingerprint);
    println!("experts: {}", bundle.experts.len());
    for (e, info) in bundle.experts.iter().enumerate() {
        let p = &info.params;
        let mut linear_params = 0u64;
        let mut linear_bytes = 0u64;
        let mut lines = Vec::new();
        let mut other = 0u64;
        let mut changed_params = 0u64;
        for tname in bundle.changed_tensors(e).map(String::from).collect::<Vec<_>>() {
            let d = bundle.delta(e, &tname)?.expect("listed as changed");
            let t = bundle.file.tensor(&tname).expect("validated");
            changed_params += t.n_elements();
            match &d {
                TensorDelta::Codec(c) => {
                    linear_params += (c.n_in * c.n_out) as u64;
                    linear_bytes += c.stored_bytes() as u64;
                    let sal_bits = match c.salient {
                        SalientValues::F16(_) => 16,
                        SalientValues::Q8 { .. } => 8,
                    };
                    lines.push(format!(
                        "    {:<28} {:<7} {:>5.2} bits/param  {:>3} bits  salient {:>5.2}% ({} ch @{sal_bits}b)  {:>10}",
                        tname,
                        d.kind(),
                        c.bits_per_param(),
                        c.bits,
                        100.0 * c.salient_idx.len() as f64 / c.n_in as f64,
                        c.salient_idx.len(),
                        crate::mib(c.stored_bytes() as u64)
                    ));
                }
                TensorDelta::LowRank(l) => {
                    linear_params += (l.n_in * l.n_out) as u64;
                    linear_bytes += l.stored_bytes() as u64;
                    lines.push(format!(
                        "    {:<28} {:<7} {:>5.2} bits/param  rank {:>4} ({})  {:>10}",
                        tname,
                        d.kind(),
                        l.bits_per_param(),
                        l.rank,
                        FACTOR_TYPE,
                        crate::mib(l.stored_bytes() as u64)
                    ));
                }
                _ => {
                    other += d.stored_bytes() as u64;
                    let bits = d.stored_bytes() as f64 * 8.0 / t.n_elements() as f64;
                    lines.push(format!(
                        "    {:<28} {:<7} {:>5.2} bits/param  {:>10}",
                        tname,
                        d.kind(),
                        bits,
                        crate::mib(d.stored_bytes() as u64)
                    ));
                }
            }
        }
        println!(
            "  {} : {}codec {}, {} bits, group {}, salient {:.2}% @{} bits, imatrix {}",
            info.name,
            if info.rank > 0 { format!("rank {} factors where cheaper, else ", info.rank) } else { String::new() },
            p.method.name(),
            p.bits,
            if p.group_size == 0 { "row".to_string() } else { p.group_size.to_string() },
            100.0 * p.salient_fraction,
            p.salient_bits,
            info.imatrix.as_deref().unwrap_or("none")
        );
        let bits_per = |bytes: u64, params: u64| if params > 0 { bytes as f64 * 8.0 / params as f64 } else { 0.0 };
        // the second figure counts everything the expert stores (embeddings and norms included)
        // over every parameter it changes: the effective size of the expert
        println!(
            "    {} tensors changed, {} stored ({:.3} bits/param): linear deltas {} at {:.3} bits/param, other {}",
            lines.len(),
            crate::mib(bundle.expert_bytes(e)),
            bits_per(bundle.expert_bytes(e), changed_params),
            crate::mib(linear_bytes),
            bits_per(linear_bytes, linear_params),
            crate::mib(other)
        );
        if !a.summary {
            lines.iter().for_each(|l| println!("{l}"));
        }
    }
    Ok(())
}

fn arch(f: &GgufFile) -> String {
    f.metadata.opt_str("general.architecture").ok().flatten().unwrap_or("?").to_string()
}

fn name(f: &GgufFile) -> String {
    f.metadata.opt_str("general.name").ok().flatten().unwrap_or("").to_string()
}

fn type_mix<'a>(types: impl Iterator<Item = &'a str>) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    types.for_each(|t| *m.entry(t).or_default() += 1);
    m.iter().map(|(t, n)| format!("{t} x{n}")).collect::<Vec<_>>().join(", ")
}

fn inspect_plain(f: &GgufFile, summary: bool) -> Result<()> {
    println!("GGUF v{} {} ({}), not a switchyard bundle", f.version, f.label(), crate::mib(f.file_size()));
    println!(
        "architecture {} '{}', {} tensors ({})",
        arch(f),
        name(f),
        f.tensors.len(),
        type_mix(f.tensors.iter().map(|t| t.ty.name()))
    );
    println!("metadata: {} keys", f.metadata.len());
    for (k, v) in f.metadata.iter() {
        let shown = match v {
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::String(s) if s.len() > 80 => {
                format!("\"{}...\" ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
            }
            other => format!("{other:?}"),
        };
        println!("  {k} = {shown}");
    }
    if !summary {
        for t in &f.tensors {
            println!("  {:<32} {:<6} {:?}", t.name, t.ty.name(), t.ne);
        }
    }
    if f.tensors.iter().any(|t| t.name.starts_with(PREFIX)) {
        println!("note: tensors under '{PREFIX}' but no bundle keys: a damaged bundle?");
    }
    Ok(())
}
