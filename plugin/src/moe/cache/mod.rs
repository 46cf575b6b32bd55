//! The MoE cache (`--moe-cache` in the patched llama.cpp): a mixture-of-experts model's experts
//! stay in its GGUF file and are read on demand into a byte-budgeted cache in memory, with the
//! mixed-precision loading, skipping and prefetching of HOBBIT ("A Mixed Precision Expert
//! Offloading System for Fast MoE Inference", arXiv 2411.01433).
//!
//! llama.cpp allocates each layer's stacked expert tensors (ffn_{gate,up,down}_exps) in plain
//! host memory, unread, and hands them over ([`MoeCache::bind`]). Its graph callback then
//! forwards, layer by layer, the three tensors that build_moe_ffn computes before the experts
//! run, and [`MoeCache`] keeps what it needs of them from one to the next:
//! 1. the router's probabilities and its input ([`MoeCache::eval_probs`]);
//! 2. the top-k picks ([`MoeCache::eval_topk`]): each pick is ranked by its probability
//!    ([`rank`]), the picks that are not skipped are made resident, and the experts that the
//!    next layers' routers pick for this layer's input are read ahead;
//! 3. the picks' gate weights ([`MoeCache::eval_weights`]): a skipped pick's weight becomes
//!    zero, and llama.cpp's normalisation (where the model has one) shares it among the rest.
//!
//! Correctness does not depend on the budget: every pick that is not skipped is in memory when
//! its layer runs. What the thresholds change: a pick that may be skipped (HOBBIT's t2, or the
//! dynamic skipping of "Not All Experts are Equal", arXiv 2402.14800) is not read on a miss,
//! though one already in memory is used; a pick that needs only low precision (t1) loads the
//! expert's low-precision copy (`switchyard moe-pack`). One cache serves one context at a time:
//! contexts sharing a model would evict each other's experts between a layer's picks and its
//! matmuls.
//!
//! The parts, one job each: [`config`] the settings; `layout` where the experts lie in the
//! file; `residency` which experts are in memory within the budget; `io` the reads and the
//! memory handed back; [`policy`] which expert to evict (shared with the simulator,
//! `moe::sim`); `lookahead` later layers' routers, for prefetching.

pub mod config;
mod io;
mod layout;
mod lookahead;
pub mod policy;
mod residency;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use config::{parse_policy, Budget, MoeCacheConfig};
pub use residency::MoeCacheStats;

use self::layout::{skip_betas, ExpertLayout};
use self::lookahead::Lookahead;
use self::policy::Key;
use self::residency::Residency;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::moe::importance::{rank, Need, Thresholds};

/// Batches of more tokens than this are not prefetched for: a prompt's batch picks nearly every
/// expert of a layer, so reading them early only reorders the reads and fights the budget.
const PREFETCH_MAX_TOKENS: usize = 8;

pub struct MoeCache {
    residency: Residency,
    lookahead: Lookahead,
    /// Per layer: t1, t2 and the layer's beta (0 when not skipping by beta).
    thresholds: Vec<Thresholds>,
    /// How many later layers to read ahead for; 0 when off or after reading ahead failed.
    prefetch: usize,
    /// Why reading ahead stopped, until the host asks.
    prefetch_failure: Option<Error>,
    /// Per layer, what the graph has forwarded of its current batch.
    pending: Vec<Pending>,
}

/// What a layer's later steps need from its earlier ones.
#[derive(Default)]
struct Pending {
    /// The router's probabilities (n_expert per token), until the picks arrive.
    probs: Option<Vec<f32>>,
    /// The router's input (n_embd per token), until the picks arrive, when reading ahead.
    gate_input: Option<Vec<f32>>,
    /// Per pick, whether it was skipped, until the gate weights arrive (None: none was).
    skipped: Option<Vec<bool>>,
}

impl MoeCache {
    /// Opens a mixture-of-experts GGUF: every layer's ffn_{gate,up,down}_exps are found and will
    /// be read from it (with their low-precision copies, when `config.t1` uses them).
    pub fn open(path: &Path, config: &MoeCacheConfig) -> Result<MoeCache> {
        // inside llama.cpp, which reads the tokenizer itself (see GgufFile::open_without)
        let gguf = GgufFile::open_without(path, "tokenizer.")?;
        config.check(gguf.label())?;
        let layout = ExpertLayout::find(&gguf, config.t1 < 1.0)?;
        let n_layer = layout.layers.len();
        let betas = if config.skip_beta { skip_betas(&gguf, n_layer)? } else { vec![0.0; n_layer] };
        let thresholds = betas.into_iter().map(|beta| Thresholds { t1: config.t1, t2: config.t2, beta }).collect();
        let lookahead = Lookahead::load(&gguf, n_layer, layout.n_expert)?;
        let budget = config.budget.bytes(layout.total_bytes);
        Ok(MoeCache {
            residency: Residency::new(path, layout, budget, config.policy)?,
            lookahead,
            thresholds,
            prefetch: config.prefetch,
            prefetch_failure: None,
            pending: (0..n_layer).map(|_| Pending::default()).collect(),
        })
    }

    /// Whether `name` is a tensor this cache fills (llama.cpp then allocates it, unread).
    pub fn manages(&self, name: &str) -> bool {
        self.residency.layout().tensor(name).is_some()
    }

    pub fn stats(&self) -> MoeCacheStats {
        self.residency.stats()
    }

    /// Hands over the memory of tensor `name` (`len` bytes), which the cache fills and empties
    /// from now on; it is emptied (zero) now.
    ///
    /// # Safety
    /// `dest` must point to `len` writable bytes of malloc'd memory that no one else writes and
    /// that outlive the cache.
    pub unsafe fn bind(&mut self, name: &str, dest: *mut u8, len: usize) -> Result<()> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.residency.bind(name, dest, len) }
    }

    /// Step 1 of layer `layer`: the router's probabilities for the batch (`n_expert` per token)
    /// and its input (`n_embd` per token; empty when the host does not have it), kept for the
    /// layer's picks.
    pub fn eval_probs(&mut self, layer: usize, probs: &[f32], gate_input: &[f32]) -> Result<()> {
        self.check_layer(layer)?;
        let (label, n_expert, n_embd) = (self.residency.label(), self.n_expert(), self.lookahead.n_embd());
        // a batch may have no rows in a layer: llama.cpp's last layer runs for output tokens only
        if !probs.len().is_multiple_of(n_expert) {
            crate::bail_invalid!(
                "{label}: layer {layer}: {} router probabilities are not rows of {n_expert}",
                probs.len()
            );
        }
        let n_tokens = probs.len() / n_expert;
        // the gate input only feeds guesses: a wrong one stops prefetching, not the layer
        if self.prefetch > 0 && !gate_input.is_empty() && gate_input.len() != n_tokens * n_embd {
            self.prefetch = 0;
            self.prefetch_failure = Some(Error::Invalid(format!(
                "{label}: layer {layer}: {} gate input values are not {n_tokens} whole rows of {n_embd}",
                gate_input.len()
            )));
        }
        let reads_ahead = self.prefetch > 0 && !gate_input.is_empty() && n_tokens <= PREFETCH_MAX_TOKENS;
        let pending = &mut self.pending[layer];
        pending.probs = Some(probs.to_vec());
        pending.gate_input = reads_ahead.then(|| gate_input.to_vec());
        Ok(())
    }

    /// Step 2 of layer `layer`: its picks for the batch, `n_used` per token. Every pick that is
    /// not skipped is in memory when this returns, and the next layers' guessed experts are
    /// being read. Without step 1, every pick weighs the same.
    pub fn eval_topk(&mut self, layer: usize, n_used: usize, experts: &[i32]) -> Result<()> {
        self.check_layer(layer)?;
        let (label, n_expert) = (self.residency.label(), self.n_expert());
        if n_used == 0 || !experts.len().is_multiple_of(n_used) {
            crate::bail_invalid!("{label}: layer {layer}: {} picks are not whole tokens of {n_used}", experts.len());
        }
        let n_tokens = experts.len() / n_used;
        let Pending { probs, gate_input, .. } = std::mem::take(&mut self.pending[layer]);
        if let Some(p) = probs.as_ref().filter(|p| p.len() != n_tokens * n_expert) {
            crate::bail_invalid!(
                "{label}: layer {layer}: router probabilities for {} tokens, picks for {n_tokens}",
                p.len() / n_expert
            );
        }
        if experts.iter().any(|&e| e < 0 || e as usize >= n_expert) {
            crate::bail_invalid!("{label}: layer {layer}: a pick outside 0..{n_expert}");
        }
        // each token's picks, most important first
        let th = self.thresholds[layer];
        let tokens: Vec<Vec<(u32, Need)>> = experts
            .chunks_exact(n_used)
            .enumerate()
            .map(|(t, row)| {
                let weight = |e: i32| probs.as_ref().map_or(1.0, |p| p[t * n_expert + e as usize] as f64);
                rank(row.iter().map(|&e| (e as u32, weight(e))), &th)
            })
            .collect();
        self.residency.serve(layer, &tokens)?;
        let skipped: Vec<bool> = experts.iter().map(|&e| !self.residency.is_serving(layer, e as u32)).collect();
        self.pending[layer].skipped = skipped.contains(&true).then_some(skipped);
        if let Some(x) = gate_input {
            self.read_ahead(layer, n_used, &x);
        }
        Ok(())
    }

    /// Step 3 of layer `layer`: the gate weights of its picks (`n_used` per token, in the order
    /// of step 2). Zeroes those of skipped picks in place; returns whether it changed any.
    pub fn eval_weights(&mut self, layer: usize, weights: &mut [f32]) -> Result<bool> {
        self.check_layer(layer)?;
        let Some(skipped) = self.pending[layer].skipped.take() else { return Ok(false) };
        if weights.len() != skipped.len() {
            crate::bail_invalid!(
                "{}: layer {layer}: {} gate weights for {} picks",
                self.residency.label(),
                weights.len(),
                skipped.len()
            );
        }
        for (w, _) in weights.iter_mut().zip(skipped).filter(|(_, s)| *s) {
            *w = 0.0;
        }
        Ok(true)
    }

    /// Why reading ahead stopped (once): a failed read ahead does not fail the step that
    /// started it, since the layers still read what they pick.
    pub fn take_prefetch_failure(&mut self) -> Option<Error> {
        self.prefetch_failure.take()
    }

    fn n_expert(&self) -> usize {
        self.residency.layout().n_expert
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if self.residency.layout().layers.get(layer).is_none_or(Vec::is_empty) {
            crate::bail_invalid!("{}: layer {layer} has no experts", self.residency.label());
        }
        Ok(())
    }

    /// Starts reading the experts that the routers of the next `prefetch` layers pick for the
    /// gate input `x` of layer `layer`, `n_used` per token, nearest layer first.
    fn read_ahead(&mut self, layer: usize, n_used: usize, x: &[f32]) {
        let n_embd = self.lookahead.n_embd();
        let last = (layer + self.prefetch).min(self.thresholds.len() - 1);
        let mut wanted: Vec<Key> = Vec::new();
        for target in layer + 1..=last {
            for row in x.chunks_exact(n_embd) {
                for e in self.lookahead.predict(target, row, n_used).unwrap_or_default() {
                    if !wanted.contains(&(target as u32, e)) {
                        wanted.push((target as u32, e));
                    }
                }
            }
        }
        if let Err(e) = self.residency.read_ahead(layer, &wanted) {
            self.prefetch = 0;
            self.prefetch_failure = Some(e);
        }
    }
}
