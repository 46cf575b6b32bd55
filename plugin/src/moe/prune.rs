//! Expert pruning (`switchyard moe-prune`): per layer, keep N of a mixture of experts' E experts,
//! chosen on the layer's captured FFN inputs ([`crate::moe::capture`]), and write the model with
//! only those.
//!
//! The model is a Mixtral-style llama-architecture GGUF as llama.cpp runs it: per layer a router
//! `ffn_gate_inp` [n_embd, E] without bias and stacked experts `ffn_{gate,up}_exps`
//! [n_embd, ff, E] and `ffn_down_exps` [ff, n_embd, E]; expert j computes
//! down_j(silu(gate_j x) * up_j x); a token takes the top-k experts by router logit, weighted by
//! the softmax of their k logits (llama.cpp's softmax over all logits, renormalised over the
//! picks, is the same thing). A pruned model routes among the kept experts only: as if the
//! dropped experts' logits were -inf.
//!
//! Methods, each keeping the N best experts of its score:
//! - [`PruneMethod::Enum`]: "Not All Experts are Equal: Efficient Expert Pruning and Skipping for
//!   Mixture-of-Experts Large Language Models" (arXiv 2402.14800): of every subset S of N experts,
//!   the one whose layer output Z'(S) on the calibration tokens is closest to the unpruned Z
//!   (loss ||Z - Z'(S)||_F). Where there are more than [`PruneOptions::max_subsets`] subsets, a
//!   greedy search stands in: experts are dropped one at a time, each time the one whose removal
//!   raises the loss least. Each expert's output on each token is computed once; subsets only
//!   recombine them, through per-token inner products of the outputs (the loss of a subset is a
//!   quadratic form in the weights that change).
//! - [`PruneMethod::Reap`]: REAP, "REAP the Experts: Why Pruning Prevails for One-Shot MoE
//!   compression" (arXiv 2510.13999): score_j = mean over the tokens that pick j of
//!   g_j(x) * ||f_j(x)||_2, its renormalised router weight times the norm of its output.
//! - [`PruneMethod::Freq`]: how often an expert is among a token's top-k.
//! - [`PruneMethod::Random`]: a seeded uniform choice, the baseline.
//!
//! Whatever the method, the report gives each layer's relative loss ||Z - Z'|| / ||Z|| of the
//! subset kept, so methods compare on one measure.
//!
//! The pruned file is the input with, in every layer, each per-expert tensor (`*_exps.*`, the
//! router `ffn_gate_inp.*`, `exp_probs_b.*`, and moe-pack's `switchyard.low.` copies of them; the
//! expert is their last dimension) holding the kept experts' slices in ascending original order:
//! each slice is a contiguous run of bytes, so quantized tensors are copied, never requantized.
//! `llama.expert_count` becomes N and `llama.expert_used_count` min(k, N). What was pruned is
//! recorded in [`KEY_METHOD`], [`KEY_EXPERTS_BEFORE`] and, per layer L, `switchyard.prune.kept.L`
//! ([`kept_key`]): the kept experts' indices in the original model. Pruning a pruned model
//! composes: the indices and the count stay those of the original model and the methods are
//! listed in order, joined by '+'.

use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis, Zip};
use rand::SeedableRng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, GgufWriter, Metadata, TensorInfo, TensorInfoOut, Value};
use crate::moe::capture::Capture;
use crate::moe::low_precision::{LOW_PREFIX, SKIP_BETA_KEY};
use crate::moefy::merge::MERGED_EXPERTS_KEY;
use crate::quants::{can_dequantize, dequantize_par};
use crate::router::head::softmax;

/// Subsets `enum` tries one by one before it searches greedily.
pub const DEFAULT_MAX_SUBSETS: usize = 5000;
/// The pruning method (str).
pub const KEY_METHOD: &str = "switchyard.prune.method";
/// Experts per layer of the unpruned model (u32).
pub const KEY_EXPERTS_BEFORE: &str = "switchyard.prune.experts_before";

/// More experts than any llama.cpp MoE has (LLAMA_MAX_EXPERTS is 512): a bigger count is a
/// corrupt file, refused before anything is sized by it.
const MAX_EXPERTS: usize = 1024;
/// Bound on the (token, expert) pairs a layer's routing holds: logits and rankings.
const MAX_ROUTED: usize = 1 << 28;
/// Bound on the expert outputs held for one layer (floats; 2 GiB): the calibration tokens times
/// the experts each may need times n_embd.
const MAX_OUTPUT_FLOATS: usize = 1 << 29;
/// Bound on the subsets `enum` tries one by one, whatever [`PruneOptions::max_subsets`] says:
/// they are held as masks.
pub const MAX_EXHAUSTIVE: usize = 1 << 20;
/// Bound on the per-token inner products of expert outputs held for one layer (f64s; 1 GiB).
const MAX_GRAM_VALUES: usize = 1 << 27;
/// Tokens per matrix product when computing one expert's outputs: enough rows for the product
/// to run at speed, small enough to spread one expert over every core.
const ROWS_PER_TASK: usize = 256;
/// Marks a token with no computed output in [`ExpertOutputs`].
const NO_ROW: u32 = u32::MAX;

/// Per layer, the original indices of the experts kept (u32 array).
pub fn kept_key(layer: usize) -> String {
    format!("switchyard.prune.kept.{layer}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMethod {
    Enum,
    Reap,
    Freq,
    Random,
}

impl PruneMethod {
    pub const ALL: [PruneMethod; 4] = [PruneMethod::Enum, PruneMethod::Reap, PruneMethod::Freq, PruneMethod::Random];

    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Enum => "enum",
            PruneMethod::Reap => "reap",
            PruneMethod::Freq => "freq",
            PruneMethod::Random => "random",
        }
    }

    /// What [`LayerPrune::scores`] holds for this method.
    pub fn score_meaning(self) -> &'static str {
        match self {
            PruneMethod::Enum => "relative loss when dropped alone",
            PruneMethod::Reap => "REAP score (mean router weight x output norm)",
            PruneMethod::Freq => "share of top-k picks",
            PruneMethod::Random => "none",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Experts to keep per layer (N).
    pub keep: usize,
    pub method: PruneMethod,
    /// For [`PruneMethod::Random`].
    pub seed: u64,
    /// For [`PruneMethod::Enum`]: above this many subsets of N experts (at most
    /// [`MAX_EXHAUSTIVE`]), the greedy search.
    pub max_subsets: usize,
}

/// How `enum` found its subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Every subset tried; how many.
    Exhaustive(usize),
    /// Experts dropped one at a time.
    Greedy,
    /// Another method: no search.
    None,
}

/// One layer's outcome.
#[derive(Clone, Debug)]
pub struct LayerPrune {
    /// Original indices of the experts kept, ascending.
    pub kept: Vec<usize>,
    /// Per original expert, the method's score (see [`PruneMethod::score_meaning`]; NaN for
    /// random).
    pub scores: Vec<f64>,
    /// ||Z - Z'|| / ||Z|| over the calibration tokens: the layer's output with the kept experts
    /// against the unpruned one (0 when Z is 0).
    pub relative_loss: f64,
    pub tokens: usize,
    pub search: Search,
}

#[derive(Clone, Debug)]
pub struct PruneReport {
    pub experts_before: usize,
    pub experts_after: usize,
    pub used_before: usize,
    pub used_after: usize,
    pub layers: Vec<LayerPrune>,
}

impl PruneReport {
    pub fn mean_relative_loss(&self) -> f64 {
        self.layers.iter().map(|l| l.relative_loss).sum::<f64>() / self.layers.len().max(1) as f64
    }
}

/// The shape of a mixture of experts as its metadata gives it, checked against a pruning of it
/// to `keep` experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_expert: usize,
    pub n_used: usize,
}

/// Checks that `model` is a llama-architecture mixture of experts that can keep `keep` experts
/// per layer, and returns its shape. Cheap: callers check before recording a capture.
pub fn check_model(model: &GgufFile, keep: usize) -> Result<MoeShape> {
    let label = model.label();
    let arch = model.metadata.get_str("general.architecture")?;
    if arch != "llama" {
        crate::bail_unsupported!(
            "{label}: architecture '{arch}': moe-prune handles llama-architecture (Mixtral-style) mixtures of experts"
        );
    }
    let (n_layer, n_expert) = crate::moe::moe_shape(model, "prune")?;
    if n_expert > MAX_EXPERTS {
        crate::bail_invalid!("{label}: llama.expert_count is {n_expert}; at most {MAX_EXPERTS} are supported");
    }
    let n_used = model.metadata.get_u32("llama.expert_used_count")? as usize;
    if !(1..=n_expert).contains(&n_used) {
        crate::bail_invalid!("{label}: llama.expert_used_count is {n_used}, not 1 to llama.expert_count ({n_expert})");
    }
    if !(1..=n_expert).contains(&keep) {
        crate::bail_invalid!(
            "{label}: cannot keep {keep} experts per layer: llama.expert_count is {n_expert} (keep 1 to {n_expert})"
        );
    }
    let n_embd = model.metadata.get_u32("llama.embedding_length")? as usize;
    let shape = MoeShape { n_layer, n_embd, n_expert, n_used };
    for il in 0..n_layer {
        LayerWeights::of(model, il, &shape)?;
    }
    Ok(shape)
}

/// Chooses each layer's experts by `opts` on `capture` (FFN inputs of `model` on calibration
/// text) and writes the pruned model to `out` (atomically: nothing is written on failure).
pub fn prune(model: &GgufFile, capture: &Capture, opts: &PruneOptions, out: &Path) -> Result<PruneReport> {
    let report = choose(model, capture, opts)?;
    let kept: Vec<Vec<usize>> = report.layers.iter().map(|l| l.kept.clone()).collect();
    write_pruned(model, &kept, opts.method.name(), out)?;
    Ok(report)
}

/// The choice of [`prune`], without writing anything.
pub fn choose(model: &GgufFile, capture: &Capture, opts: &PruneOptions) -> Result<PruneReport> {
    let shape = check_model(model, opts.keep)?;
    check_capture(model, capture, &shape)?;
    // one generator for the whole model, drawn layer after layer: the same seed, the same model
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut layers = Vec::with_capacity(shape.n_layer);
    for il in 0..shape.n_layer {
        let weights = LayerWeights::of(model, il, &shape)?;
        let rows = capture.rows(il);
        let x = ArrayView2::from_shape((rows, shape.n_embd), &capture.layers[il][..rows * shape.n_embd])
            .map_err(|e| Error::Invalid(format!("capture layer {il}: {e}")))?;
        layers.push(choose_layer(&weights, x, &shape, opts, &mut rng)?);
    }
    Ok(PruneReport {
        experts_before: shape.n_expert,
        experts_after: opts.keep,
        used_before: shape.n_used,
        used_after: shape.n_used.min(opts.keep),
        layers,
    })
}

fn check_capture(model: &GgufFile, capture: &Capture, shape: &MoeShape) -> Result<()> {
    if capture.layers.len() != shape.n_layer || capture.n_embd != shape.n_embd {
        crate::bail_invalid!(
            "{}: the capture has {} layers of {} values, the model {} of {} (captured from another model?)",
            model.label(),
            capture.layers.len(),
            capture.n_embd,
            shape.n_layer,
            shape.n_embd
        );
    }
    for (il, layer) in capture.layers.iter().enumerate() {
        if layer.is_empty() || !layer.len().is_multiple_of(shape.n_embd) {
            crate::bail_invalid!(
                "capture layer {il}: {} values are not one or more rows of {} (capture calibration text first)",
                layer.len(),
                shape.n_embd
            );
        }
    }
    Ok(())
}

fn choose_layer(
    weights: &LayerWeights,
    x: ArrayView2<f32>,
    shape: &MoeShape,
    opts: &PruneOptions,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<LayerPrune> {
    let (n_expert, keep) = (shape.n_expert, opts.keep);
    if x.nrows().saturating_mul(n_expert) > MAX_ROUTED {
        crate::bail_invalid!(
            "{}: {} calibration tokens of {n_expert} experts are too many to route; capture fewer tokens",
            weights.file.label(),
            x.nrows()
        );
    }
    let routing = Routing::new(x, &weights.router()?, shape.n_used, shape.n_used.min(keep));
    let mut outputs = ExpertOutputs::new(n_expert, x.nrows(), shape.n_embd);
    // enum's objective covers every subset, the one it keeps included
    let mut enum_objective = None;
    let (keep_mask, scores) = match opts.method {
        PruneMethod::Freq => {
            let shares = pick_shares(&routing);
            (top_n(&shares, keep), shares)
        }
        PruneMethod::Random => {
            let mut mask = vec![false; n_expert];
            for j in rand::seq::index::sample(rng, n_expert, keep) {
                mask[j] = true;
            }
            (mask, vec![f64::NAN; n_expert])
        }
        PruneMethod::Reap => {
            outputs.ensure(weights, x, &routing.needed(|t| routing.original_picks(t).to_vec()))?;
            let scores = reap_scores(&routing, &outputs);
            (top_n(&scores, keep), scores)
        }
        PruneMethod::Enum => {
            // any subset of at least N experts picks, per token, among its E - N + k' best
            // experts (k' = min(k, N)); dropping one alone needs the k' + 1 best
            let k_after = routing.k_after;
            let depth = (n_expert - keep + k_after).max(k_after + 1).min(n_expert);
            let needed = routing.needed(|t| routing.ranked(t)[..depth].to_vec());
            outputs.ensure(weights, x, &needed)?;
            let objective = Objective::new(&routing, needed, &outputs)?;
            let (mask, found) = enum_search(&objective, keep, opts.max_subsets);
            let scores = drop_one_losses(&objective);
            enum_objective = Some((objective, found));
            (mask, scores)
        }
    };
    let (objective, search) = match enum_objective {
        Some(found) => found,
        None => {
            // the loss of the subset kept, over each token's picks before and after
            let needed = routing.needed(|t| {
                let mut n: Vec<u16> = routing.picks(t, &keep_mask).collect();
                n.extend_from_slice(routing.original_picks(t));
                n
            });
            outputs.ensure(weights, x, &needed)?;
            (Objective::new(&routing, needed, &outputs)?, Search::None)
        }
    };
    let kept = (0..n_expert).filter(|&j| keep_mask[j]).collect();
    let relative_loss = objective.relative_loss(&keep_mask, objective.reference_norm2());
    Ok(LayerPrune { kept, scores, relative_loss, tokens: x.nrows(), search })
}

/// Mask of the `n` highest scores (ties: the lower index).
fn top_n(scores: &[f64], n: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut mask = vec![false; scores.len()];
    for &j in &order[..n] {
        mask[j] = true;
    }
    mask
}

/// One layer's router and experts as the file stores them.
struct LayerWeights<'a> {
    file: &'a GgufFile,
    router: &'a TensorInfo,
    gate: &'a TensorInfo,
    up: &'a TensorInfo,
    down: &'a TensorInfo,
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
}

/// One expert's matrices, row-major: gate and up [ff, n_embd], down [n_embd, ff].
struct ExpertFfn {
    gate: Array2<f32>,
    up: Array2<f32>,
    down: Array2<f32>,
}

impl<'a> LayerWeights<'a> {
    /// Finds layer `il`'s tensors and checks their shapes against `shape`, naming the tensor.
    fn of(file: &'a GgufFile, il: usize, shape: &MoeShape) -> Result<LayerWeights<'a>> {
        let label = file.label();
        let (d, e) = (shape.n_embd as u64, shape.n_expert as u64);
        let find = |kind: &str| -> Result<&'a TensorInfo> {
            let name = format!("blk.{il}.{kind}.weight");
            let t = file.tensor(&name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{label}: no tensor '{name}': moe-prune needs the stacked experts of a Mixtral-style model"
                ))
            })?;
            if !can_dequantize(t.ty) {
                crate::bail_unsupported!("{label}: tensor '{name}' is {}, which switchyard cannot read", t.ty);
            }
            Ok(t)
        };
        let (router, gate, up, down) =
            (find("ffn_gate_inp")?, find("ffn_gate_exps")?, find("ffn_up_exps")?, find("ffn_down_exps")?);
        let n_ff = gate.ne.get(1).copied().unwrap_or(0);
        for (t, want) in
            [(router, vec![d, e]), (gate, vec![d, n_ff, e]), (up, vec![d, n_ff, e]), (down, vec![n_ff, d, e])]
        {
            if t.ne != want || n_ff == 0 {
                crate::bail_invalid!(
                    "{label}: tensor '{}' is {:?}; expected {want:?} (llama.embedding_length {d}, llama.expert_count {e})",
                    t.name,
                    t.ne
                );
            }
        }
        let n_ff = usize::try_from(n_ff).map_err(|_| Error::Invalid(format!("{label}: blk.{il}: {n_ff} channels")))?;
        Ok(LayerWeights { file, router, gate, up, down, n_embd: shape.n_embd, n_ff, n_expert: shape.n_expert })
    }

    /// The router, [E, n_embd].
    fn router(&self) -> Result<Array2<f32>> {
        let values = self.expert_slice(self.router, 0, self.n_expert)?;
        Ok(Array2::from_shape_vec((self.n_expert, self.n_embd), values).expect("the shape was checked"))
    }

    /// Experts `first..first + count` of a stacked tensor, dequantized.
    fn expert_slice(&self, t: &TensorInfo, first: usize, count: usize) -> Result<Vec<f32>> {
        let data = self.file.try_tensor_data(t)?;
        let per_expert = data.len() / self.n_expert;
        let elements = t.n_elements() as usize / self.n_expert;
        let bytes = &data[first * per_expert..(first + count) * per_expert];
        dequantize_par(t.ty, bytes, elements * count, t.ne[0] as usize)
            .map_err(|e| Error::Invalid(format!("{}: tensor '{}': {e}", self.file.label(), t.name)))
    }

    fn expert(&self, j: usize) -> Result<ExpertFfn> {
        let (d, ff) = (self.n_embd, self.n_ff);
        let matrix = |t: &TensorInfo, rows: usize, cols: usize| -> Result<Array2<f32>> {
            Ok(Array2::from_shape_vec((rows, cols), self.expert_slice(t, j, 1)?).expect("the shape was checked"))
        };
        Ok(ExpertFfn { gate: matrix(self.gate, ff, d)?, up: matrix(self.up, ff, d)?, down: matrix(self.down, d, ff)? })
    }
}

impl ExpertFfn {
    /// down(silu(gate x) * up x) for each row x of `x`.
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut h = x.dot(&self.gate.t());
        let u = x.dot(&self.up.t());
        Zip::from(&mut h).and(&u).for_each(|g, &u| *g = *g / (1.0 + (-*g).exp()) * u);
        h.dot(&self.down.t())
    }
}

/// A layer's routing of the calibration tokens: router logits and, per token, the experts by
/// logit, best first.
struct Routing {
    n_expert: usize,
    /// Experts each token uses before pruning (k) and after (k' = min(k, N)).
    k: usize,
    k_after: usize,
    logits: Array2<f32>,
    ranked: Vec<u16>,
}

impl Routing {
    fn new(x: ArrayView2<f32>, router: &Array2<f32>, k: usize, k_after: usize) -> Routing {
        let logits = x.dot(&router.t());
        let n_expert = router.nrows();
        let ranked = (0..logits.nrows())
            .into_par_iter()
            .flat_map_iter(|t| {
                let row = logits.row(t);
                let mut order: Vec<u16> = (0..n_expert as u16).collect();
                // ties: the lower index first
                order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                order
            })
            .collect();
        Routing { n_expert, k, k_after, logits, ranked }
    }

    fn n_tokens(&self) -> usize {
        self.logits.nrows()
    }

    fn ranked(&self, t: usize) -> &[u16] {
        &self.ranked[t * self.n_expert..(t + 1) * self.n_expert]
    }

    /// The experts token `t` uses in the unpruned model.
    fn original_picks(&self, t: usize) -> &[u16] {
        &self.ranked(t)[..self.k]
    }

    /// The experts token `t` uses when only `keep` are left.
    fn picks<'s>(&'s self, t: usize, keep: &'s [bool]) -> impl Iterator<Item = u16> + 's {
        self.ranked(t).iter().copied().filter(|&e| keep[e as usize]).take(self.k_after)
    }

    fn logit(&self, t: usize, e: u16) -> f64 {
        self.logits[[t, e as usize]] as f64
    }

    /// Per token, the experts `of` names, reordered best first (see [`Objective`]).
    fn needed(&self, of: impl Fn(usize) -> Vec<u16> + Sync) -> Vec<Vec<u16>> {
        (0..self.n_tokens())
            .into_par_iter()
            .map(|t| {
                let wanted = of(t);
                self.ranked(t).iter().copied().filter(|e| wanted.contains(e)).collect()
            })
            .collect()
    }
}

/// Per expert, its share of all top-k picks.
fn pick_shares(routing: &Routing) -> Vec<f64> {
    let mut counts = vec![0u64; routing.n_expert];
    for t in 0..routing.n_tokens() {
        for &e in routing.original_picks(t) {
            counts[e as usize] += 1;
        }
    }
    let total = (routing.n_tokens() * routing.k) as f64;
    counts.iter().map(|&c| c as f64 / total).collect()
}

/// REAP's score per expert; 0 for an expert no token picks.
fn reap_scores(routing: &Routing, outputs: &ExpertOutputs) -> Vec<f64> {
    let mut sums = vec![0f64; routing.n_expert];
    let mut counts = vec![0u64; routing.n_expert];
    let mut weights = Vec::with_capacity(routing.k);
    for t in 0..routing.n_tokens() {
        let picks = routing.original_picks(t);
        weights.clear();
        weights.extend(picks.iter().map(|&e| routing.logit(t, e)));
        softmax(&mut weights);
        for (&e, &w) in picks.iter().zip(&weights) {
            let norm = outputs.get(e, t).iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
            sums[e as usize] += w * norm;
            counts[e as usize] += 1;
        }
    }
    sums.iter().zip(&counts).map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f64 }).collect()
}

/// Experts' outputs on calibration tokens, each computed once and only where needed.
struct ExpertOutputs {
    n_embd: usize,
    /// Per expert, per token: the row of `values` holding its output, or [`NO_ROW`].
    row: Vec<Vec<u32>>,
    /// Per expert, its outputs, n_embd values a row.
    values: Vec<Vec<f32>>,
    n_floats: usize,
}

impl ExpertOutputs {
    fn new(n_expert: usize, n_tokens: usize, n_embd: usize) -> ExpertOutputs {
        ExpertOutputs {
            n_embd,
            row: vec![vec![NO_ROW; n_tokens]; n_expert],
            values: vec![Vec::new(); n_expert],
            n_floats: 0,
        }
    }

    /// Computes the outputs `needed` (per token, experts) that are not computed yet.
    fn ensure(&mut self, weights: &LayerWeights, x: ArrayView2<f32>, needed: &[Vec<u16>]) -> Result<()> {
        let mut missing: Vec<Vec<usize>> = vec![Vec::new(); self.row.len()];
        for (t, experts) in needed.iter().enumerate() {
            for &e in experts {
                if self.row[e as usize][t] == NO_ROW {
                    missing[e as usize].push(t);
                }
            }
        }
        let new_rows: usize = missing.iter().map(Vec::len).sum();
        self.n_floats = self.n_floats.saturating_add(new_rows.saturating_mul(self.n_embd));
        if self.n_floats > MAX_OUTPUT_FLOATS {
            crate::bail_invalid!(
                "{}: expert outputs on this many calibration tokens would take more than {} GiB; capture fewer tokens",
                weights.file.label(),
                (MAX_OUTPUT_FLOATS * 4) >> 30
            );
        }
        let computed: Vec<Vec<f32>> = missing
            .par_iter()
            .enumerate()
            .map(|(j, tokens)| {
                if tokens.is_empty() {
                    return Ok(Vec::new());
                }
                let ffn = weights.expert(j)?;
                let parts: Vec<Array2<f32>> =
                    tokens.par_chunks(ROWS_PER_TASK).map(|chunk| ffn.apply(x.select(Axis(0), chunk).view())).collect();
                Ok(parts.iter().flat_map(|p| p.iter().copied()).collect())
            })
            .collect::<Result<_>>()?;
        for (j, (tokens, values)) in missing.into_iter().zip(computed).enumerate() {
            let first = self.values[j].len() / self.n_embd;
            for (i, t) in tokens.into_iter().enumerate() {
                self.row[j][t] = (first + i) as u32;
            }
            self.values[j].extend(values);
        }
        Ok(())
    }

    fn get(&self, e: u16, t: usize) -> &[f32] {
        let r = self.row[e as usize][t];
        debug_assert!(r != NO_ROW, "expert {e} was not computed on token {t}");
        let r = r as usize * self.n_embd;
        &self.values[e as usize][r..r + self.n_embd]
    }
}

/// The loss of any subset of experts over the calibration tokens, from inner products of the
/// experts' outputs. Per token t with the experts it may use, `needed[t]` (best first; the
/// first k are its unpruned picks), `gram[t]` holds their outputs' inner products. Z_t - Z'_t is
/// a weighted sum of those outputs, c^T Y, so its squared norm is c^T G c: with G at hand a
/// subset costs a few multiplications per token, not a pass over n_embd.
struct Objective<'r> {
    routing: &'r Routing,
    needed: Vec<Vec<u16>>,
    gram: Vec<Vec<f64>>,
}

impl<'r> Objective<'r> {
    fn new(routing: &'r Routing, needed: Vec<Vec<u16>>, outputs: &ExpertOutputs) -> Result<Objective<'r>> {
        let values: usize = needed.iter().map(|n| n.len() * n.len()).sum();
        if values > MAX_GRAM_VALUES {
            crate::bail_invalid!(
                "{} tokens with up to {} experts each are too many to compare subsets on; capture fewer tokens",
                needed.len(),
                needed.iter().map(Vec::len).max().unwrap_or(0)
            );
        }
        let gram = needed
            .par_iter()
            .enumerate()
            .map(|(t, experts)| {
                let m = experts.len();
                let mut g = vec![0f64; m * m];
                for a in 0..m {
                    let ya = outputs.get(experts[a], t);
                    for b in a..m {
                        let yb = outputs.get(experts[b], t);
                        let dot: f64 = ya.iter().zip(yb).map(|(&p, &q)| p as f64 * q as f64).sum();
                        g[a * m + b] = dot;
                        g[b * m + a] = dot;
                    }
                }
                g
            })
            .collect();
        Ok(Objective { routing, needed, gram })
    }

    /// ||Z||^2: the unpruned output's.
    fn reference_norm2(&self) -> f64 {
        let k = self.routing.k;
        let mut w = Vec::with_capacity(k);
        (0..self.needed.len())
            .map(|t| {
                w.clear();
                w.extend(self.routing.original_picks(t).iter().map(|&e| self.routing.logit(t, e)));
                softmax(&mut w);
                let m = self.needed[t].len();
                let g = &self.gram[t];
                (0..k).flat_map(|a| (0..k).map(move |b| (a, b))).map(|(a, b)| w[a] * w[b] * g[a * m + b]).sum::<f64>()
            })
            .sum()
    }

    /// ||Z - Z'(keep)||^2 over the tokens.
    fn loss(&self, keep: &[bool]) -> f64 {
        let mut scratch = Scratch::default();
        (0..self.needed.len()).map(|t| self.token_loss(t, keep, &mut scratch)).sum()
    }

    /// ||Z - Z'(keep)|| / ||Z||, given ||Z||^2 ([`Self::reference_norm2`]) as `z`; 0 when it is 0.
    fn relative_loss(&self, keep: &[bool], z: f64) -> f64 {
        if z > 0.0 {
            (self.loss(keep) / z).sqrt()
        } else {
            0.0
        }
    }

    fn token_loss(&self, t: usize, keep: &[bool], s: &mut Scratch) -> f64 {
        let routing = self.routing;
        let ranked = routing.ranked(t);
        let (k, k_after) = (routing.k, routing.k_after);
        // unchanged picks give an unchanged output
        if k_after == k && ranked[..k].iter().all(|&e| keep[e as usize]) {
            return 0.0;
        }
        // walk the ranking once, finding each pick's place in needed[t] (a subsequence of it)
        let needed = &self.needed[t];
        s.before.clear();
        s.after.clear();
        let mut at = 0;
        for &e in ranked {
            let place = (at < needed.len() && needed[at] == e).then_some(at);
            at += place.is_some() as usize;
            let (want_before, want_after) = (s.before.len() < k, s.after.len() < k_after && keep[e as usize]);
            if !want_before && !want_after {
                if s.after.len() == k_after {
                    break;
                }
                continue;
            }
            let Some(place) = place else {
                debug_assert!(false, "token {t}: expert {e} is picked but its output was not computed");
                continue;
            };
            if want_before {
                s.before.push((place, routing.logit(t, e)));
            }
            if want_after {
                s.after.push((place, routing.logit(t, e)));
            }
        }
        // c: the unpruned picks' weights minus the pruned picks'
        s.coef.clear();
        for (list, sign) in [(&mut s.before, 1.0), (&mut s.after, -1.0)] {
            s.weights.clear();
            s.weights.extend(list.iter().map(|&(_, l)| l));
            softmax(&mut s.weights);
            for (&(place, _), &w) in list.iter().zip(&s.weights) {
                match s.coef.iter_mut().find(|(p, _)| *p == place) {
                    Some((_, c)) => *c += sign * w,
                    None => s.coef.push((place, sign * w)),
                }
            }
        }
        let m = needed.len();
        let g = &self.gram[t];
        let quad: f64 =
            s.coef.iter().flat_map(|&(a, ca)| s.coef.iter().map(move |&(b, cb)| ca * cb * g[a * m + b])).sum();
        // c^T G c of a Gram matrix is >= 0; rounding may say otherwise
        quad.max(0.0)
    }
}

/// Buffers reused across tokens by [`Objective::token_loss`].
#[derive(Default)]
struct Scratch {
    before: Vec<(usize, f64)>,
    after: Vec<(usize, f64)>,
    weights: Vec<f64>,
    coef: Vec<(usize, f64)>,
}

/// C(n, k), or None above `bound`.
fn subsets_within(n: usize, k: usize, bound: usize) -> Option<usize> {
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > bound as u128 {
            return None;
        }
    }
    Some(c as usize)
}

/// Every subset of `keep` of `n` experts as a mask, in lexicographic order of their indices.
fn subsets(n: usize, keep: usize) -> Vec<Vec<bool>> {
    let mut out = Vec::new();
    let mut idx: Vec<usize> = (0..keep).collect();
    loop {
        let mut mask = vec![false; n];
        idx.iter().for_each(|&i| mask[i] = true);
        out.push(mask);
        // the next combination: bump the rightmost index that can move, reset those after it
        let Some(i) = (0..keep).rev().find(|&i| idx[i] < n - keep + i) else { return out };
        idx[i] += 1;
        for j in i + 1..keep {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// Index of the smallest loss (ties: the first).
fn argmin(losses: &[f64]) -> usize {
    losses.iter().enumerate().fold(0, |best, (i, &l)| if l < losses[best] { i } else { best })
}

/// The subset of `keep` experts with the least loss: exhaustive up to `max_subsets` subsets,
/// else greedy.
fn enum_search(objective: &Objective, keep: usize, max_subsets: usize) -> (Vec<bool>, Search) {
    let n = objective.routing.n_expert;
    match subsets_within(n, keep, max_subsets.min(MAX_EXHAUSTIVE)) {
        Some(count) => {
            let all = subsets(n, keep);
            let losses: Vec<f64> = all.par_iter().map(|mask| objective.loss(mask)).collect();
            (all[argmin(&losses)].clone(), Search::Exhaustive(count))
        }
        None => (greedy_search(objective, keep), Search::Greedy),
    }
}

/// From all experts, drops one at a time the expert whose removal raises the loss least (ties:
/// the lower index), until `keep` are left.
fn greedy_search(objective: &Objective, keep: usize) -> Vec<bool> {
    let n = objective.routing.n_expert;
    let mut mask = vec![true; n];
    for _ in keep..n {
        let candidates: Vec<usize> = (0..n).filter(|&j| mask[j]).collect();
        let losses: Vec<f64> = candidates
            .par_iter()
            .map(|&j| {
                let mut without = mask.clone();
                without[j] = false;
                objective.loss(&without)
            })
            .collect();
        mask[candidates[argmin(&losses)]] = false;
    }
    mask
}

/// Per expert, the relative loss of dropping it alone.
fn drop_one_losses(objective: &Objective) -> Vec<f64> {
    let n = objective.routing.n_expert;
    let z = objective.reference_norm2();
    (0..n)
        .into_par_iter()
        .map(|j| {
            let mut mask = vec![true; n];
            mask[j] = false;
            objective.relative_loss(&mask, z)
        })
        .collect()
}

/// If tensor `name` holds one slice per expert (the expert its last dimension), its layer.
fn per_expert_layer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(LOW_PREFIX).unwrap_or(name).strip_prefix("blk.")?;
    let (il, kind) = rest.split_once('.')?;
    let per_expert = kind.starts_with("ffn_gate_inp.") || kind.starts_with("exp_probs_b.") || kind.contains("_exps.");
    per_expert.then(|| il.parse().ok()).flatten()
}

/// Writes `model` with only the experts `kept[L]` (original indices, ascending, the same count in
/// every layer) in each layer L, to `out` (atomically). `method` is recorded.
pub fn write_pruned(model: &GgufFile, kept: &[Vec<usize>], method: &str, out: &Path) -> Result<()> {
    let label = model.label();
    let keep = kept.first().map_or(0, Vec::len);
    let shape = check_model(model, keep)?;
    if kept.len() != shape.n_layer {
        crate::bail_invalid!("{label}: {} layers of kept experts for llama.block_count {}", kept.len(), shape.n_layer);
    }
    for (il, k) in kept.iter().enumerate() {
        if k.len() != keep || k.windows(2).any(|w| w[0] >= w[1]) || k.iter().any(|&j| j >= shape.n_expert) {
            crate::bail_invalid!(
                "{label}: layer {il}: experts {k:?} are not {keep} distinct ascending indices below {}",
                shape.n_expert
            );
        }
    }
    let metadata = pruned_metadata(model, &shape, kept, method)?;
    let mut infos = Vec::with_capacity(model.tensors.len());
    for t in &model.tensors {
        let mut info = TensorInfoOut::from(t);
        if let Some(il) = per_expert_layer(&t.name) {
            check_per_expert(model, t, il, &shape)?;
            *info.ne.last_mut().expect("tensors have dimensions") = keep as u64;
        }
        infos.push(info);
    }
    let mut w = GgufWriter::create(out, &metadata, &infos)?;
    for t in &model.tensors {
        let data = model.try_tensor_data(t)?;
        match per_expert_layer(&t.name) {
            None => w.write_tensor_data(&t.name, data)?,
            Some(il) => {
                // each expert's slice is a contiguous run of whole rows (or blocks)
                let slice = data.len() / shape.n_expert;
                w.begin_tensor(&t.name)?;
                for &j in &kept[il] {
                    w.write_chunk(&data[j * slice..(j + 1) * slice])?;
                }
                w.end_tensor()?;
            }
        }
    }
    w.finish()
}

/// Checks that per-expert tensor `t` of layer `il` splits into whole per-expert slices.
fn check_per_expert(model: &GgufFile, t: &TensorInfo, il: usize, shape: &MoeShape) -> Result<()> {
    let label = model.label();
    if il >= shape.n_layer {
        crate::bail_invalid!(
            "{label}: tensor '{}' is in layer {il}, beyond llama.block_count {}",
            t.name,
            shape.n_layer
        );
    }
    let n_expert = shape.n_expert as u64;
    if t.ne.last() != Some(&n_expert) {
        crate::bail_invalid!(
            "{label}: tensor '{}' is {:?}: its last dimension should be llama.expert_count ({n_expert})",
            t.name,
            t.ne
        );
    }
    if !(t.n_elements() / n_expert).is_multiple_of(t.ty.block_size() as u64) {
        crate::bail_invalid!(
            "{label}: tensor '{}' ({} {:?}): one expert's slice is not whole {} blocks",
            t.name,
            t.ty,
            t.ne,
            t.ty
        );
    }
    Ok(())
}

/// The model's metadata with the expert counts of the pruned model and the record of what was
/// pruned, composed with an earlier pruning's.
fn pruned_metadata(model: &GgufFile, shape: &MoeShape, kept: &[Vec<usize>], method: &str) -> Result<Metadata> {
    let label = model.label();
    let md = &model.metadata;
    let keep = kept[0].len();
    let mut metadata = md.clone();
    metadata.insert("llama.expert_count", Value::U32(keep as u32));
    metadata.insert("llama.expert_used_count", Value::U32(shape.n_used.min(keep) as u32));
    // what described the experts before no longer does: skipping thresholds measured on the
    // unpruned routing (moe-pack), and the merged models' names, one per expert (moe-merge)
    metadata.remove(SKIP_BETA_KEY);
    metadata.remove(MERGED_EXPERTS_KEY);
    let (before, method) = match md.opt_u32(KEY_EXPERTS_BEFORE)? {
        None => (shape.n_expert as u32, method.to_string()),
        Some(before) => (before, format!("{}+{method}", md.get_str(KEY_METHOD)?)),
    };
    metadata.insert(KEY_METHOD, Value::String(method));
    metadata.insert(KEY_EXPERTS_BEFORE, Value::U32(before));
    for (il, k) in kept.iter().enumerate() {
        let key = kept_key(il);
        // indices in the original model: through an earlier pruning's record where there is one
        let original: Vec<u32> = match md.get(&key) {
            None if md.contains_key(KEY_EXPERTS_BEFORE) => {
                crate::bail_invalid!("{label}: {KEY_EXPERTS_BEFORE} is set but '{key}' is missing")
            }
            None => k.iter().map(|&j| j as u32).collect(),
            Some(Value::Array(Array::U32(earlier)))
                if earlier.len() == shape.n_expert && earlier.iter().all(|&j| j < before) =>
            {
                k.iter().map(|&j| earlier[j]).collect()
            }
            Some(v) => crate::bail_invalid!(
                "{label}: metadata '{key}' is {}; expected {} expert indices below {before}",
                v.type_name(),
                shape.n_expert
            ),
        };
        metadata.insert(key, Value::Array(Array::U32(original)));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::write_gguf;
    use crate::quants::quantize;
    use crate::GgmlType;
    use rand::Rng;

    const D: usize = 32;
    const FF: usize = 32;
    const LAYERS: usize = 2;
    const TOKENS: usize = 300;

    /// One layer of a tiny MoE: router [E][D], gate and up [E][FF][D], down [E][D][FF].
    struct Layer {
        router: Vec<f32>,
        gate: Vec<f32>,
        up: Vec<f32>,
        down: Vec<f32>,
    }

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    fn uniform(rng: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    /// Random experts behind the router `router(j)` gives: expert j's (coordinate, weight)
    /// pairs, the rest of its row 0.
    fn layer(n_expert: usize, seed: u64, router: impl Fn(usize) -> Vec<(usize, f32)>) -> Layer {
        let mut r = rng(seed);
        let mut rows = vec![0f32; n_expert * D];
        for j in 0..n_expert {
            for (c, w) in router(j) {
                rows[j * D + c] = w;
            }
        }
        let scale = 1.0 / (D as f32).sqrt();
        Layer {
            router: rows,
            gate: uniform(&mut r, n_expert * FF * D, scale),
            up: uniform(&mut r, n_expert * FF * D, scale),
            down: uniform(&mut r, n_expert * D * FF, 1.0 / (FF as f32).sqrt()),
        }
    }

    fn random_layer(n_expert: usize, seed: u64) -> Layer {
        let mut r = rng(seed ^ 0xabc);
        let router = (0..n_expert).map(|_| uniform(&mut r, D, 1.0)).collect::<Vec<_>>();
        layer(n_expert, seed, |j| router[j].iter().copied().enumerate().collect())
    }

    /// Experts 1, 2 and 3 each own a cluster of tokens (logit about 12 on it, under 2 elsewhere);
    /// the others have the same logit `others[j]` on every token (see [`clustered_capture`]).
    fn clustered_layer(n_expert: usize, seed: u64, others: impl Fn(usize) -> f32) -> Layer {
        layer(n_expert, seed, |j| if (1..=3).contains(&j) { vec![(j, 6.0)] } else { vec![(0, others(j))] })
    }

    /// Tokens in three clusters: coordinate 0 is 1, coordinate 1 + t % 3 is about 2, the rest
    /// is noise in (-0.3, 0.3).
    fn clustered_capture(seed: u64) -> Capture {
        let mut r = rng(seed);
        let layers = (0..LAYERS)
            .map(|_| {
                let mut x = uniform(&mut r, TOKENS * D, 0.3);
                for t in 0..TOKENS {
                    x[t * D] = 1.0;
                    x[t * D + 1 + t % 3] += 2.0;
                }
                x
            })
            .collect();
        Capture { n_embd: D, layers }
    }

    fn random_capture(seed: u64) -> Capture {
        let mut r = rng(seed);
        Capture { n_embd: D, layers: (0..LAYERS).map(|_| uniform(&mut r, TOKENS * D, 1.0)).collect() }
    }

    /// Writes a llama MoE of `layers` with top-`k` routing, experts stored as `ty` (gate, up,
    /// down), beside a token embedding and norms that pruning copies as they are.
    fn write_model(path: &Path, layers: &[Layer], k: usize, ty: [GgmlType; 3]) -> GgufFile {
        let n_expert = layers[0].router.len() / D;
        let mut md = Metadata::new();
        md.insert("general.architecture", "llama");
        md.insert("llama.block_count", Value::U32(layers.len() as u32));
        md.insert("llama.embedding_length", Value::U32(D as u32));
        md.insert("llama.expert_count", Value::U32(n_expert as u32));
        md.insert("llama.expert_used_count", Value::U32(k as u32));
        let (e, d, ff) = (n_expert as u64, D as u64, FF as u64);
        let mut tensors: Vec<(TensorInfoOut, Vec<u8>)> = Vec::new();
        let mut add = |name: String, t: GgmlType, ne: Vec<u64>, values: &[f32]| {
            tensors.push((TensorInfoOut::new(name, t, ne), quantize(t, values).unwrap()));
        };
        add("token_embd.weight".into(), GgmlType::F32, vec![d, 16], &uniform(&mut rng(5), 16 * D, 1.0));
        for (il, l) in layers.iter().enumerate() {
            add(format!("blk.{il}.ffn_norm.weight"), GgmlType::F32, vec![d], &[1.0; D]);
            add(format!("blk.{il}.ffn_gate_inp.weight"), GgmlType::F32, vec![d, e], &l.router);
            add(format!("blk.{il}.ffn_gate_exps.weight"), ty[0], vec![d, ff, e], &l.gate);
            add(format!("blk.{il}.ffn_up_exps.weight"), ty[1], vec![d, ff, e], &l.up);
            add(format!("blk.{il}.ffn_down_exps.weight"), ty[2], vec![ff, d, e], &l.down);
        }
        add("output_norm.weight".into(), GgmlType::F32, vec![d], &[1.0; D]);
        let refs: Vec<(TensorInfoOut, &[u8])> = tensors.iter().map(|(i, b)| (i.clone(), b.as_slice())).collect();
        write_gguf(path, &md, &refs).unwrap();
        GgufFile::open(path).unwrap()
    }

    const F32S: [GgmlType; 3] = [GgmlType::F32; 3];

    fn opts(keep: usize, method: PruneMethod) -> PruneOptions {
        PruneOptions { keep, method, seed: 1, max_subsets: DEFAULT_MAX_SUBSETS }
    }

    fn kept(report: &PruneReport) -> Vec<Vec<usize>> {
        report.layers.iter().map(|l| l.kept.clone()).collect()
    }

    /// The layer output of llama.cpp's MoE on token row `x` with only the experts in `keep`
    /// (the others' logits -inf), computed plainly.
    fn moe_output(l: &Layer, x: &[f32], k: usize, keep: &[bool]) -> Vec<f64> {
        let n_expert = l.router.len() / D;
        let dot = |w: &[f32]| w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
        let logits: Vec<f64> = (0..n_expert)
            .map(|j| if keep[j] { dot(&l.router[j * D..(j + 1) * D]) } else { f64::NEG_INFINITY })
            .collect();
        let mut order: Vec<usize> = (0..n_expert).filter(|&j| keep[j]).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let picks = &order[..k.min(order.len())];
        let sum: f64 = picks.iter().map(|&j| (logits[j] - logits[picks[0]]).exp()).sum();
        let mut out = vec![0f64; D];
        for &j in picks {
            let w = (logits[j] - logits[picks[0]]).exp() / sum;
            let h: Vec<f64> = (0..FF)
                .map(|c| {
                    let row = (j * FF + c) * D;
                    let g = dot(&l.gate[row..row + D]);
                    g / (1.0 + (-g).exp()) * dot(&l.up[row..row + D])
                })
                .collect();
            for (r, o) in out.iter_mut().enumerate() {
                let down = &l.down[(j * D + r) * FF..(j * D + r + 1) * FF];
                *o += w * down.iter().zip(&h).map(|(a, b)| *a as f64 * b).sum::<f64>();
            }
        }
        out
    }

    /// ||Z - Z'|| / ||Z|| of `layer` over the capture's tokens, computed plainly.
    fn direct_relative_loss(l: &Layer, x: &[f32], k: usize, keep: &[bool]) -> f64 {
        let all = vec![true; keep.len()];
        let (mut diff, mut norm) = (0.0, 0.0);
        for row in x.chunks(D) {
            let (z, zp) =
                (moe_output(l, row, k, &all), moe_output(l, row, k.min(keep.iter().filter(|&&b| b).count()), keep));
            diff += z.iter().zip(&zp).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
            norm += z.iter().map(|a| a * a).sum::<f64>();
        }
        (diff / norm).sqrt()
    }

    #[test]
    fn keeping_every_expert_is_the_identity_for_every_method() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = random_capture(3);
        for method in PruneMethod::ALL {
            let out = dir.path().join(format!("{}.gguf", method.name()));
            let report = prune(&model, &capture, &opts(4, method), &out).unwrap();
            assert_eq!(kept(&report), vec![vec![0, 1, 2, 3]; LAYERS], "{method:?}");
            assert!(report.layers.iter().all(|l| l.relative_loss == 0.0), "{method:?}");
            let pruned = GgufFile::open(&out).unwrap();
            assert_eq!(pruned.tensors.len(), model.tensors.len());
            for t in &model.tensors {
                let p = pruned.tensor(&t.name).unwrap();
                assert_eq!((&p.ne, p.ty), (&t.ne, t.ty), "{}", t.name);
                assert_eq!(pruned.tensor_data(p), model.tensor_data(t), "{method:?}: {}", t.name);
            }
            let md = &pruned.metadata;
            assert_eq!(md.get_u32("llama.expert_count").unwrap(), 4);
            assert_eq!(md.get_u32("llama.expert_used_count").unwrap(), 2);
            assert_eq!(md.get_str(KEY_METHOD).unwrap(), method.name());
            assert_eq!(md.get_u32(KEY_EXPERTS_BEFORE).unwrap(), 4);
            assert_eq!(md.get(&kept_key(1)), Some(&Value::Array(Array::U32(vec![0, 1, 2, 3]))));
        }
    }

    #[test]
    fn an_expert_the_router_never_picks_is_dropped_by_freq_reap_and_enum() {
        let dir = tempfile::tempdir().unwrap();
        // expert 0's logit is -20 on every token, the others' at least -2
        let layers: Vec<Layer> = (0..LAYERS).map(|l| clustered_layer(4, l as u64, |_| -20.0)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = clustered_capture(3);
        for method in [PruneMethod::Freq, PruneMethod::Reap, PruneMethod::Enum] {
            let report = choose(&model, &capture, &opts(3, method)).unwrap();
            assert_eq!(kept(&report), vec![vec![1, 2, 3]; LAYERS], "{method:?}");
            for l in &report.layers {
                // the output does not change at all
                assert_eq!(l.relative_loss, 0.0, "{method:?}");
                match method {
                    PruneMethod::Freq | PruneMethod::Reap => assert!(l.scores[0] == 0.0 && l.scores[1] > 0.0),
                    _ => assert!(l.scores[0] == 0.0 && l.scores[1] > 0.1, "{:?}", l.scores),
                }
            }
        }
    }

    #[test]
    fn an_expert_picked_often_with_tiny_output_is_dropped_by_reap_and_enum_but_not_freq() {
        let dir = tempfile::tempdir().unwrap();
        // expert 0 is every token's second pick (logit 3 against about 12 and under 2) and its
        // output is scaled by 1e-4. enum measures the layer's output, in which dropping an
        // expert renormalises the weights of the others: an expert is cheap to drop when the
        // pick replacing it weighs little too, as here
        let layers: Vec<Layer> = (0..LAYERS)
            .map(|l| {
                let mut layer = clustered_layer(4, l as u64, |_| 3.0);
                layer.down[..D * FF].iter_mut().for_each(|v| *v *= 1e-4);
                layer
            })
            .collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = clustered_capture(3);
        let freq = choose(&model, &capture, &opts(3, PruneMethod::Freq)).unwrap();
        for l in &freq.layers {
            assert!(l.kept.contains(&0), "{:?}", l.kept);
            assert_eq!(l.scores[0], 0.5, "every token picks it: half of all picks");
        }
        for method in [PruneMethod::Reap, PruneMethod::Enum] {
            let report = choose(&model, &capture, &opts(3, method)).unwrap();
            assert_eq!(kept(&report), vec![vec![1, 2, 3]; LAYERS], "{method:?}");
            for (l, f) in report.layers.iter().zip(&freq.layers) {
                assert!(
                    l.relative_loss < 1e-3 && f.relative_loss > 0.1,
                    "{} vs freq's {}",
                    l.relative_loss,
                    f.relative_loss
                );
            }
        }
    }

    #[test]
    fn random_is_a_seeded_choice() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(8, l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = random_capture(3);
        let with_seed = |seed| {
            let o = PruneOptions { seed, ..opts(4, PruneMethod::Random) };
            kept(&choose(&model, &capture, &o).unwrap())
        };
        let first = with_seed(7);
        assert_eq!(with_seed(7), first);
        assert!(first.iter().all(|k| k.len() == 4 && k.windows(2).all(|w| w[0] < w[1]) && k[3] < 8), "{first:?}");
        let distinct: std::collections::BTreeSet<_> = (0..10).map(with_seed).collect();
        assert!(distinct.len() > 5, "{distinct:?}");
    }

    #[test]
    fn greedy_enum_agrees_with_exhaustive_where_the_answer_is_clear_and_never_beats_it() {
        let dir = tempfile::tempdir().unwrap();
        // experts 1-3 own clusters; 0 is a tiny, weak second pick; 4 and 5 are never picked
        let layers: Vec<Layer> = (0..LAYERS)
            .map(|l| {
                let mut layer = clustered_layer(6, l as u64, |j| if j == 0 { 3.0 } else { -20.0 });
                layer.down[..D * FF].iter_mut().for_each(|v| *v *= 1e-4);
                layer
            })
            .collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = clustered_capture(3);
        let exhaustive = choose(&model, &capture, &opts(3, PruneMethod::Enum)).unwrap();
        let greedy = choose(&model, &capture, &PruneOptions { max_subsets: 19, ..opts(3, PruneMethod::Enum) }).unwrap();
        assert_eq!(exhaustive.layers[0].search, Search::Exhaustive(20));
        assert_eq!(greedy.layers[0].search, Search::Greedy);
        assert_eq!(kept(&exhaustive), vec![vec![1, 2, 3]; LAYERS]);
        assert_eq!(kept(&greedy), kept(&exhaustive));

        // on random experts the greedy subset is at best as good
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(6, 10 + l as u64)).collect();
        let model = write_model(&dir.path().join("random.gguf"), &layers, 2, F32S);
        let capture = random_capture(4);
        let exhaustive = choose(&model, &capture, &opts(3, PruneMethod::Enum)).unwrap();
        let greedy = choose(&model, &capture, &PruneOptions { max_subsets: 1, ..opts(3, PruneMethod::Enum) }).unwrap();
        for (e, g) in exhaustive.layers.iter().zip(&greedy.layers) {
            assert!(
                g.relative_loss >= e.relative_loss - 1e-9,
                "greedy {} < exhaustive {}",
                g.relative_loss,
                e.relative_loss
            );
        }
    }

    #[test]
    fn losses_are_those_of_the_layer_output_computed_directly_and_enum_finds_the_least() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(5, 20 + l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = random_capture(5);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1e-3);
        // N < k too: every kept expert runs
        for keep in [1, 2, 3] {
            let report = choose(&model, &capture, &opts(keep, PruneMethod::Enum)).unwrap();
            for (il, l) in report.layers.iter().enumerate() {
                let (x, k) = (&capture.layers[il], 2);
                let mask = |kept: &[usize]| (0..5).map(|j| kept.contains(&j)).collect::<Vec<bool>>();
                let want = direct_relative_loss(&layers[il], x, k, &mask(&l.kept));
                assert!(close(l.relative_loss, want), "keep {keep}, layer {il}: {} vs {want}", l.relative_loss);
                let best = subsets(5, keep)
                    .iter()
                    .map(|m| direct_relative_loss(&layers[il], x, k, m))
                    .fold(f64::INFINITY, f64::min);
                assert!(close(l.relative_loss, best), "keep {keep}, layer {il}: {} vs best {best}", l.relative_loss);
                for j in 0..5 {
                    let drop_j: Vec<usize> = (0..5).filter(|&i| i != j).collect();
                    let want = direct_relative_loss(&layers[il], x, k.min(keep), &mask(&drop_j));
                    // dropping one with the pruned model's top-k' (k' = min(k, N))
                    assert!(close(l.scores[j], want) || keep < k, "expert {j}: {} vs {want}", l.scores[j]);
                }
            }
            // the other methods' losses too
            for method in [PruneMethod::Reap, PruneMethod::Freq, PruneMethod::Random] {
                let report = choose(&model, &capture, &opts(keep, method)).unwrap();
                let l = &report.layers[1];
                let mask: Vec<bool> = (0..5).map(|j| l.kept.contains(&j)).collect();
                let want = direct_relative_loss(&layers[1], &capture.layers[1], 2, &mask);
                assert!(close(l.relative_loss, want), "{method:?} keep {keep}: {} vs {want}", l.relative_loss);
            }
        }
    }

    #[test]
    fn reap_scores_are_router_weight_times_output_norm() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, 30 + l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = random_capture(6);
        let report = choose(&model, &capture, &opts(2, PruneMethod::Reap)).unwrap();
        let l = &layers[0];
        let (mut sums, mut counts) = (vec![0f64; 4], vec![0usize; 4]);
        for x in capture.layers[0].chunks(D) {
            // one expert at a time: its weighted output is the MoE output with only the pick's
            // weight left
            let all = moe_output(l, x, 2, &[true; 4]);
            let logits: Vec<f64> = (0..4)
                .map(|j| l.router[j * D..(j + 1) * D].iter().zip(x).map(|(a, b)| (*a * *b) as f64).sum())
                .collect();
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let (a, b) = (order[0], order[1]);
            let wa = 1.0 / (1.0 + (logits[b] - logits[a]).exp());
            let mut only = [false; 4];
            only[a] = true;
            let fa = moe_output(l, x, 1, &only);
            let fb: Vec<f64> = all.iter().zip(&fa).map(|(z, f)| (z - wa * f) / (1.0 - wa)).collect();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            sums[a] += wa * norm(&fa);
            sums[b] += (1.0 - wa) * norm(&fb);
            counts[a] += 1;
            counts[b] += 1;
        }
        for j in 0..4 {
            let want = if counts[j] == 0 { 0.0 } else { sums[j] / counts[j] as f64 };
            let got = report.layers[0].scores[j];
            assert!((got - want).abs() <= 1e-3 * want.max(1e-6), "expert {j}: {got} vs {want}");
        }
    }

    #[test]
    fn quantized_stacked_experts_are_sliced_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, 40 + l as u64)).collect();
        let types = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q8_0];
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, types);
        let out = dir.path().join("pruned.gguf");
        let report = prune(&model, &random_capture(7), &opts(2, PruneMethod::Reap), &out).unwrap();
        let pruned = GgufFile::open(&out).unwrap();
        assert_eq!(pruned.metadata.get_u32("llama.expert_count").unwrap(), 2);
        for (il, l) in report.layers.iter().enumerate() {
            for kind in ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
                let name = format!("blk.{il}.{kind}.weight");
                let (before, after) = (model.tensor(&name).unwrap(), pruned.tensor(&name).unwrap());
                assert_eq!(after.ty, before.ty);
                assert_eq!(after.ne[..after.ne.len() - 1], before.ne[..before.ne.len() - 1]);
                assert_eq!(*after.ne.last().unwrap(), 2);
                let (b, a) = (
                    crate::weights::gguf_tensor_f32(&model, &name).unwrap().0,
                    crate::weights::gguf_tensor_f32(&pruned, &name).unwrap().0,
                );
                let per = b.len() / 4;
                for (i, &j) in l.kept.iter().enumerate() {
                    assert_eq!(a[i * per..(i + 1) * per], b[j * per..(j + 1) * per], "{name}: slot {i} is expert {j}");
                    let bytes = model.tensor_data(before).len() / 4;
                    assert_eq!(
                        pruned.tensor_data(after)[i * bytes..(i + 1) * bytes],
                        model.tensor_data(before)[j * bytes..(j + 1) * bytes]
                    );
                }
            }
        }
        // the loss is computed from the dequantized experts, like the model runs them
        assert!(report.layers.iter().all(|l| l.relative_loss > 0.0 && l.relative_loss.is_finite()));
    }

    #[test]
    fn pruning_a_pruned_model_records_original_indices() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, 50 + l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        write_pruned(&model, &[vec![0, 2, 3], vec![1, 2, 3]], "freq", &dir.path().join("p3.gguf")).unwrap();
        let p3 = GgufFile::open(dir.path().join("p3.gguf")).unwrap();
        write_pruned(&p3, &[vec![1, 2], vec![0, 2]], "enum", &dir.path().join("p2.gguf")).unwrap();
        let p2 = GgufFile::open(dir.path().join("p2.gguf")).unwrap();
        let md = &p2.metadata;
        assert_eq!(md.get_str(KEY_METHOD).unwrap(), "freq+enum");
        assert_eq!(md.get_u32(KEY_EXPERTS_BEFORE).unwrap(), 4);
        assert_eq!(md.get(&kept_key(0)), Some(&Value::Array(Array::U32(vec![2, 3]))));
        assert_eq!(md.get(&kept_key(1)), Some(&Value::Array(Array::U32(vec![1, 3]))));
        // the router rows of experts 2 and 3 of layer 0
        let router = p2.tensor_data_by_name("blk.0.ffn_gate_inp.weight").unwrap();
        assert_eq!(router, bytemuck::cast_slice::<f32, u8>(&layers[0].router[2 * D..4 * D]));
        assert_eq!(md.get_u32("llama.expert_used_count").unwrap(), 2);
        // top-2 of one expert is top-1
        write_pruned(&p2, &[vec![1], vec![0]], "reap", &dir.path().join("p1.gguf")).unwrap();
        let p1 = GgufFile::open(dir.path().join("p1.gguf")).unwrap();
        assert_eq!(p1.metadata.get_u32("llama.expert_used_count").unwrap(), 1);
        assert_eq!(p1.metadata.get(&kept_key(0)), Some(&Value::Array(Array::U32(vec![3]))));
        assert_eq!(p1.metadata.get(&kept_key(1)), Some(&Value::Array(Array::U32(vec![1]))));
    }

    #[test]
    fn impossible_requests_and_foreign_inputs_are_refused_by_name_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, l as u64)).collect();
        let path = dir.path().join("moe.gguf");
        let model = write_model(&path, &layers, 2, F32S);
        let capture = random_capture(3);
        let out = dir.path().join("out.gguf");
        let err = |m: &GgufFile, c: &Capture, keep: usize| {
            prune(m, c, &opts(keep, PruneMethod::Enum), &out).unwrap_err().to_string()
        };
        for keep in [0, 5] {
            let e = err(&model, &capture, keep);
            assert!(
                e.contains("moe.gguf") && e.contains("llama.expert_count") && e.contains(&format!("keep {keep}")),
                "{e}"
            );
        }
        let foreign = Capture { n_embd: 16, layers: vec![vec![0.0; 16 * 10]; 2] };
        assert!(err(&model, &foreign, 2).contains("another model"));
        let short = Capture { n_embd: D, layers: vec![vec![0.0; D * 10]; 3] };
        assert!(err(&model, &short, 2).contains("another model"));
        let empty = Capture { n_embd: D, layers: vec![vec![0.0; D * 10], vec![]] };
        assert!(err(&model, &empty, 2).contains("capture layer 1"));
        assert!(!out.exists());

        // metadata and shapes that do not describe a llama MoE, each refused with its key or tensor
        let with_metadata = |key: &str, value: Value| {
            let mut md = model.metadata.clone();
            md.insert(key, value);
            let p = dir.path().join("edited.gguf");
            crate::gguf::rewrite_with_metadata(&model, &md, &p).unwrap();
            GgufFile::open(&p).unwrap()
        };
        let cases = [
            ("general.architecture", Value::from("qwen2moe"), "architecture 'qwen2moe'"),
            ("llama.expert_count", Value::U32(0), "not a mixture of experts"),
            ("llama.expert_count", Value::U32(1 << 30), "llama.expert_count"),
            ("llama.expert_count", Value::U32(8), "blk.0.ffn_gate_inp.weight"),
            ("llama.expert_used_count", Value::U32(0), "llama.expert_used_count"),
            ("llama.expert_used_count", Value::U32(9), "llama.expert_used_count"),
            ("llama.embedding_length", Value::U32(64), "blk.0.ffn_gate_inp.weight"),
            ("llama.block_count", Value::U32(3), "no tensor 'blk.2.ffn_gate_inp.weight'"),
            ("llama.expert_used_count", Value::from("two"), "llama.expert_used_count"),
        ];
        for (key, value, want) in cases {
            let edited = with_metadata(key, value);
            let e = err(&edited, &capture, 2);
            assert!(e.contains(want), "{key}: {e}");
            assert!(!out.exists());
        }
        // a per-expert tensor whose last dimension is not the experts
        let mut tensors: Vec<(TensorInfoOut, &[u8])> =
            model.tensors.iter().map(|t| (TensorInfoOut::from(t), model.tensor_data(t))).collect();
        tensors.push((TensorInfoOut::new("blk.1.exp_probs_b.bias", GgmlType::F32, [3u64]), &[0u8; 12]));
        let p = dir.path().join("odd.gguf");
        write_gguf(&p, &model.metadata, &tensors).unwrap();
        let odd = GgufFile::open(&p).unwrap();
        let e = write_pruned(&odd, &[vec![0, 1], vec![1, 2]], "freq", &out).unwrap_err().to_string();
        assert!(e.contains("blk.1.exp_probs_b.bias") && e.contains("llama.expert_count"), "{e}");
        let e = write_pruned(&model, &[vec![0, 0], vec![1, 2]], "freq", &out).unwrap_err().to_string();
        assert!(e.contains("layer 0") && e.contains("[0, 0]"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn random_metadata_gives_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let layers: Vec<Layer> = (0..LAYERS).map(|l| random_layer(4, l as u64)).collect();
        let model = write_model(&dir.path().join("moe.gguf"), &layers, 2, F32S);
        let capture = random_capture(3);
        let mut r = rng(11);
        let keys = ["llama.expert_count", "llama.expert_used_count", "llama.block_count", "llama.embedding_length"];
        let values = [0u32, 1, 2, 3, 4, 5, 32, 64, u32::MAX];
        let p = dir.path().join("fuzz.gguf");
        for _ in 0..40 {
            let mut md = model.metadata.clone();
            for _ in 0..r.gen_range(1..3) {
                md.insert(keys[r.gen_range(0..keys.len())], Value::U32(values[r.gen_range(0..values.len())]));
            }
            crate::gguf::rewrite_with_metadata(&model, &md, &p).unwrap();
            let edited = GgufFile::open(&p).unwrap();
            let keep = r.gen_range(0..6);
            // either a valid pruning of a consistent file, or an error; never a panic
            if let Ok(report) = prune(&edited, &capture, &opts(keep, PruneMethod::Enum), &dir.path().join("o.gguf")) {
                assert_eq!(report.experts_after, keep);
            }
        }
    }
}
