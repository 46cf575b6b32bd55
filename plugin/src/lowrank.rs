//! Truncated SVD of a delta matrix, D ~ B A with A = sqrt(S) V^T (rank x n_in) and
//! B = U sqrt(S) (n_out x rank): the factors a low-rank product y = B (A x) multiplies by.
//!
//! Randomized (Halko, Martinsson and Tropp, "Finding structure with randomness", 2011): the
//! range of D is sampled with a Gaussian test matrix of rank + [`OVERSAMPLE`] columns, sharpened
//! by [`POWER_ITERATIONS`] passes through D^T D, and the small projected matrix is decomposed
//! exactly (nalgebra). Cost: a few products of D with a thin matrix, instead of a full SVD's
//! O(n_out n_in min(n_out, n_in)); exact when the rank asked for is D's full rank.

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Extra sampled directions beyond the rank kept.
pub const OVERSAMPLE: usize = 8;
/// Passes through D^T D: a fine-tune's spectrum decays slowly, and each pass sharpens the top.
pub const POWER_ITERATIONS: usize = 2;

/// The rank-r factors of a delta: `a` row-major rank x n_in, `b` row-major n_out x rank, the
/// singular values kept (largest first), and the share of the delta's squared norm they keep.
#[derive(Clone, Debug)]
pub struct Factors {
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub singular_values: Vec<f32>,
    pub share_kept: f64,
}

/// The best rank-`rank` factors of `d` (row-major n_out x n_in) that the randomized method
/// finds, seeded for reproducibility; `rank` is capped at min(n_out, n_in). `d` is taken by
/// value: its row-major values are D^T column-major, nalgebra's layout, so nothing is copied.
pub fn truncated_svd(d: Vec<f32>, n_out: usize, n_in: usize, rank: usize, seed: u64) -> Factors {
    assert_eq!(d.len(), n_out * n_in, "delta of {n_out} x {n_in} values");
    let total: f64 = d.par_iter().map(|&x| (x as f64).powi(2)).sum();
    let rank = rank.min(n_out).min(n_in);
    let k = (rank + OVERSAMPLE).min(n_out).min(n_in);
    let dt = DMatrix::from_vec(n_in, n_out, d); // D^T
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega = DMatrix::<f32>::from_fn(n_in, k, |_, _| StandardNormal.sample(&mut rng));
    let d_times = |m: &DMatrix<f32>| by_columns(m, |c| dt.tr_mul(c)); // D m
    let dt_times = |m: &DMatrix<f32>| by_columns(m, |c| &dt * c); // D^T m
    let mut y = d_times(&omega); // D omega, n_out x k
    for _ in 0..POWER_ITERATIONS {
        // re-orthonormalized between passes, or the small directions drown in rounding
        let z = dt_times(&y.qr().q()); // D^T Q
        y = d_times(&z.qr().q()); // D Q'
    }
    let q = y.qr().q(); // n_out x k, an orthonormal basis of D's sampled range
                        // (Q^T D)^T = D^T Q = U' S V'^T, so D ~ Q V' S U'^T: U = Q V', V = U'
    let svd = dt_times(&q).svd(true, true); // sorted, largest first
    let (v, u) = (svd.u.expect("svd computed with u"), q * svd.v_t.expect("svd computed with v_t").transpose());
    let roots: Vec<f32> = svd.singular_values.iter().take(rank).map(|s| s.max(0.0).sqrt()).collect();
    let mut a = vec![0.0f32; rank * n_in];
    let mut b = vec![0.0f32; n_out * rank];
    for (j, &root) in roots.iter().enumerate() {
        for c in 0..n_in {
            a[j * n_in + c] = v[(c, j)] * root;
        }
        for r in 0..n_out {
            b[r * rank + j] = u[(r, j)] * root;
        }
    }
    let singular_values: Vec<f32> = svd.singular_values.iter().take(rank).copied().collect();
    let kept: f64 = singular_values.iter().map(|&s| (s as f64).powi(2)).sum();
    let share_kept = if total > 0.0 { (kept / total).min(1.0) } else { 1.0 };
    Factors { rank, n_in, n_out, a, b, singular_values, share_kept }
}

/// `product` of each block of `m`'s columns, the blocks spread over rayon's threads: the
/// products with D are nearly all of the work, and each column's is independent.
fn by_columns<F>(m: &DMatrix<f32>, product: F) -> DMatrix<f32>
where
    F: Fn(&DMatrix<f32>) -> DMatrix<f32> + Sync,
{
    let n = m.ncols();
    let per = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<DMatrix<f32>> = (0..n)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|s| product(&m.columns(s, per.min(n - s)).into_owned()))
        .collect();
    let rows = parts.first().map_or(0, |p| p.nrows());
    let mut out = DMatrix::<f32>::zeros(rows, n);
    for (i, p) in parts.iter().enumerate() {
        out.columns_mut(i * per, p.ncols()).copy_from(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frobenius(x: &[f32]) -> f64 {
        x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
    }

    /// Row `r` of B A (length n_in), the delta's approximation.
    fn row(f: &Factors, r: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; f.n_in];
        for k in 0..f.rank {
            let w = f.b[r * f.rank + k];
            out.iter_mut().zip(&f.a[k * f.n_in..(k + 1) * f.n_in]).for_each(|(o, a)| *o += w * a);
        }
        out
    }

    fn residual(d: &[f32], f: &Factors) -> f64 {
        let approx: Vec<f32> = (0..f.n_out).flat_map(|r| row(f, r)).collect();
        frobenius(&d.iter().zip(&approx).map(|(a, b)| a - b).collect::<Vec<_>>())
    }

    /// n_out x n_in with singular values 1, 1/2, 1/4, ... (orthonormal factors from QR).
    fn decaying(n_out: usize, n_in: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = n_out.min(n_in);
        let u = DMatrix::<f32>::from_fn(n_out, n, |_, _| StandardNormal.sample(&mut rng)).qr().q();
        let v = DMatrix::<f32>::from_fn(n_in, n, |_, _| StandardNormal.sample(&mut rng)).qr().q();
        let s = DMatrix::<f32>::from_diagonal(&nalgebra::DVector::from_fn(n, |i, _| 0.5f32.powi(i as i32)));
        let m = u * s * v.transpose();
        (0..n_out).flat_map(|r| (0..n_in).map(move |c| (r, c))).map(|(r, c)| m[(r, c)]).collect()
    }

    #[test]
    fn an_exactly_low_rank_delta_is_recovered() {
        let (n_out, n_in) = (48, 80);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut d = vec![0.0f32; n_out * n_in];
        for _ in 0..3 {
            let u: Vec<f32> = (0..n_out).map(|_| StandardNormal.sample(&mut rng)).collect();
            let v: Vec<f32> = (0..n_in).map(|_| StandardNormal.sample(&mut rng)).collect();
            for r in 0..n_out {
                for c in 0..n_in {
                    d[r * n_in + c] += u[r] * v[c];
                }
            }
        }
        let f = truncated_svd(d.clone(), n_out, n_in, 3, 7);
        assert_eq!((f.a.len(), f.b.len()), (3 * n_in, n_out * 3));
        assert!(residual(&d, &f) < 1e-4 * frobenius(&d), "residual {}", residual(&d, &f));
    }

    #[test]
    fn truncation_keeps_the_largest_singular_values() {
        let (n_out, n_in) = (64, 40);
        let d = decaying(n_out, n_in, 2);
        for rank in [1, 4, 10] {
            let f = truncated_svd(d.clone(), n_out, n_in, rank, 3);
            // the optimal rank-r error: the singular values left out, 0.5^r, 0.5^(r+1), ...
            let best = (rank..n_in).map(|i| 0.25f64.powi(i as i32)).sum::<f64>().sqrt();
            let got = residual(&d, &f);
            assert!(got <= best * 1.01 + 1e-5, "rank {rank}: residual {got}, optimal {best}");
            assert!((f.singular_values[0] - 1.0).abs() < 1e-4, "{:?}", f.singular_values);
            assert!(f.singular_values.windows(2).all(|w| w[0] >= w[1]));
        }
        // a rank past the matrix's is capped, and exact
        let f = truncated_svd(d.clone(), n_out, n_in, 100, 3);
        assert_eq!(f.rank, n_in);
        assert!(residual(&d, &f) < 1e-4);
    }
}
