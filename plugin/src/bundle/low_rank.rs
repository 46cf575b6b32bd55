//! A delta stored as two thin matrices, D ~ B A of rank r: the graph computes B (A x), r (n_in +
//! n_out) multiply-adds per token where a dense delta costs n_in n_out, which on a CPU (where
//! decode is compute-bound) is what lets an expert decode near the base's speed.
//!
//! Both factors are stored, loaded and multiplied in [`FACTOR_TYPE`] (Q8_0), the layout ggml's
//! `mul_mat` reads as it is: A as `rank` rows of n_in values, B as n_out rows of `rank` values,
//! each with its square root of the singular values ([`crate::lowrank`]), so the two share the
//! 8-bit rounding evenly.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::build_bundle::is_linear_weight;
use crate::error::Result;
use crate::lowrank::truncated_svd;
use crate::quants;
use crate::GgmlType;

/// The factors' type: a ggml type every backend multiplies quickly, fine enough that the
/// factorisation's own error dominates.
pub const FACTOR_TYPE: GgmlType = GgmlType::Q8_0;

#[derive(Clone, Debug)]
pub struct LowRankDelta {
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// ggml shape [n_in, rank] in [`FACTOR_TYPE`].
    pub a: Vec<u8>,
    /// ggml shape [rank, n_out] in [`FACTOR_TYPE`].
    pub b: Vec<u8>,
    /// A decoded, row-major rank x n_in, on the first materialized row (each reads all of it;
    /// the graph, which multiplies by the stored factors, never needs it).
    a_values: OnceLock<Vec<f32>>,
}

impl PartialEq for LowRankDelta {
    fn eq(&self, o: &Self) -> bool {
        (self.rank, self.n_in, self.n_out, &self.a, &self.b) == (o.rank, o.n_in, o.n_out, &o.a, &o.b)
    }
}

/// Whether factors may stand for base tensor `name`'s delta (shape `ne`): a 2-D linear weight,
/// which the graph multiplies by; never an embedding lookup, a norm or a MoE stack.
pub fn may_factor(name: &str, ne: &[u64]) -> bool {
    ne.len() == 2 && is_linear_weight(name, ne)
}

/// Whether a matrix of n_out rows of n_in values is worth factoring at `rank`: the factors
/// cost at most half the multiply-adds of a dense delta, and both fit [`FACTOR_TYPE`]'s blocks.
pub fn worth_factoring(n_in: usize, n_out: usize, rank: usize) -> bool {
    let block = FACTOR_TYPE.block_size();
    rank > 0 && rank.is_multiple_of(block) && n_in.is_multiple_of(block) && 2 * rank * (n_in + n_out) <= n_in * n_out
}

/// The least share of a delta's squared norm (||D||^2) rank-r factors must keep to replace it:
/// a fine-tune's delta keeps most of it in a few dozen directions (the real math expert: 60% at
/// rank 32, 83% at 128); a delta that is mostly noise in every direction does not, and keeps
/// the codec, which stores every direction.
pub const MIN_SHARE_KEPT: f64 = 0.5;

impl LowRankDelta {
    /// Factor `d` (row-major n_out x n_in) to `rank` ([`worth_factoring`] must hold); `seed`
    /// makes the randomized SVD reproducible. `what` names the tensor in errors. Also returns
    /// the share of ||D||^2 the factors keep (before their rounding to [`FACTOR_TYPE`]).
    pub fn factor(d: &[f32], n_in: usize, n_out: usize, rank: usize, seed: u64, what: &str) -> Result<(Self, f64)> {
        if !worth_factoring(n_in, n_out, rank) {
            crate::bail_invalid!("{what}: a {n_out} x {n_in} matrix is not factored at rank {rank}");
        }
        let f = truncated_svd(d.to_vec(), n_out, n_in, rank, seed);
        // the SVD caps the rank at the smaller side, which worth_factoring keeps above `rank`
        debug_assert_eq!(f.rank, rank);
        let a = quants::quantize_par(FACTOR_TYPE, &f.a, n_in)?;
        let b = quants::quantize_par(FACTOR_TYPE, &f.b, rank)?;
        Ok((Self::from_parts(rank, n_in, n_out, a, b, what)?, f.share_kept))
    }

    /// The delta from stored factors, their sizes checked.
    pub fn from_parts(rank: usize, n_in: usize, n_out: usize, a: Vec<u8>, b: Vec<u8>, what: &str) -> Result<Self> {
        let a_bytes = FACTOR_TYPE.row_bytes(n_in as u64)? as usize * rank;
        let b_bytes = FACTOR_TYPE.row_bytes(rank as u64)? as usize * n_out;
        if a.len() != a_bytes || b.len() != b_bytes {
            crate::bail_invalid!(
                "{what}: factors of {} and {} bytes, expected {a_bytes} and {b_bytes} for rank {rank} of {n_out} x {n_in}",
                a.len(),
                b.len()
            );
        }
        Ok(LowRankDelta { rank, n_in, n_out, a, b, a_values: OnceLock::new() })
    }

    pub fn stored_bytes(&self) -> usize {
        self.a.len() + self.b.len()
    }

    pub fn bits_per_param(&self) -> f64 {
        self.stored_bytes() as f64 * 8.0 / (self.n_in * self.n_out) as f64
    }

    /// Add row `r` of B A to `row` (n_in values).
    pub fn add_row(&self, r: usize, row: &mut [f32]) {
        let rb = FACTOR_TYPE.row_bytes(self.rank as u64).expect("checked in from_parts") as usize;
        let mut coef = vec![0.0f32; self.rank];
        quants::dequantize_row(FACTOR_TYPE, &self.b[r * rb..(r + 1) * rb], &mut coef).expect("checked in from_parts");
        let a_values = self.a_values.get_or_init(|| {
            quants::dequantize_par(FACTOR_TYPE, &self.a, self.rank * self.n_in, self.n_in)
                .expect("checked in from_parts")
        });
        for (&c, a) in coef.iter().zip(a_values.chunks_exact(self.n_in)) {
            row.iter_mut().zip(a).for_each(|(w, &x)| *w += c * x);
        }
    }

    /// B A, row-major n_out x n_in.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.n_in * self.n_out];
        out.par_chunks_mut(self.n_in).enumerate().for_each(|(r, row)| self.add_row(r, row));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_rank_matrix_survives_factoring_up_to_the_factors_rounding() {
        let (n_in, n_out, true_rank) = (256, 192, 8);
        let u: Vec<f32> = (0..n_out * true_rank).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let v: Vec<f32> = (0..true_rank * n_in).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
        let mut d = vec![0.0f32; n_in * n_out];
        for r in 0..n_out {
            for k in 0..true_rank {
                for c in 0..n_in {
                    d[r * n_in + c] += 0.01 * u[r * true_rank + k] * v[k * n_in + c];
                }
            }
        }
        let (lr, share) = LowRankDelta::factor(&d, n_in, n_out, 32, 1, "t").unwrap();
        assert!(share > 0.999, "rank 8 in rank 32: all of it kept, {share}");
        let err = crate::codec::relative_error(&lr.to_f32(), &d);
        assert!(err < 0.01, "relative error {err}");
        assert!((lr.bits_per_param() - 8.5 * 32.0 * (256.0 + 192.0) / (256.0 * 192.0)).abs() < 1e-9);
        let again = LowRankDelta::from_parts(32, n_in, n_out, lr.a.clone(), lr.b.clone(), "t").unwrap();
        assert_eq!(again, lr);
    }

    #[test]
    fn noise_keeps_little_of_its_norm() {
        let (n_in, n_out) = (256, 256);
        let mut rng = crate::synth::rng(3);
        let d: Vec<f32> = (0..n_in * n_out).map(|_| rand::Rng::gen_range(&mut rng, -1.0f32..1.0)).collect();
        let (_, share) = LowRankDelta::factor(&d, n_in, n_out, 32, 1, "t").unwrap();
        // a random square matrix's top 32 of 256 directions: about a quarter of its norm
        assert!(share < MIN_SHARE_KEPT && share > 0.1, "{share}");
    }

    #[test]
    fn factors_of_the_wrong_size_are_refused_by_name() {
        let e = LowRankDelta::from_parts(32, 256, 64, vec![0; 10], vec![0; 10], "blk.0.attn_q.weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("rank 32"), "{e}");
    }

    #[test]
    fn only_matrices_the_factors_make_cheaper_are_factored() {
        assert!(worth_factoring(2048, 8192, 128));
        assert!(!worth_factoring(576, 192, 128), "k/v of SmolLM2 at rank 128: hardly cheaper");
        assert!(!worth_factoring(2048, 2048, 48), "rank not a multiple of Q8_0's 32");
        assert!(!worth_factoring(2048, 2048, 0));
    }
}
