//! Fine-tunes of one dense model merged into one mixture of experts with learned routing
//! (Branch-Train-MiX, "Branch-Train-MiX: Mixing Expert LLMs into a Mixture-of-Experts LLM",
//! arXiv 2403.07816), written as a Mixtral-style GGUF that stock llama.cpp runs.
//!
//! Each layer's experts are the feed-forward blocks of the base and of every fine-tune, stacked
//! in that order. Everything else (attention, norms, embeddings) is the mean of every model's,
//! as BTX does ([`Attention::Mean`]), or the base's.
//!
//! BTX trains the routers by gradient with the rest frozen. Here each layer's router is fitted
//! on FFN inputs captured while the base ran each fine-tune's own domain text: a multinomial
//! logistic regression without bias (llama.cpp's llama routers have none) that predicts the
//! domain of the text a token came from. An evenly spaced share of every domain's tokens is
//! labelled "base" instead ([`MergeOptions::base_share`]), so that the base's FFN becomes the
//! usual second pick beside the domain's expert (llama.cpp renormalises the two picks' softmax
//! weights to sum to 1). Without a bias the router cannot give the base a constant probability;
//! how often it is second is measured, not assumed ([`MergeLayerReport::base_second`]).
//!
//! The inputs are the base's, not the merged model's (whose averaged attention and mixed FFNs
//! change every later layer's input): the report judges the routers on those same inputs, and
//! `switchyard trace` of the merged model shows how it really routes.

use std::path::Path;

use crate::convert::config_from_gguf;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufWriter, TensorInfoOut, Value};
use crate::moe::capture::Capture;
use crate::moefy::{dense_ffn_weight, train_rows};
use crate::router::train::{fit, TrainOptions};
use crate::weights::gguf_tensor_f32;
use crate::GgmlType;

/// The merged models' names, one per expert in the stacks' order ("base" first).
pub const MERGED_EXPERTS_KEY: &str = "switchyard.moe_merge.experts";

/// Where the merged model's attention, norms and embeddings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Attention {
    /// The base's, byte for byte (its type kept).
    Base,
    /// The mean over the base and every fine-tune (BTX), written as F32.
    Mean,
}

#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Experts each token uses (llama.expert_used_count).
    pub n_used: usize,
    /// Share of every domain's tokens the router learns to give the base's FFN, in (0, 1).
    pub base_share: f64,
    pub attention: Attention,
    /// L2 penalty of the routers' logistic regression (on standardised inputs).
    pub alpha: f64,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions { n_used: 2, base_share: 0.25, attention: Attention::Mean, alpha: 10.0 }
    }
}

/// How one layer's router does on held-out tokens of every domain.
#[derive(Clone, Debug, Default)]
pub struct MergeLayerReport {
    pub train_tokens: usize,
    pub held_out_tokens: usize,
    /// Share of held-out tokens whose top pick among the fine-tunes is their text's domain.
    pub domain_accuracy: f64,
    /// Quartiles (25%, 50%, 75%) over held-out tokens of the top pick's renormalised weight.
    pub top_weight: [f64; 3],
    /// Quartiles of the second pick's weight over the first's (w2/w1; 1 is a flat router).
    pub second_over_first: [f64; 3],
    /// Share of held-out tokens whose second pick is the base.
    pub base_second: f64,
}

/// Merges `experts` (name, fine-tune of `base`) into a mixture of experts written to `out`
/// (atomically); `captures[i]` holds the base's FFN inputs on expert i's domain text.
pub fn merge(
    base: &GgufFile,
    experts: &[(String, GgufFile)],
    captures: &[Capture],
    opts: &MergeOptions,
    out: &Path,
) -> Result<Vec<MergeLayerReport>> {
    check_experts(base, experts)?;
    let config = config_from_gguf(base)?;
    let n_expert = experts.len() + 1;
    if captures.len() != experts.len() {
        crate::bail_invalid!("moe-merge: {} captures for {} fine-tunes", captures.len(), experts.len());
    }
    if !((1..=n_expert).contains(&opts.n_used) && opts.base_share > 0.0 && opts.base_share < 1.0) {
        crate::bail_invalid!(
            "moe-merge: top-k {} of {n_expert} experts and base share {} (needs 1 <= top-k <= experts, 0 < share < 1)",
            opts.n_used,
            opts.base_share
        );
    }
    let (n_layer, n_embd) = (config.num_hidden_layers, config.hidden_size);
    for ((name, _), c) in experts.iter().zip(captures) {
        if c.layers.len() != n_layer || c.n_embd != n_embd {
            crate::bail_invalid!(
                "capture of '{name}': {} layers of {} values, the base has {n_layer} of {n_embd} (captured from another model?)",
                c.layers.len(),
                c.n_embd
            );
        }
    }
    let mut routers = Vec::with_capacity(n_layer);
    let mut reports = Vec::with_capacity(n_layer);
    for il in 0..n_layer {
        let (router, report) =
            fit_layer(experts, captures, il, opts).map_err(|e| Error::Invalid(format!("layer {il}'s router: {e}")))?;
        routers.push(router);
        reports.push(report);
    }
    write_merged(base, experts, &routers, opts, out)?;
    Ok(reports)
}

/// Refuses what cannot be merged: a base that is not a dense llama model, no fine-tunes, or a
/// fine-tune of another network (the message names the file and the tensor).
pub fn check_experts(base: &GgufFile, experts: &[(String, GgufFile)]) -> Result<()> {
    let label = base.label();
    let arch = base.metadata.get_str("general.architecture")?;
    if arch != "llama" || config_from_gguf(base)?.num_local_experts.is_some() {
        crate::bail_invalid!("{label}: moe-merge needs a dense llama-architecture base (this is {arch})");
    }
    if experts.is_empty() {
        crate::bail_invalid!("{label}: moe-merge needs at least one fine-tune");
    }
    if let Some(t) = base.tensors.iter().find(|t| dense_ffn_weight(&t.name).is_some() && t.ne.len() != 2) {
        crate::bail_invalid!("{label}: tensor '{}' is {:?}, not a matrix", t.name, t.ne);
    }
    for (name, e) in experts {
        same_network(base, e).map_err(|m| Error::Invalid(format!("{} (expert '{name}'): {m}", e.label())))?;
    }
    Ok(())
}

/// Why `other` is not a fine-tune of `base`'s network, if it is not (same tensors and shapes).
fn same_network(base: &GgufFile, other: &GgufFile) -> std::result::Result<(), String> {
    if base.tensors.len() != other.tensors.len() {
        return Err(format!("{} tensors, the base has {}", other.tensors.len(), base.tensors.len()));
    }
    for t in &base.tensors {
        match other.tensor(&t.name) {
            None => return Err(format!("no tensor '{}'", t.name)),
            Some(o) if o.ne != t.ne => return Err(format!("tensor '{}' is {:?}, the base's {:?}", t.name, o.ne, t.ne)),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Which class (0: base, 1..: the fine-tunes) trains on each of `n` rows of a domain's
/// capture: the domain's, except an evenly spaced `share` of rows that are the base's.
fn row_labels(n: usize, domain: usize, share: f64) -> Vec<usize> {
    (0..n).map(|r| if ((r + 1) as f64 * share).floor() > (r as f64 * share).floor() { 0 } else { domain }).collect()
}

/// Layer `il`'s router, n_expert rows of n_embd (class-major, as ffn_gate_inp stores it), and
/// how it does on held-out rows.
fn fit_layer(
    experts: &[(String, GgufFile)],
    captures: &[Capture],
    il: usize,
    opts: &MergeOptions,
) -> Result<(Vec<f32>, MergeLayerReport)> {
    let n_expert = experts.len() + 1;
    let n_embd = captures[0].n_embd;
    let (mut train_x, mut train_y, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for (d, c) in captures.iter().enumerate() {
        let rows = c.rows(il);
        let n_train = train_rows(rows, 2, &format!("the capture of '{}'", experts[d].0))?;
        for (r, &y) in row_labels(n_train, d + 1, opts.base_share).iter().enumerate() {
            train_x.push(c.layers[il][r * n_embd..(r + 1) * n_embd].to_vec());
            train_y.push(y);
        }
        held.extend((n_train..rows).map(|r| (&c.layers[il][r * n_embd..(r + 1) * n_embd], d + 1)));
    }
    let classes = (0..n_expert).map(|e| e.to_string()).collect();
    let train = TrainOptions { alpha: opts.alpha, max_iterations: 200, intercept: false, ..TrainOptions::default() };
    let head = fit(&train_x, &train_y, classes, &train)?;

    let mut report =
        MergeLayerReport { train_tokens: train_x.len(), held_out_tokens: held.len(), ..Default::default() };
    let (mut right, mut base_second) = (0usize, 0usize);
    let (mut top, mut ratio) = (Vec::with_capacity(held.len()), Vec::with_capacity(held.len()));
    for &(x, domain) in &held {
        let p = head.probabilities(x);
        let best_domain = (1..n_expert).max_by(|&a, &b| p[a].total_cmp(&p[b])).expect("a fine-tune");
        right += (best_domain == domain) as usize;
        let mut order: Vec<usize> = (0..n_expert).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let picked: f32 = order[..opts.n_used].iter().map(|&e| p[e]).sum();
        top.push((p[order[0]] / picked) as f64);
        if opts.n_used > 1 {
            ratio.push((p[order[1]] / p[order[0]]) as f64);
            base_second += (order[1] == 0) as usize;
        }
    }
    let n = held.len().max(1) as f64;
    report.domain_accuracy = right as f64 / n;
    report.base_second = base_second as f64 / n;
    report.top_weight = quartiles(&mut top);
    report.second_over_first = quartiles(&mut ratio);
    Ok((head.weight, report))
}

fn quartiles(v: &mut [f64]) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    [0.25, 0.5, 0.75].map(|q| v[((v.len() - 1) as f64 * q).round() as usize])
}

/// The base file with each layer's FFN replaced by every model's, stacked, and the router;
/// the rest is the base's (copied) or every model's mean.
fn write_merged(
    base: &GgufFile,
    experts: &[(String, GgufFile)],
    routers: &[Vec<f32>],
    opts: &MergeOptions,
    out: &Path,
) -> Result<()> {
    let n_expert = experts.len() + 1;
    let e = n_expert as u64;
    let n_embd = base.metadata.get_u32("llama.embedding_length")? as u64;
    let mut metadata = base.metadata.clone();
    metadata.insert("llama.expert_count", Value::U32(n_expert as u32));
    metadata.insert("llama.expert_used_count", Value::U32(opts.n_used as u32));
    let names = std::iter::once("base".to_string()).chain(experts.iter().map(|(n, _)| n.clone()));
    metadata.insert(MERGED_EXPERTS_KEY, Value::from(names.collect::<Vec<String>>()));
    metadata.insert("switchyard.moe_merge.base_share", Value::F32(opts.base_share as f32));

    let models: Vec<&GgufFile> = std::iter::once(base).chain(experts.iter().map(|(_, f)| f)).collect();
    let mut infos = Vec::new();
    for t in &base.tensors {
        match dense_ffn_weight(&t.name) {
            None if opts.attention == Attention::Base => infos.push(TensorInfoOut::from(t)),
            None => infos.push(TensorInfoOut::new(t.name.clone(), GgmlType::F32, t.ne.clone())),
            Some((il, kind)) => {
                if kind == "gate" {
                    infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_gate_inp.weight"), GgmlType::F32, [n_embd, e]));
                }
                let ne = [t.ne[0], t.ne[1], e];
                infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_{kind}_exps.weight"), GgmlType::F32, ne));
            }
        }
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    for t in &base.tensors {
        match dense_ffn_weight(&t.name) {
            None if opts.attention == Attention::Base => w.write_tensor_data(&t.name, base.try_tensor_data(t)?)?,
            None => {
                let mut mean = gguf_tensor_f32(base, &t.name)?.0;
                for m in &models[1..] {
                    mean.iter_mut().zip(gguf_tensor_f32(m, &t.name)?.0).for_each(|(a, b)| *a += b);
                }
                mean.iter_mut().for_each(|v| *v /= n_expert as f32);
                w.write_tensor_data(&t.name, bytemuck::cast_slice(&mean))?;
            }
            Some((il, kind)) => {
                let router = routers.get(il).ok_or_else(|| {
                    Error::Invalid(format!("{}: tensor '{}' beyond block_count", base.label(), t.name))
                })?;
                if kind == "gate" {
                    w.write_tensor_data(&format!("blk.{il}.ffn_gate_inp.weight"), bytemuck::cast_slice(router))?;
                }
                // expert e's matrix is the e-th contiguous block of the stack
                let mut stack = Vec::with_capacity(t.n_elements() as usize * n_expert);
                for m in &models {
                    stack.extend(gguf_tensor_f32(m, &t.name)?.0);
                }
                w.write_tensor_data(&format!("blk.{il}.ffn_{kind}_exps.weight"), bytemuck::cast_slice(&stack))?;
            }
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_share_of_every_domain_trains_the_base() {
        let y = row_labels(100, 2, 0.25);
        assert_eq!(y.iter().filter(|&&c| c == 0).count(), 25);
        assert!(y.iter().all(|&c| c == 0 || c == 2));
        // evenly spaced: never two base rows in a row at a quarter
        assert!(y.windows(2).all(|w| w != [0, 0]));
    }

    #[test]
    fn quartiles_of_sorted_values() {
        let mut v: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(quartiles(&mut v), [25.0, 50.0, 75.0]);
        assert!(quartiles(&mut []).iter().all(|q| q.is_nan()));
    }
}
