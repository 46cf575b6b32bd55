//! Filling a [`CompressedDelta`] from a dense delta, for each [`Method`].

use half::f16;
use rayon::prelude::*;

use super::bitpack;
use super::feedback::ErrorFeedback;
use super::quantizer::{fit_step, stored, Effort, Grid};
use super::{CodecParams, CompressedDelta, Method, SalientValues, StepLayout};
use crate::error::Result;

/// Compress `d` (n_out rows of n_in, row-major). `act` is the per-input-channel mean squared
/// activation (a llama.cpp imatrix entry): n_in values, or n_in * n_mat for n_mat stacked
/// matrices (MoE experts) whose rows follow each other. Without it every channel weighs 1.
pub fn compress(d: &[f32], n_in: usize, n_out: usize, act: Option<&[f32]>, p: &CodecParams) -> Result<CompressedDelta> {
    compress_with_feedback(d, n_in, n_out, act, None, p)
}

/// [`compress`], and with `feedback` (the salient codec only) each row's rounding errors are
/// fed forward along its channels by the input covariance ([`ErrorFeedback`]). The stored
/// layout is the same, so decoding does not know the difference.
pub fn compress_with_feedback(
    d: &[f32],
    n_in: usize,
    n_out: usize,
    act: Option<&[f32]>,
    feedback: Option<&ErrorFeedback>,
    p: &CodecParams,
) -> Result<CompressedDelta> {
    p.validate()?;
    if d.len() != n_in * n_out {
        crate::bail_invalid!("delta has {} values, expected {n_out}x{n_in}", d.len());
    }
    if n_in == 0 || !n_in.is_multiple_of(8) {
        crate::bail_unsupported!("input width {n_in} is not a positive multiple of 8");
    }
    let weights = ChannelWeights::new(act, n_in, n_out)?;
    if let Some(f) = feedback {
        if p.method != Method::Salient {
            crate::bail_unsupported!("error feedback applies to the salient codec, not {}", p.method.name());
        }
        if f.n() != n_in {
            crate::bail_invalid!("input covariance is {}x{0}, but the delta has {n_in} input channels", f.n());
        }
    }
    Ok(match p.method {
        Method::BitDelta => bitdelta(d, n_in, n_out),
        Method::Rtn => {
            let uniform = ChannelWeights::uniform(n_in);
            grouped(d, n_in, n_out, p.bits, n_in, &uniform, &[], p.salient_bits, None)
        }
        Method::Salient => {
            let group = if p.group_size == 0 { n_in } else { p.group_size.min(n_in) };
            let k = ((p.salient_fraction as f64 * n_in as f64).round() as usize).min(n_in);
            let salient = if k == 0 { Vec::new() } else { select_salient(d, n_in, n_out, p.bits, group, &weights, k) };
            match feedback {
                None => grouped(d, n_in, n_out, p.bits, group, &weights, &salient, p.salient_bits, None),
                Some(f) => {
                    let is_salient = salient_mask(&salient, n_in);
                    let (fed, steps) =
                        f.quantize(d, p.bits, group, &is_salient, |r| weights.row_without(r, &is_salient));
                    grouped(&fed, n_in, n_out, p.bits, group, &weights, &salient, p.salient_bits, Some(&steps))
                }
            }
        }
    })
}

fn salient_mask(salient: &[u32], n_in: usize) -> Vec<bool> {
    let mut mask = vec![false; n_in];
    salient.iter().for_each(|&c| mask[c as usize] = true);
    mask
}

/// Per-row channel weights: the imatrix slice of the matrix a row belongs to.
struct ChannelWeights {
    values: Vec<f32>,
    n_in: usize,
    rows_per_mat: usize,
}

impl ChannelWeights {
    fn uniform(n_in: usize) -> Self {
        ChannelWeights { values: vec![1.0; n_in], n_in, rows_per_mat: usize::MAX }
    }

    fn new(act: Option<&[f32]>, n_in: usize, n_out: usize) -> Result<Self> {
        let Some(act) = act else {
            return Ok(Self::uniform(n_in));
        };
        let n_mat = act.len() / n_in.max(1);
        if act.len() % n_in != 0 || n_mat == 0 || !n_out.is_multiple_of(n_mat) {
            crate::bail_invalid!(
                "activation statistics have {} values, which do not fit {n_out} rows of {n_in}",
                act.len()
            );
        }
        // Negative or NaN statistics would invert the ranking; clamp them to zero weight.
        let values = act.iter().map(|&v| if v.is_finite() && v > 0.0 { v } else { 0.0 }).collect();
        Ok(ChannelWeights { values, n_in, rows_per_mat: n_out / n_mat })
    }

    fn row(&self, r: usize) -> &[f32] {
        let m = r.checked_div(self.rows_per_mat).unwrap_or(0);
        &self.values[m * self.n_in..(m + 1) * self.n_in]
    }

    /// Row `r`'s weights with salient channels at 0: they neither count in the error nor set
    /// the range of the steps.
    fn row_without(&self, r: usize, is_salient: &[bool]) -> Vec<f32> {
        self.row(r).iter().zip(is_salient).map(|(&x, &s)| if s { 0.0 } else { x }).collect()
    }
}

fn bitdelta(d: &[f32], n_in: usize, n_out: usize) -> CompressedDelta {
    let mean_abs = (d.par_iter().map(|&x| x.abs() as f64).sum::<f64>() / d.len() as f64) as f32;
    let mut codes = vec![0u8; bitpack::packed_len(n_in, 1) * n_out];
    codes.par_chunks_mut(bitpack::packed_len(n_in, 1)).zip(d.par_chunks(n_in)).for_each(|(out, row)| {
        let signs: Vec<u8> = row.iter().map(|&x| (x >= 0.0) as u8).collect();
        bitpack::pack(&signs, 1, out);
    });
    CompressedDelta {
        n_in,
        n_out,
        bits: 1,
        layout: StepLayout::Matrix,
        codes,
        // Levels are ±step/2, so the step is twice the magnitude every entry gets.
        steps: vec![f16::from_f32(2.0 * mean_abs)],
        salient_idx: Vec::new(),
        salient: SalientValues::F16(Vec::new()),
    }
}

/// The k input channels with the largest activation-weighted quantization error when every
/// channel is quantized: ME-Switch's selection criterion in weight space.
fn select_salient(
    d: &[f32],
    n_in: usize,
    _n_out: usize,
    bits: u8,
    group: usize,
    w: &ChannelWeights,
    k: usize,
) -> Vec<u32> {
    let grid = Grid::new(bits);
    let errors = d
        .par_chunks(n_in)
        .enumerate()
        .fold(
            || vec![0.0f64; n_in],
            |mut acc, (r, row)| {
                let wr = w.row(r);
                for (g, (dg, wg)) in row.chunks(group).zip(wr.chunks(group)).enumerate() {
                    let step = fit_step(dg, wg, grid, Effort::QUICK).to_f32();
                    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
                    for (i, (&x, &wi)) in dg.iter().zip(wg).enumerate() {
                        let e = x - grid.level(grid.code(x, inv)) * step;
                        acc[g * group + i] += (wi * e * e) as f64;
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0.0f64; n_in],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let mut order: Vec<u32> = (0..n_in as u32).collect();
    order.sort_by(|&a, &b| errors[b as usize].total_cmp(&errors[a as usize]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// Grouped quantization of every non-salient channel, salient channels stored apart. `fitted`
/// gives the steps (n_out rows of groups) when error feedback has already chosen them and put
/// `d` on their grids; otherwise each is fitted here.
#[allow(clippy::too_many_arguments)]
fn grouped(
    d: &[f32],
    n_in: usize,
    n_out: usize,
    bits: u8,
    group: usize,
    w: &ChannelWeights,
    salient: &[u32],
    salient_bits: u8,
    fitted: Option<&[f16]>,
) -> CompressedDelta {
    let grid = Grid::new(bits);
    let row_bytes = bitpack::packed_len(n_in, bits);
    let groups = n_in.div_ceil(group);
    let is_salient = salient_mask(salient, n_in);

    let mut codes = vec![0u8; row_bytes * n_out];
    let mut steps = match fitted {
        Some(s) => s.to_vec(),
        None => vec![f16::ZERO; groups * n_out],
    };
    codes.par_chunks_mut(row_bytes).zip(steps.par_chunks_mut(groups)).enumerate().for_each(
        |(r, (code_row, step_row))| {
            let row = &d[r * n_in..(r + 1) * n_in];
            let wr = w.row_without(r, &is_salient);
            let mut q = vec![0u8; n_in];
            for (g, ((dg, wg), qg)) in row.chunks(group).zip(wr.chunks(group)).zip(q.chunks_mut(group)).enumerate() {
                let step = if fitted.is_some() { step_row[g] } else { fit_step(dg, wg, grid, Effort::FULL) };
                step_row[g] = step;
                let s = step.to_f32();
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                for (c, &x) in qg.iter_mut().zip(dg) {
                    *c = grid.code(x, inv) as u8;
                }
            }
            bitpack::pack(&q, bits, code_row);
        },
    );

    let n_sal = salient.len();
    let salient_values = match salient_bits {
        8 => {
            let steps_sal: Vec<f16> = salient
                .iter()
                .map(|&c| {
                    let m = (0..n_out).map(|r| d[r * n_in + c as usize].abs()).fold(0.0f32, f32::max);
                    f16::from_f32(m / 127.0)
                })
                .collect();
            let mut values = vec![0i8; n_sal * n_out];
            for r in 0..n_out {
                for (k, &c) in salient.iter().enumerate() {
                    let s = stored(steps_sal[k].to_f32());
                    let v = if s > 0.0 { (d[r * n_in + c as usize] / s).round().clamp(-127.0, 127.0) } else { 0.0 };
                    values[r * n_sal + k] = v as i8;
                }
            }
            SalientValues::Q8 { values, steps: steps_sal }
        }
        _ => SalientValues::F16(
            (0..n_out).flat_map(|r| salient.iter().map(move |&c| f16::from_f32(d[r * n_in + c as usize]))).collect(),
        ),
    };
    CompressedDelta {
        n_in,
        n_out,
        bits,
        layout: StepLayout::Groups { group },
        codes,
        steps,
        salient_idx: salient.to_vec(),
        salient: salient_values,
    }
}
