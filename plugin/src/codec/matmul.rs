//! CPU reference of the GPU mixed-expert matmul (kernels/: `sy_matmul_f16` + `sy_delta_matmul`):
//! y[t] = W_base x[t] + D_e(t) x[t] for a batch whose tokens each name an expert (or none).
//! Accumulates in f64, so it is the yardstick the GPU's f32 sums are held to.

use super::{add_delta_row, CompressedDelta};

/// `base` is W_base as f32 `[n_out][n_in]`, `x` is `[n_tok][n_in]`, `experts[t]` indexes
/// `deltas` for token t (None: the base alone). Returns y `[n_tok][n_out]`.
pub fn mixed_expert_matmul(
    base: &[f32],
    deltas: &[&CompressedDelta],
    experts: &[Option<usize>],
    x: &[f32],
    n_in: usize,
    n_out: usize,
) -> Vec<f32> {
    assert_eq!(base.len(), n_in * n_out, "base shape");
    assert_eq!(x.len(), n_in * experts.len(), "input shape");
    let mut y = vec![0f32; experts.len() * n_out];
    let mut d_row = vec![0f32; n_in];
    for o in 0..n_out {
        let w = &base[o * n_in..(o + 1) * n_in];
        for (t, e) in experts.iter().enumerate() {
            let xt = &x[t * n_in..(t + 1) * n_in];
            let mut acc: f64 = w.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            if let Some(e) = *e {
                // the delta row alone: decode onto zeros
                d_row.iter_mut().for_each(|v| *v = 0.0);
                add_delta_row(deltas[e], o, &mut d_row);
                acc += d_row.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            }
            y[t * n_out + o] = acc as f32;
        }
    }
    y
}
