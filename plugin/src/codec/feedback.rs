//! Error feedback from calibration covariances, as GPTQ does it (Frantar et al., ICLR 2023,
//! arXiv 2210.17323; DeltaZip, arXiv 2312.05215, applies it to deltas): a row's channels are quantized in order, and each channel's
//! rounding error is spread over the channels not yet quantized, in proportion to how the
//! calibration inputs correlate them. What is minimised is then the row's output error
//! ||X (d - q)||^2 over calibration inputs X, not each channel's own error, which is all that a
//! diagonal importance matrix can weigh.

use half::f16;
use nalgebra::DMatrix;
use rayon::prelude::*;

use super::quantizer::{fit_step, Effort, Grid};
use crate::error::Result;

/// Dampening added to the covariance's diagonal, as a fraction of its mean: keeps the factor
/// defined when channels are dead or collinear (GPTQ's default).
pub const DAMP: f64 = 0.01;

/// The upper Cholesky factor U of the inverse of one weight's damped input covariance,
/// H^-1 = U^T U. It depends on the base's activations only, so one serves every expert.
pub struct ErrorFeedback {
    n: usize,
    u: Vec<f32>,
}

impl ErrorFeedback {
    /// From `cov`, the n x n mean of x x^T over calibration tokens (row-major, symmetric).
    pub fn new(cov: &[f32], n: usize) -> Result<ErrorFeedback> {
        if cov.len() != n * n || n == 0 {
            crate::bail_invalid!("covariance has {} values, expected {n}x{n}", cov.len());
        }
        let mean_diag = (0..n).map(|i| cov[i * n + i] as f64).sum::<f64>() / n as f64;
        if !(mean_diag.is_finite() && mean_diag > 0.0) {
            crate::bail_invalid!(
                "covariance has no positive diagonal (mean {mean_diag}): no calibration input reached it"
            );
        }
        let damp = DAMP * mean_diag;
        // H^-1 = U^T U with U upper, from one factorisation: with J the reversal permutation,
        // J H J = L L^T gives H = R R^T for the upper R = J L J, so H^-1 = (R^-1)^T R^-1 and
        // U = R^-1 = J L^-1 J.
        let rev = DMatrix::from_fn(n, n, |i, j| {
            let v = cov[(n - 1 - i) * n + (n - 1 - j)] as f64;
            if i == j {
                v + damp
            } else {
                v
            }
        });
        let Some(chol) = rev.cholesky() else {
            crate::bail_invalid!("covariance is not positive definite even after dampening");
        };
        let Some(l_inv) = chol.l().solve_lower_triangular(&DMatrix::identity(n, n)) else {
            crate::bail_invalid!("covariance factor is singular");
        };
        let mut u = vec![0.0f32; n * n];
        for i in 0..n {
            for j in i..n {
                u[i * n + j] = l_inv[(n - 1 - i, n - 1 - j)] as f32;
            }
        }
        if u.iter().any(|x| !x.is_finite()) {
            crate::bail_invalid!("covariance factor has non-finite values");
        }
        Ok(ErrorFeedback { n, u })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Quantize every row of `d` (n_out rows of n) on `bits`' grid with one step per `group`
    /// channels, each step fitted when its group is reached (to the values feedback has moved
    /// them to, weighted by `weights(row)`), skipping `salient` channels, which are stored
    /// apart and exactly: they take the errors fed to them and feed none on. Returns every
    /// value as it is to be stored (on its grid, or the salient channel's compensated value)
    /// and the steps, `n / group` rounded up per row.
    pub fn quantize(
        &self,
        d: &[f32],
        bits: u8,
        group: usize,
        salient: &[bool],
        weights: impl Fn(usize) -> Vec<f32> + Sync,
    ) -> (Vec<f32>, Vec<f16>) {
        let n = self.n;
        let grid = Grid::new(bits);
        let groups = n.div_ceil(group);
        let mut out = d.to_vec();
        let mut steps = vec![f16::ZERO; groups * (d.len() / n)];
        out.par_chunks_mut(n).zip(steps.par_chunks_mut(groups)).enumerate().for_each(|(r, (w, step_row))| {
            let wr = weights(r);
            let (mut s, mut inv) = (0.0f32, 0.0f32);
            for j in 0..n {
                if j % group == 0 {
                    let end = (j + group).min(n);
                    let step = fit_step(&w[j..end], &wr[j..end], grid, Effort::FULL);
                    step_row[j / group] = step;
                    s = step.to_f32();
                    inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                }
                if salient[j] {
                    continue;
                }
                let q = grid.level(grid.code(w[j], inv)) * s;
                let e = (w[j] - q) / self.u[j * n + j];
                w[j] = q;
                for (wk, &ujk) in w[j + 1..].iter_mut().zip(&self.u[j * n + j + 1..(j + 1) * n]) {
                    *wk -= e * ujk;
                }
            }
        });
        (out, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// U^T U must be the inverse of the damped covariance.
    #[test]
    fn factor_inverts_the_damped_covariance() {
        let n = 5;
        // a covariance of random-ish rows: X^T X / m
        let rows: Vec<[f32; 5]> = (0..9)
            .map(|k| {
                let k = k as f32;
                [k.sin(), (2.0 * k).cos(), 0.5 * k.sin() + 0.3, (k * 0.7).cos() * 2.0, 1.0 - 0.1 * k]
            })
            .collect();
        let mut cov = vec![0.0f32; n * n];
        for x in &rows {
            for i in 0..n {
                for j in 0..n {
                    cov[i * n + j] += x[i] * x[j] / rows.len() as f32;
                }
            }
        }
        let f = ErrorFeedback::new(&cov, n).unwrap();
        let mean_diag = (0..n).map(|i| cov[i * n + i] as f64).sum::<f64>() / n as f64;
        for i in 0..n {
            for j in 0..n {
                // (H + damp I) (U^T U) = I
                let mut v = 0.0f64;
                for k in 0..n {
                    let hk = cov[i * n + k] as f64 + if i == k { DAMP * mean_diag } else { 0.0 };
                    let utu: f64 = (0..n).map(|m| f.u[m * n + k] as f64 * f.u[m * n + j] as f64).sum();
                    v += hk * utu;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-3, "({i},{j}): {v}");
            }
            for j in 0..i {
                assert_eq!(f.u[i * n + j], 0.0, "U must be upper triangular");
            }
        }
    }

    #[test]
    fn a_covariance_without_signal_is_an_error() {
        assert!(ErrorFeedback::new(&[0.0; 4], 2).is_err());
        assert!(ErrorFeedback::new(&[1.0; 3], 2).is_err());
    }
}
