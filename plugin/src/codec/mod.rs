//! Delta codecs. A delta D = W_expert - W_base of one weight matrix (n_out rows of n_in input
//! channels, ggml layout) is stored as one [`CompressedDelta`]; the three methods differ only in
//! how they fill it, so storage, bit accounting and decompression are shared:
//!
//! - [`Method::Salient`] (ME-Switch's salient-aware mixed precision, arXiv 2406.09041): the few
//!   input channels whose quantization error, weighted by activation statistics, is largest are
//!   kept at 16 (or 8) bits; the rest are quantized to 1-4 bits with one step per group of input
//!   channels in each row, steps refined by search and closed-form least squares. With [`ErrorFeedback`] (calibration input covariances), each
//!   row's rounding errors are passed on to its later channels, GPTQ's update, so the output
//!   error is minimised rather than each channel's.
//! - [`Method::BitDelta`] ("BitDelta: Your Fine-Tune May Only Be Worth One Bit", arXiv
//!   2402.10193): sign bits and one step for the whole matrix (mean |D| init; the paper's logit
//!   distillation of the step is not done here).
//! - [`Method::Rtn`]: round-to-nearest with one step per output row and MSE-optimal clipping.

pub mod bitpack;
mod compress;
mod decompress;
mod feedback;
pub mod matmul;
pub mod quantizer;

pub use compress::{compress, compress_with_feedback};
pub use decompress::{add_codes_row, add_delta_row, decompress_f32, reconstruct_into, salient_value, Output};
pub use feedback::ErrorFeedback;

use half::f16;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Salient,
    BitDelta,
    Rtn,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Salient => "salient",
            Method::BitDelta => "bitdelta",
            Method::Rtn => "rtn",
        }
    }

    pub fn from_name(s: &str) -> Option<Method> {
        match s {
            "salient" => Some(Method::Salient),
            "bitdelta" => Some(Method::BitDelta),
            "rtn" => Some(Method::Rtn),
            _ => None,
        }
    }
}

/// What the user chooses. `group_size` 0 means one step per output row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodecParams {
    pub method: Method,
    pub bits: u8,
    pub salient_fraction: f32,
    pub salient_bits: u8,
    pub group_size: usize,
}

impl Default for CodecParams {
    /// 2 bits, 1% salient channels at 16 bits, steps per 128 input channels: about 2.27
    /// effective bits per parameter on SmolLM2-sized matrices.
    fn default() -> Self {
        CodecParams { method: Method::Salient, bits: 2, salient_fraction: 0.01, salient_bits: 16, group_size: 128 }
    }
}

impl CodecParams {
    pub fn bitdelta() -> Self {
        CodecParams { method: Method::BitDelta, bits: 1, salient_fraction: 0.0, salient_bits: 16, group_size: 0 }
    }

    pub fn rtn(bits: u8) -> Self {
        CodecParams { method: Method::Rtn, bits, salient_fraction: 0.0, salient_bits: 16, group_size: 0 }
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=4).contains(&self.bits) {
            crate::bail_invalid!("codec bits must be 1, 2, 3 or 4 (got {})", self.bits);
        }
        if !(0.0..=0.5).contains(&self.salient_fraction) || !self.salient_fraction.is_finite() {
            crate::bail_invalid!("salient fraction must be in [0, 0.5] (got {})", self.salient_fraction);
        }
        if self.salient_bits != 8 && self.salient_bits != 16 {
            crate::bail_invalid!("salient bits must be 8 or 16 (got {})", self.salient_bits);
        }
        if !self.group_size.is_multiple_of(8) {
            crate::bail_invalid!("group size must be a multiple of 8 (got {})", self.group_size);
        }
        if self.method == Method::BitDelta && self.bits != 1 {
            crate::bail_invalid!("BitDelta is a 1-bit method (got {} bits)", self.bits);
        }
        Ok(())
    }
}

/// How the steps are laid out over the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepLayout {
    /// One step for the whole matrix (BitDelta).
    Matrix,
    /// One step per run of `group` input channels in each row (`group` = n_in: per row).
    Groups { group: usize },
}

/// Salient channel values, row-major [n_out][n_salient].
#[derive(Clone, Debug, PartialEq)]
pub enum SalientValues {
    F16(Vec<f16>),
    /// int8 with one f16 step per salient channel.
    Q8 {
        values: Vec<i8>,
        steps: Vec<f16>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompressedDelta {
    pub n_in: usize,
    pub n_out: usize,
    pub bits: u8,
    pub layout: StepLayout,
    /// Packed codes, `row_code_bytes()` per row; codes of salient channels are ignored.
    pub codes: Vec<u8>,
    pub steps: Vec<f16>,
    /// Sorted, distinct input channels kept at high precision.
    pub salient_idx: Vec<u32>,
    pub salient: SalientValues,
}

impl CompressedDelta {
    pub fn row_code_bytes(&self) -> usize {
        bitpack::packed_len(self.n_in, self.bits)
    }

    pub fn groups_per_row(&self) -> usize {
        match self.layout {
            StepLayout::Matrix => 0,
            StepLayout::Groups { group } => self.n_in.div_ceil(group),
        }
    }

    /// Row `r`'s packed codes.
    pub fn packed_row(&self, r: usize) -> &[u8] {
        let rb = self.row_code_bytes();
        &self.codes[r * rb..(r + 1) * rb]
    }

    /// Row `r`'s steps and the channels each covers: channel c of the row has step
    /// `steps[c / group]`.
    pub fn row_steps(&self, r: usize) -> (usize, &[f16]) {
        match self.layout {
            StepLayout::Matrix => (self.n_in, &self.steps[..1]),
            StepLayout::Groups { group } => {
                let g = self.groups_per_row();
                (group, &self.steps[r * g..(r + 1) * g])
            }
        }
    }

    /// Stored bits, everything counted (codes, steps, salient indices and values), per delta
    /// parameter.
    pub fn bits_per_param(&self) -> f64 {
        self.stored_bytes() as f64 * 8.0 / (self.n_in * self.n_out) as f64
    }

    pub fn stored_bytes(&self) -> usize {
        let salient = match &self.salient {
            SalientValues::F16(v) => v.len() * 2,
            SalientValues::Q8 { values, steps } => values.len() + steps.len() * 2,
        };
        self.codes.len() + self.steps.len() * 2 + self.salient_idx.len() * 4 + salient
    }

    /// Check the internal sizes agree (used after reading from a file). `what` names the tensor.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("{what}: {m}")));
        if !(1..=4).contains(&self.bits) {
            return bad(format!("unsupported code width {} bits", self.bits));
        }
        if !self.n_in.is_multiple_of(8) || self.n_in == 0 || self.n_out == 0 {
            return bad(format!(
                "shape {}x{} is not supported (input width must be a positive multiple of 8)",
                self.n_out, self.n_in
            ));
        }
        if self.codes.len() != self.row_code_bytes() * self.n_out {
            return bad(format!("{} code bytes, expected {}", self.codes.len(), self.row_code_bytes() * self.n_out));
        }
        let want_steps = match self.layout {
            StepLayout::Matrix => 1,
            StepLayout::Groups { group } => {
                if group == 0 || group % 8 != 0 {
                    return bad(format!("group size {group} is not a positive multiple of 8"));
                }
                self.groups_per_row() * self.n_out
            }
        };
        if self.steps.len() != want_steps {
            return bad(format!("{} steps, expected {want_steps}", self.steps.len()));
        }
        if self.steps.iter().any(|s| !s.is_finite()) {
            return bad("a step is not finite".into());
        }
        if self.salient_idx.windows(2).any(|w| w[0] >= w[1])
            || self.salient_idx.last().is_some_and(|&c| c as usize >= self.n_in)
        {
            return bad("salient channel indices are not sorted, distinct and below the input width".into());
        }
        let n_sal = self.salient_idx.len();
        match &self.salient {
            SalientValues::F16(v) if v.len() != n_sal * self.n_out => {
                bad(format!("{} salient values, expected {}", v.len(), n_sal * self.n_out))
            }
            SalientValues::Q8 { values, steps } if values.len() != n_sal * self.n_out || steps.len() != n_sal => {
                bad(format!(
                    "{} salient values and {} steps, expected {} and {n_sal}",
                    values.len(),
                    steps.len(),
                    n_sal * self.n_out
                ))
            }
            _ => Ok(()),
        }
    }
}

/// ||a - b|| / ||b|| in f64: the relative reconstruction error every report uses.
pub fn relative_error(approx: &[f32], exact: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &e) in approx.iter().zip(exact) {
        num += ((a - e) as f64).powi(2);
        den += (e as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}
