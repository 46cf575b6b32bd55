//! Dense model → mixture of experts by activation statistics (the refactorisation of Read-ME,
//! "Refactorizing LLMs as Router-Decoupled Mixture of Experts with System Co-Design", arXiv
//! 2410.19123), written as a Mixtral-style GGUF that stock llama.cpp runs.
//!
//! Per layer, from the FFN inputs a dense run captured on calibration text
//! ([`crate::moe::capture`]):
//! - each intermediate channel's contribution on each token is |silu(gate·x)·(up·x)| times the
//!   norm of its down column;
//! - the channels with the largest mean contribution are *shared*: Read-ME's always-on expert.
//!   llama.cpp's llama architecture has no shared expert, so they are copied into every expert;
//! - the others are grouped into E equal-size experts by co-activation ([`cluster`]);
//! - a linear router (no bias, like llama.cpp's) is fitted to pick, per token, the expert
//!   carrying the most of the token's contribution.
//!
//! How the output stays the dense FFN where it can: llama.cpp weights the K selected experts by
//! their softmax probabilities renormalised to sum to 1. The router's logits are scaled down
//! until those weights are 1/K within [`ROUTER_SPREAD`] (the ranking, which is all that picks
//! experts, is unchanged), and each expert's own channels have their down columns scaled by K,
//! shared ones by 1. The K experts then sum to shared + their own channels: the dense FFN minus
//! the channels of the experts not picked. At K = E nothing is left out; the router is zero
//! (weights exactly 1/E) and the model computes the dense one, up to float summation order.
//! K is therefore baked into the file (llama.expert_used_count).

mod cluster;
pub mod merge;

use std::path::Path;

use ndarray::{s, Array2, ArrayView2, Axis};

use crate::convert::config_from_gguf;
use crate::error::Result;
use crate::gguf::{GgufFile, GgufWriter, TensorInfoOut, Value};
use crate::moe::capture::Capture;
use crate::router::train::{fit, TrainOptions};
use crate::weights::gguf_tensor_f32;
use crate::GgmlType;

/// How far from 1/K llama.cpp's renormalised expert weights may be (relative): small enough that
/// the experts sum as the dense FFN does, large enough for f32 softmax to keep the ranking.
pub const ROUTER_SPREAD: f32 = 1e-3;
/// Of the captured tokens, the last this fraction judge the router instead of training it.
const HELD_OUT: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct MoefyOptions {
    pub n_expert: usize,
    pub n_used: usize,
    /// Fraction of each layer's channels in the shared (always-on) part.
    pub shared: f64,
    pub seed: u64,
}

/// How well one layer's router does on held-out calibration tokens.
#[derive(Clone, Debug, Default)]
pub struct LayerReport {
    pub train_tokens: usize,
    pub held_out_tokens: usize,
    /// Share of tokens whose top expert (most contribution) the router ranks first.
    pub top1_accuracy: f64,
    /// Contribution of the K experts the router picks over that of the best K, averaged over
    /// tokens: 1 is an oracle router.
    pub mass_recall: f64,
}

#[derive(Clone, Debug)]
pub struct MoefyReport {
    pub n_shared: usize,
    /// Channels per expert (shared ones included, zero padding included).
    pub expert_channels: usize,
    pub layers: Vec<LayerReport>,
}

/// One layer's experts: which dense channels each holds, and the router.
struct LayerPlan {
    shared: Vec<usize>,
    groups: Vec<Vec<usize>>,
    /// n_expert × n_embd.
    router: Vec<f32>,
}

/// Reads `dense` and the capture of its FFN inputs, writes the mixture of experts to `out`
/// (atomically), and reports how well the routers fit.
pub fn moefy(dense: &GgufFile, capture: &Capture, opts: &MoefyOptions, out: &Path) -> Result<MoefyReport> {
    let label = dense.label();
    let arch = dense.metadata.get_str("general.architecture")?;
    let config = config_from_gguf(dense)?;
    if arch != "llama" || config.num_local_experts.is_some() {
        crate::bail_invalid!(
            "{label}: moefy needs a dense llama-architecture model (this is {arch}, experts {:?})",
            config.num_local_experts
        );
    }
    let (n_layer, n_embd, n_ff) = (config.num_hidden_layers, config.hidden_size, config.intermediate_size);
    let (n_expert, n_used) = (opts.n_expert, opts.n_used);
    let n_shared = (opts.shared * n_ff as f64).round() as usize;
    if !(0.0..1.0).contains(&opts.shared)
        || n_expert < 1
        || n_used < 1
        || n_used > n_expert
        || n_ff - n_shared < n_expert
    {
        crate::bail_invalid!(
            "{label}: cannot make {n_expert} experts (top-{n_used}) with {n_shared} shared of {n_ff} channels (shared must be in [0, 1), 1 <= top-k <= experts <= unshared channels)"
        );
    }
    if capture.layers.len() != n_layer || capture.n_embd != n_embd {
        crate::bail_invalid!(
            "{label}: the capture has {} layers of {} values, the model {n_layer} of {n_embd} (captured from another model?)",
            capture.layers.len(),
            capture.n_embd
        );
    }
    let expert_channels = n_shared + (n_ff - n_shared).div_ceil(n_expert);
    let mut plans = Vec::with_capacity(n_layer);
    let mut layers = Vec::with_capacity(n_layer);
    for il in 0..n_layer {
        let (plan, report) = plan_layer(dense, capture, il, n_shared, opts)?;
        plans.push(plan);
        layers.push(report);
    }
    write_moe(dense, &plans, opts, expert_channels, out)?;
    Ok(MoefyReport { n_shared, expert_channels, layers })
}

fn matrix(values: Vec<f32>, rows: usize, cols: usize, what: &str) -> Result<Array2<f32>> {
    Array2::from_shape_vec((rows, cols), values)
        .map_err(|e| crate::error::Error::Invalid(format!("{what}: expected {rows} × {cols}: {e}")))
}

fn plan_layer(
    dense: &GgufFile,
    capture: &Capture,
    il: usize,
    n_shared: usize,
    opts: &MoefyOptions,
) -> Result<(LayerPlan, LayerReport)> {
    let n_embd = capture.n_embd;
    let n_tokens = capture.rows(il);
    let tensor = |kind: &str| gguf_tensor_f32(dense, &format!("blk.{il}.{kind}.weight"));
    let (gate, gate_ne) = tensor("ffn_gate")?;
    let n_ff = gate_ne[1] as usize;
    let gate = matrix(gate, n_ff, n_embd, &format!("{}: blk.{il}.ffn_gate", dense.label()))?;
    let up = matrix(tensor("ffn_up")?.0, n_ff, n_embd, &format!("{}: blk.{il}.ffn_up", dense.label()))?;
    let down = matrix(tensor("ffn_down")?.0, n_embd, n_ff, &format!("{}: blk.{il}.ffn_down", dense.label()))?;
    let x = matrix(capture.layers[il].clone(), n_tokens, n_embd, &format!("capture layer {il}"))?;
    let n_train = train_rows(n_tokens, 4 * opts.n_expert, &format!("capture layer {il}"))?;

    // contribution of channel c on token t: |silu(g)·u| · |down column c|
    let g = x.dot(&gate.t());
    let u = x.dot(&up.t());
    let down_norm = down.map_axis(Axis(0), |col| col.dot(&col).sqrt());
    let mut contribution = g;
    ndarray::Zip::from(&mut contribution).and(&u).for_each(|gv, &uv| *gv = (*gv / (1.0 + (-*gv).exp()) * uv).abs());
    contribution *= &down_norm;

    let importance = contribution.mean_axis(Axis(0)).expect("tokens > 0");
    let mut by_importance: Vec<usize> = (0..n_ff).collect();
    by_importance.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    let mut shared = by_importance[..n_shared].to_vec();
    shared.sort_unstable();
    let mut rest = by_importance[n_shared..].to_vec();
    rest.sort_unstable();

    let rest_profiles = contribution.select(Axis(1), &rest);
    let groups: Vec<Vec<usize>> = cluster::balanced_groups(rest_profiles.view(), opts.n_expert, opts.seed ^ il as u64)
        .into_iter()
        .map(|g| g.into_iter().map(|i| rest[i]).collect())
        .collect();

    // per token, each expert's share of the contribution: what the router should rank
    let mut mass = Array2::<f32>::zeros((n_tokens, opts.n_expert));
    for (e, group) in groups.iter().enumerate() {
        let summed = contribution.select(Axis(1), group).sum_axis(Axis(1));
        mass.column_mut(e).assign(&summed);
    }
    let best: Vec<usize> = mass.rows().into_iter().map(|r| argmax(r.iter().copied())).collect();

    let mut report = LayerReport { train_tokens: n_train, held_out_tokens: n_tokens - n_train, ..Default::default() };
    let router = if opts.n_used == opts.n_expert {
        // every expert runs: nothing to choose, and equal weights make the sum exact
        report.top1_accuracy = f64::NAN;
        report.mass_recall = 1.0;
        vec![0.0; opts.n_expert * n_embd]
    } else {
        let router = fit_router(x.slice(s![..n_train, ..]), &best[..n_train], opts.n_expert)?;
        let logits = x.dot(&router.t());
        let held = n_train..n_tokens;
        let (mut hits, mut recall) = (0usize, 0f64);
        for t in held.clone() {
            let picked = top_k(logits.row(t).iter().copied(), opts.n_used);
            hits += (picked[0] == best[t]) as usize;
            let got: f32 = picked.iter().map(|&e| mass[[t, e]]).sum();
            let ideal: f32 = top_k(mass.row(t).iter().copied(), opts.n_used).iter().map(|&e| mass[[t, e]]).sum();
            recall += if ideal > 0.0 { (got / ideal) as f64 } else { 1.0 };
        }
        report.top1_accuracy = hits as f64 / held.len() as f64;
        report.mass_recall = recall / held.len() as f64;
        let spread = logits
            .rows()
            .into_iter()
            .map(|r| r.fold(f32::NEG_INFINITY, |a, &b| a.max(b)) - r.fold(f32::INFINITY, |a, &b| a.min(b)))
            .fold(0f32, f32::max);
        let scale = if spread > 0.0 { ROUTER_SPREAD / spread } else { 0.0 };
        router.iter().map(|w| w * scale).collect()
    };
    Ok((LayerPlan { shared, groups, router }, report))
}

/// A linear router without bias (n_expert × n_embd) predicting each token's best expert. An
/// expert that is never best on the training tokens gets a zero row.
fn fit_router(x: ArrayView2<f32>, best: &[usize], n_expert: usize) -> Result<Array2<f32>> {
    let present: Vec<usize> = (0..n_expert).filter(|e| best.contains(e)).collect();
    let mut router = Array2::zeros((n_expert, x.ncols()));
    if present.len() < 2 {
        // one expert is best on every token: a router without bias cannot learn a constant
        // preference, so it stays flat
        return Ok(router);
    }
    let rows: Vec<Vec<f32>> = x.rows().into_iter().map(|r| r.to_vec()).collect();
    let labels: Vec<usize> = best.iter().map(|b| present.iter().position(|p| p == b).expect("present")).collect();
    let classes = present.iter().map(|e| e.to_string()).collect();
    let opts = TrainOptions { alpha: 10.0, max_iterations: 100, intercept: false, ..TrainOptions::default() };
    let head = fit(&rows, &labels, classes, &opts)?;
    for (i, &e) in present.iter().enumerate() {
        router.row_mut(e).assign(&ndarray::ArrayView1::from(&head.weight[i * head.dim..(i + 1) * head.dim]));
    }
    Ok(router)
}

fn argmax(values: impl Iterator<Item = f32>) -> usize {
    top_k(values, 1)[0]
}

/// Indices of the k largest values, largest first (ties: lower index first).
fn top_k(values: impl Iterator<Item = f32>, k: usize) -> Vec<usize> {
    let mut v: Vec<(usize, f32)> = values.enumerate().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().take(k).map(|(i, _)| i).collect()
}

/// Of `n_tokens` captured tokens, how many fit a router (the first ones; the rest, HELD_OUT of
/// them, judge it): an error naming `what` when fewer than `min_train` would, or none is left over.
pub(crate) fn train_rows(n_tokens: usize, min_train: usize, what: &str) -> Result<usize> {
    let n_train = ((n_tokens as f64) * (1.0 - HELD_OUT)).floor() as usize;
    if n_train < min_train.max(1) || n_tokens - n_train < 1 {
        crate::bail_invalid!("{what}: {n_tokens} tokens are too few to fit a router on (capture more text)");
    }
    Ok(n_train)
}

/// A dense FFN weight's layer and kind ("gate", "up", "down") from its GGUF name.
pub(crate) fn dense_ffn_weight(name: &str) -> Option<(usize, &'static str)> {
    let rest = name.strip_prefix("blk.")?;
    let (il, kind) = rest.split_once('.')?;
    let kind = match kind {
        "ffn_gate.weight" => "gate",
        "ffn_up.weight" => "up",
        "ffn_down.weight" => "down",
        _ => return None,
    };
    Some((il.parse().ok()?, kind))
}

/// The dense file with each layer's FFN replaced by its experts and router; everything else
/// (attention, norms, embeddings, tokenizer) is copied byte for byte.
fn write_moe(
    dense: &GgufFile,
    plans: &[LayerPlan],
    opts: &MoefyOptions,
    expert_channels: usize,
    out: &Path,
) -> Result<()> {
    let (n_expert, n_used) = (opts.n_expert, opts.n_used);
    let n_embd = dense.metadata.get_u32("llama.embedding_length")? as u64;
    let (e, f) = (n_expert as u64, expert_channels as u64);
    let mut metadata = dense.metadata.clone();
    metadata.insert("llama.expert_count", Value::U32(n_expert as u32));
    metadata.insert("llama.expert_used_count", Value::U32(n_used as u32));
    metadata.insert("llama.feed_forward_length", Value::U32(expert_channels as u32));
    metadata.insert("switchyard.moefy.shared_channels", Value::U32(plans[0].shared.len() as u32));

    let ffn = dense_ffn_weight;
    let mut infos = Vec::new();
    for t in &dense.tensors {
        match ffn(&t.name) {
            None => infos.push(TensorInfoOut::from(t)),
            Some((il, "gate")) => {
                infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_gate_inp.weight"), GgmlType::F32, [n_embd, e]));
                infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_gate_exps.weight"), GgmlType::F32, [n_embd, f, e]));
            }
            Some((il, "up")) => {
                infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_up_exps.weight"), GgmlType::F32, [n_embd, f, e]))
            }
            Some((il, _)) => {
                infos.push(TensorInfoOut::new(format!("blk.{il}.ffn_down_exps.weight"), GgmlType::F32, [f, n_embd, e]))
            }
        }
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    for t in &dense.tensors {
        let Some((il, kind)) = ffn(&t.name) else {
            w.write_tensor_data(&t.name, dense.try_tensor_data(t)?)?;
            continue;
        };
        let plan = plans.get(il).ok_or_else(|| {
            crate::error::Error::Invalid(format!("{}: tensor '{}' beyond block_count", dense.label(), t.name))
        })?;
        let (values, ne) = gguf_tensor_f32(dense, &t.name)?;
        let expert_rows =
            |e: usize| plan.shared.iter().chain(&plan.groups[e]).map(|&c| Some(c)).chain(std::iter::repeat(None));
        let mut data = Vec::with_capacity(n_expert * expert_channels * n_embd as usize);
        match kind {
            "gate" | "up" => {
                // rows are channels: each expert's rows, zero rows as padding
                let cols = ne[0] as usize;
                for e in 0..n_expert {
                    for c in expert_rows(e).take(expert_channels) {
                        match c {
                            Some(c) => data.extend_from_slice(&values[c * cols..(c + 1) * cols]),
                            None => data.extend(std::iter::repeat_n(0.0, cols)),
                        }
                    }
                }
                if kind == "gate" {
                    w.write_tensor_data(&format!("blk.{il}.ffn_gate_inp.weight"), bytemuck::cast_slice(&plan.router))?;
                }
                w.write_tensor_data(&format!("blk.{il}.ffn_{kind}_exps.weight"), bytemuck::cast_slice(&data))?;
            }
            _ => {
                // columns are channels: shared ones as they are, the expert's own scaled by K
                let (cols, rows) = (ne[0] as usize, ne[1] as usize);
                let n_shared = plan.shared.len();
                for e in 0..n_expert {
                    let picks: Vec<Option<usize>> = expert_rows(e).take(expert_channels).collect();
                    for r in 0..rows {
                        for (i, c) in picks.iter().enumerate() {
                            let scale = if i < n_shared { 1.0 } else { n_used as f32 };
                            data.push(c.map_or(0.0, |c| values[r * cols + c] * scale));
                        }
                    }
                }
                w.write_tensor_data(&format!("blk.{il}.ffn_down_exps.weight"), bytemuck::cast_slice(&data))?;
            }
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::HfModel;
    use crate::moe::capture::CaptureWriter;
    use rand::{Rng, SeedableRng};

    /// A tiny dense GGUF (2 layers, 64 wide, 128 channels) and a capture of random FFN inputs.
    fn dense_and_capture(dir: &Path) -> (GgufFile, Capture) {
        crate::synth::tiny_llama(&dir.join("hf"), 256, 3).unwrap();
        let hf = HfModel::open(&dir.join("hf")).unwrap();
        crate::convert::hf_to_gguf(&hf, None, "tiny", GgmlType::F32, &dir.join("dense.gguf")).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut w = CaptureWriter::create(&dir.join("cap"), 2, 64).unwrap();
        for l in 0..2 {
            w.layer(l, &(0..300 * 64).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>()).unwrap();
        }
        w.finish().unwrap();
        (GgufFile::open(dir.join("dense.gguf")).unwrap(), Capture::load(&dir.join("cap")).unwrap())
    }

    fn silu(v: f32) -> f32 {
        v / (1.0 + (-v).exp())
    }

    /// Per channel, its term of the dense FFN: silu(gate·x)·(up·x) · down column.
    fn dense_terms(f: &GgufFile, il: usize, x: &[f32]) -> Vec<Vec<f32>> {
        let t = |k: &str| gguf_tensor_f32(f, &format!("blk.{il}.{k}.weight")).unwrap().0;
        let (gate, up, down) = (t("ffn_gate"), t("ffn_up"), t("ffn_down"));
        let (d, n_ff) = (x.len(), gate.len() / x.len());
        let dot = |w: &[f32]| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        (0..n_ff)
            .map(|c| {
                let h = silu(dot(&gate[c * d..(c + 1) * d])) * dot(&up[c * d..(c + 1) * d]);
                (0..d).map(|r| down[r * n_ff + c] * h).collect()
            })
            .collect()
    }

    /// llama.cpp's llama-architecture MoE FFN: softmax router, top-k, weights renormalised.
    /// Returns the output and the experts picked.
    fn moe_ffn(f: &GgufFile, il: usize, x: &[f32], k: usize) -> (Vec<f32>, Vec<usize>) {
        let t = |n: &str| gguf_tensor_f32(f, &format!("blk.{il}.{n}.weight")).unwrap();
        let (router, router_ne) = t("ffn_gate_inp");
        let (gate, up, down) = (t("ffn_gate_exps").0, t("ffn_up_exps").0, t("ffn_down_exps").0);
        let (d, n_expert) = (x.len(), router_ne[1] as usize);
        let fe = gate.len() / n_expert / d;
        let dot = |w: &[f32]| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        let logits: Vec<f32> = (0..n_expert).map(|e| dot(&router[e * d..(e + 1) * d])).collect();
        let top = top_k(logits.iter().copied(), k);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let norm: f32 = top.iter().map(|&e| p[e]).sum();
        let mut out = vec![0f32; d];
        for &e in &top {
            let w = p[e] / norm;
            for c in 0..fe {
                let row = (e * fe + c) * d;
                let h = silu(dot(&gate[row..row + d])) * dot(&up[row..row + d]);
                for (r, o) in out.iter_mut().enumerate() {
                    *o += w * down[(e * d + r) * fe + c] * h;
                }
            }
        }
        (out, top)
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        let scale = b.iter().map(|v| v.abs()).fold(1e-6, f32::max);
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 2e-3 * scale)
    }

    #[test]
    fn at_k_equal_e_the_experts_sum_to_the_dense_ffn() {
        let dir = tempfile::tempdir().unwrap();
        let (dense, capture) = dense_and_capture(dir.path());
        let opts = MoefyOptions { n_expert: 4, n_used: 4, shared: 0.25, seed: 1 };
        let report = moefy(&dense, &capture, &opts, &dir.path().join("moe.gguf")).unwrap();
        assert_eq!((report.n_shared, report.expert_channels), (32, 32 + 24));
        let moe = GgufFile::open(dir.path().join("moe.gguf")).unwrap();
        assert_eq!(moe.metadata.get_u32("llama.expert_used_count").unwrap(), 4);
        for il in 0..2 {
            let x = &capture.layers[il][..64];
            let want: Vec<f32> = dense_terms(&dense, il, x)
                .iter()
                .fold(vec![0.0; 64], |acc, t| acc.iter().zip(t).map(|(a, b)| a + b).collect());
            assert!(close(&moe_ffn(&moe, il, x, 4).0, &want), "layer {il}");
        }
        // everything but the FFN is copied byte for byte
        for t in dense.tensors.iter().filter(|t| !t.name.contains("ffn_") || t.name.contains("ffn_norm")) {
            assert_eq!(moe.tensor_data_by_name(&t.name).unwrap(), dense.tensor_data(t), "{}", t.name);
        }
    }

    #[test]
    fn below_e_the_picked_experts_give_the_shared_and_their_own_channels() {
        let dir = tempfile::tempdir().unwrap();
        let (dense, capture) = dense_and_capture(dir.path());
        let opts = MoefyOptions { n_expert: 4, n_used: 2, shared: 0.25, seed: 1 };
        let report = moefy(&dense, &capture, &opts, &dir.path().join("moe.gguf")).unwrap();
        assert_eq!(report.layers[0].held_out_tokens, 60);
        assert!(report.layers.iter().all(|l| (0.0..=1.0).contains(&l.top1_accuracy) && l.mass_recall > 0.0));
        let moe = GgufFile::open(dir.path().join("moe.gguf")).unwrap();
        // which dense channels each expert holds: its gate rows are dense gate rows, copied
        let gate = gguf_tensor_f32(&dense, "blk.1.ffn_gate.weight").unwrap().0;
        let exps = gguf_tensor_f32(&moe, "blk.1.ffn_gate_exps.weight").unwrap().0;
        let channels: Vec<Vec<usize>> = exps
            .chunks(56 * 64)
            .map(|e| {
                e.chunks(64)
                    .filter_map(|row| gate.chunks(64).position(|g| g == row && row.iter().any(|v| *v != 0.0)))
                    .collect()
            })
            .collect();
        let shared: Vec<usize> =
            channels[0].iter().copied().filter(|c| channels.iter().all(|e| e.contains(c))).collect();
        assert_eq!(shared.len(), 32);
        let mut owned: Vec<usize> =
            channels.iter().flat_map(|e| e.iter().copied().filter(|c| !shared.contains(c))).collect();
        owned.sort_unstable();
        assert_eq!(
            owned,
            (0..128).filter(|c| !shared.contains(c)).collect::<Vec<_>>(),
            "each other channel in one expert"
        );
        for t in 0..5 {
            let x = &capture.layers[1][t * 64..(t + 1) * 64];
            let (got, picked) = moe_ffn(&moe, 1, x, 2);
            let terms = dense_terms(&dense, 1, x);
            let keep = |c: &usize| shared.contains(c) || picked.iter().any(|&e| channels[e].contains(c));
            let want = (0..128)
                .filter(keep)
                .fold(vec![0.0; 64], |acc, c| acc.iter().zip(&terms[c]).map(|(a, b)| a + b).collect());
            assert!(close(&got, &want), "token {t}: experts {picked:?}");
        }
    }

    #[test]
    fn impossible_shapes_and_foreign_captures_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (dense, capture) = dense_and_capture(dir.path());
        let out = dir.path().join("moe.gguf");
        for (e, k, shared) in [(4, 5, 0.25), (0, 0, 0.25), (4, 2, 1.0), (200, 2, 0.0)] {
            let opts = MoefyOptions { n_expert: e, n_used: k, shared, seed: 1 };
            let err = moefy(&dense, &capture, &opts, &out).unwrap_err().to_string();
            assert!(err.contains("dense.gguf") && err.contains("experts"), "{err}");
        }
        let foreign = Capture { n_embd: 32, layers: vec![vec![0.0; 32 * 300]; 2] };
        let opts = MoefyOptions { n_expert: 4, n_used: 2, shared: 0.25, seed: 1 };
        let err = moefy(&dense, &foreign, &opts, &out).unwrap_err().to_string();
        assert!(err.contains("another model"), "{err}");
        assert!(!out.exists(), "nothing written");
    }
}
