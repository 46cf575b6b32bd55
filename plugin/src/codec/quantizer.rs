//! The scalar quantizer every codec method shares: a symmetric midrise grid with 2^bits levels
//! (q - L) * step, L = (2^bits - 1) / 2, so 1 bit gives ±step/2 (BitDelta's sign code) and
//! 2 bits give ±step/2, ±3step/2. Deltas of fine-tunes are centred on zero, which is why no
//! offset is stored.

use half::f16;

#[derive(Clone, Copy, Debug)]
pub struct Grid {
    /// L: half the number of steps between the lowest and highest level.
    pub half: f32,
    /// Highest code, 2^bits - 1.
    pub max_code: f32,
}

impl Grid {
    pub fn new(bits: u8) -> Grid {
        let max_code = ((1u32 << bits) - 1) as f32;
        Grid { half: max_code / 2.0, max_code }
    }

    /// Nearest code. Clamping first keeps the value in [0, max], where adding 0.5 and
    /// truncating rounds exactly (half up) and compiles to one conversion instruction;
    /// `f32::round` is a libm call on x86-64 without SSE4.1 and dominated packing time.
    #[inline(always)]
    pub fn code(&self, d: f32, inv_step: f32) -> f32 {
        ((d * inv_step + self.half).clamp(0.0, self.max_code) + 0.5) as i32 as f32
    }

    /// The level a code stands for, in units of the step.
    #[inline(always)]
    pub fn level(&self, code: f32) -> f32 {
        code - self.half
    }
}

/// Lanes of the explicit partial sums below: the compiler may not reorder a float sum, so
/// without them every reduction here runs one element at a time.
const LANES: usize = 8;

/// sum over elements of f(x, w), accumulated in LANES independent partial sums.
#[inline(always)]
fn lane_sum(d: &[f32], w: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (dc, wc) = (d.chunks_exact(LANES), w.chunks_exact(LANES));
    let (dr, wr) = (dc.remainder(), wc.remainder());
    for (x, y) in dc.zip(wc) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i]);
        }
    }
    let tail: f32 = dr.iter().zip(wr).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f32>() + tail
}

/// Weighted squared error of quantizing `d` with `step` (weights 0 exclude an element).
#[inline]
pub fn weighted_error(d: &[f32], w: &[f32], step: f32, grid: Grid) -> f32 {
    if step == 0.0 {
        return lane_sum(d, w, |x, wi| wi * x * x);
    }
    let inv = 1.0 / step;
    lane_sum(d, w, |x, wi| {
        let e = x - grid.level(grid.code(x, inv)) * step;
        wi * e * e
    })
}

/// Closed-form least-squares step for the codes that `step` assigns:
/// argmin_s sum w (d - c s)^2 = sum w c d / sum w c^2.
#[inline]
fn refit(d: &[f32], w: &[f32], step: f32, grid: Grid) -> f32 {
    let inv = 1.0 / step;
    let num = lane_sum(d, w, |x, wi| wi * grid.level(grid.code(x, inv)) * x);
    let den = lane_sum(d, w, |x, wi| {
        let c = grid.level(grid.code(x, inv));
        wi * c * c
    });
    if den > 0.0 {
        num / den
    } else {
        step
    }
}

/// How hard [`fit_step`] searches.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// Clip ratios tried, spread evenly over (0.05, 1].
    pub ratios: usize,
    /// Rounds of closed-form refinement at most.
    pub refits: usize,
}

impl Effort {
    /// For the stored steps: a dense clip grid (1-2 bit grids on heavy-tailed rows want
    /// aggressive clipping), then refinement.
    pub const FULL: Effort = Effort { ratios: 24, refits: 4 };
    /// For ranking channels by error before the salient ones are set aside.
    pub const QUICK: Effort = Effort { ratios: 8, refits: 0 };
}

/// The step (as stored, f16) minimising the weighted error of `d`: a search over clip ratios,
/// then alternating code assignment and the closed-form step until it stops improving.
/// Elements with weight 0 (salient channels kept elsewhere) neither count nor set the range.
pub fn fit_step(d: &[f32], w: &[f32], grid: Grid, effort: Effort) -> f16 {
    let max_abs = d.iter().zip(w).filter(|(_, &wi)| wi > 0.0).fold(0.0f32, |m, (&x, _)| m.max(x.abs()));
    if max_abs == 0.0 || !max_abs.is_finite() {
        return f16::ZERO;
    }
    let top = max_abs / grid.half;
    let mut best = (f32::INFINITY, top);
    for k in 0..effort.ratios {
        let ratio = 1.0 - k as f32 * (0.95 / (effort.ratios.max(2) - 1) as f32);
        let step = stored(top * ratio);
        let err = weighted_error(d, w, step, grid);
        if err < best.0 {
            best = (err, step);
        }
    }
    let mut step = best.1;
    for _ in 0..effort.refits {
        let next = stored(refit(d, w, step, grid));
        if next <= 0.0 || next == step {
            break;
        }
        let err = weighted_error(d, w, next, grid);
        if err >= best.0 {
            break;
        }
        best = (err, next);
        step = next;
    }
    f16::from_f32(best.1)
}

/// Round a step to the f16 it will be stored as, so codes are chosen for the stored value.
#[inline]
pub fn stored(step: f32) -> f32 {
    f16::from_f32(step).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_step_is_twice_mean_abs_for_equal_magnitudes() {
        let d = [0.5f32, -0.5, 0.5, -0.5];
        let s = fit_step(&d, &[1.0; 4], Grid::new(1), Effort::FULL).to_f32();
        assert!((s - 1.0).abs() < 1e-3, "{s}");
        assert_eq!(weighted_error(&d, &[1.0; 4], s, Grid::new(1)), 0.0);
    }

    #[test]
    fn values_on_the_grid_are_exact() {
        let d = [-0.75f32, -0.25, 0.25, 0.75];
        let s = fit_step(&d, &[1.0; 4], Grid::new(2), Effort::FULL).to_f32();
        assert!(weighted_error(&d, &[1.0; 4], s, Grid::new(2)) < 1e-9);
    }

    #[test]
    fn zero_weight_elements_do_not_set_the_range() {
        let d = [0.1f32, -0.1, 100.0];
        let s = fit_step(&d, &[1.0, 1.0, 0.0], Grid::new(1), Effort::FULL).to_f32();
        assert!((s - 0.2).abs() < 1e-3, "{s}");
    }
}
