//! `bench decompress`: reconstruction bandwidth of W_base + D next to memcpy of the same
//! output bytes, measured interleaved in the same run (machines are noisy; ratios travel).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rayon::prelude::*;

use switchyard::bundle::{materialize, Bundle, TensorDelta};
use switchyard::codec::{self, CodecParams, Output};
use switchyard::gguf::TensorInfo;
use switchyard::synth::{self, DeltaSpec};
use switchyard::{quants, GgmlType};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// W_base + D into a buffer vs memcpy of the same bytes.
    Decompress(DecompressArgs),
    /// Switching a bundle between experts into host buffers, as the llama.cpp plugin does.
    Switch(SwitchArgs),
}

#[derive(Args)]
pub struct SwitchArgs {
    bundle: PathBuf,
    /// Rounds over all experts (and base).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Args)]
pub struct DecompressArgs {
    /// Benchmark every changed tensor of this expert of a bundle instead of a synthetic matrix.
    #[arg(long, requires = "expert")]
    bundle: Option<PathBuf>,
    #[arg(long)]
    expert: Option<String>,
    /// Synthetic matrix: output rows.
    #[arg(long, default_value_t = 4096)]
    rows: usize,
    /// Synthetic matrix: input channels.
    #[arg(long, default_value_t = 4096)]
    cols: usize,
    /// Synthetic: codec bits.
    #[arg(long, default_value_t = 2)]
    bits: u8,
    /// Synthetic: base tensor type (f32, f16, bf16, q8_0, q4_0, q4_1, ...).
    #[arg(long, default_value = "f16")]
    base_type: String,
    /// Output type: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    out_type: String,
    /// Timed repetitions of each side.
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Decompress(a) => decompress(a),
        BenchCommand::Switch(a) => switch(a),
    }
}

/// One reconstruction job: a base tensor and its delta.
struct Job {
    info: TensorInfo,
    base: Vec<u8>,
    delta: Option<TensorDelta>,
}

fn synthetic_job(a: &DecompressArgs) -> Result<Job> {
    let ty = GgmlType::from_name(&a.base_type).ok_or_else(|| anyhow::anyhow!("unknown base type '{}'", a.base_type))?;
    let mut rng = synth::rng(7);
    let w = synth::structured_delta(
        a.cols,
        a.rows,
        &DeltaSpec { noise: 1.0, rank: 0, low_rank: 0.0, outlier_fraction: 0.0, outlier: 0.0, embeddings: 0.0 },
        0.02,
        &mut rng,
    );
    let base = quants::quantize_par(ty, &w, a.cols)?;
    let d = synth::structured_delta(a.cols, a.rows, &DeltaSpec { rank: 0, ..Default::default() }, 0.02, &mut rng);
    let params = CodecParams { bits: a.bits, ..Default::default() };
    let c = codec::compress(&d, a.cols, a.rows, None, &params)?;
    let info = TensorInfo { name: "synthetic".into(), ty, ne: vec![a.cols as u64, a.rows as u64], offset: 0 };
    Ok(Job { info, base, delta: Some(TensorDelta::Codec(c)) })
}

fn bundle_jobs(path: &Path, expert: &str) -> Result<Vec<Job>> {
    let b = Bundle::open(path)?;
    let e = b.expert_index(expert)?;
    let mut jobs = Vec::new();
    for name in b.changed_tensors(e).map(String::from).collect::<Vec<_>>() {
        let info = b.file.tensor(&name).expect("validated").clone();
        let base = b.file.try_tensor_data(&info)?.to_vec();
        jobs.push(Job { delta: b.delta(e, &name)?, info, base });
    }
    Ok(jobs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decompress(a: DecompressArgs) -> Result<()> {
    let out_ty = GgmlType::from_name(&a.out_type)
        .filter(|t| t.is_float())
        .ok_or_else(|| anyhow::anyhow!("output type must be f32, f16 or bf16"))?;
    let jobs = match (&a.bundle, &a.expert) {
        (Some(b), Some(e)) => bundle_jobs(b, e)?,
        _ => vec![synthetic_job(&a)?],
    };
    if jobs.is_empty() || a.iters == 0 {
        bail!("nothing to benchmark");
    }
    let elems: usize = jobs.iter().map(|j| j.info.n_elements() as usize).sum();
    let out_bytes = elems * out_ty.block_geometry().1;
    // u32 storage: aligned for every float type the output is viewed as.
    let mut out_words = vec![0u32; out_bytes.div_ceil(4)];
    let out = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut out_words)[..out_bytes];
    let src = vec![1u8; out_bytes];

    let run_decompress = |out: &mut [u8]| -> Result<()> {
        let mut off = 0;
        for j in &jobs {
            let n = j.info.n_elements() as usize;
            let bytes = n * out_ty.block_geometry().1;
            let dst = &mut out[off..off + bytes];
            materialize(&j.info, &j.base, j.delta.as_ref(), Output::from_bytes(out_ty, dst)?)?;
            off += bytes;
        }
        Ok(())
    };
    // The baseline: the same number of output bytes copied by the same threads.
    let chunk = out_bytes.div_ceil(rayon::current_num_threads()).max(1);
    let run_memcpy =
        |out: &mut [u8]| out.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));

    run_decompress(out)?; // warm-up: page faults, lookup tables
    run_memcpy(out);
    let (mut t_dec, mut t_cpy) = (Vec::new(), Vec::new());
    for _ in 0..a.iters {
        let t = Instant::now();
        run_memcpy(out);
        t_cpy.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        run_decompress(out)?;
        t_dec.push(t.elapsed().as_secs_f64());
    }
    // Each ratio pairs a memcpy with the reconstruction right after it: memory bandwidth on a
    // shared machine drifts between runs, far less between neighbours.
    let mut ratios: Vec<f64> = t_cpy.iter().zip(&t_dec).map(|(c, d)| c / d).collect();
    let ratio = median(&mut ratios);
    let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
    let (dec, cpy) = (median(&mut t_dec), median(&mut t_cpy));
    let gbs = |s: f64| out_bytes as f64 / s / 1e9;
    let what = match (&a.bundle, &a.expert) {
        (Some(b), Some(e)) => format!("bundle {} expert '{e}': {} tensors", b.display(), jobs.len()),
        _ => format!(
            "synthetic {}x{} {} base, {}-bit codec (1% salient, group 128)",
            a.rows, a.cols, a.base_type, a.bits
        ),
    };
    println!(
        "decompress {what}, {elems} params -> {} output, {} threads, median of {}",
        out_ty,
        rayon::current_num_threads(),
        a.iters
    );
    println!("  reconstruct: {:8.3} ms  {:7.2} GB/s of output", dec * 1e3, gbs(dec));
    println!("  memcpy:      {:8.3} ms  {:7.2} GB/s", cpy * 1e3, gbs(cpy));
    println!("  ratio reconstruct/memcpy = {ratio:.3} (median of per-iteration ratios; range {lo:.3}-{hi:.3})");
    Ok(())
}

/// Host buffers standing in for a loaded model's weights.
struct HostBuffers(std::collections::HashMap<usize, Vec<u8>>);

impl switchyard::switch::TensorHost for HostBuffers {
    fn memory(&mut self, handle: usize, len: usize) -> Option<&mut [u8]> {
        let b = self.0.get_mut(&handle)?;
        b.resize(len, 0);
        Some(b)
    }

    fn write(&mut self, handle: usize, bytes: &[u8]) -> switchyard::Result<()> {
        let b = self.0.get_mut(&handle).expect("bound");
        b.clear();
        b.extend_from_slice(bytes);
        Ok(())
    }
}

fn switch(a: SwitchArgs) -> Result<()> {
    use std::collections::HashMap;
    use switchyard::switch::{Switcher, BASE};
    let mut sw = Switcher::open(&a.bundle)?;
    let names: Vec<String> = sw.bundle().base_tensors().map(|t| t.name.clone()).collect();
    let mut host = HostBuffers(HashMap::new());
    for (i, n) in names.iter().enumerate() {
        if sw.managed_type(n).is_some() {
            sw.bind(n, i)?;
            host.0.insert(i, Vec::new());
        }
    }
    let mut order: Vec<String> = sw.expert_names().map(String::from).collect();
    order.push(BASE.into());
    sw.set_expert(BASE, &mut host)?; // as after loading
    let mut times: HashMap<String, Vec<f64>> = HashMap::new();
    for _ in 0..a.rounds.max(1) {
        for e in &order {
            let t = Instant::now();
            sw.set_expert(e, &mut host)?;
            times.entry(e.clone()).or_default().push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let total: usize = host.0.values().map(Vec::len).sum();
    println!(
        "switch {} ({} managed tensors, {:.1} MiB of weights), median of {} rounds, {} threads",
        a.bundle.display(),
        host.0.len(),
        total as f64 / 1048576.0,
        a.rounds,
        rayon::current_num_threads()
    );
    for e in &order {
        println!("  to {e:<12} {:8.2} ms", median(times.get_mut(e).expect("timed")));
    }
    Ok(())
}
