//! `eval`: how close each stored delta is to the exact one a reference fine-tune gives, next to
//! the two baselines computed on the same tensors in the same run.

use std::path::Path;

use rayon::prelude::*;

use crate::build_bundle::is_linear_weight;
use crate::bundle::{Bundle, TensorDelta};
use crate::codec::{self, CodecParams};
use crate::error::{Error, Result};
use crate::quants;
use crate::weights::ModelWeights;

/// Relative error and effective bits per parameter of one method on one tensor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Score {
    /// sum (approx - exact)^2, kept to total over tensors.
    pub err2: f64,
    /// sum exact^2.
    pub ref2: f64,
    pub bits: f64,
}

impl Score {
    pub fn relative(&self) -> f64 {
        if self.ref2 == 0.0 {
            0.0
        } else {
            (self.err2 / self.ref2).sqrt()
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorEval {
    pub name: String,
    pub params: usize,
    pub codec: Score,
    pub rtn: Score,
    pub bitdelta: Score,
}

#[derive(Clone, Debug)]
pub struct EvalReport {
    pub expert: String,
    pub params: CodecParams,
    pub tensors: Vec<TensorEval>,
}

impl EvalReport {
    /// (codec, rtn, bitdelta) totals over all tensors, bits weighted by parameter count.
    pub fn totals(&self) -> (Score, Score, Score) {
        let n: f64 = self.tensors.iter().map(|t| t.params as f64).sum();
        let sum = |f: &dyn Fn(&TensorEval) -> Score| {
            let mut s = Score::default();
            for t in &self.tensors {
                let x = f(t);
                s.err2 += x.err2;
                s.ref2 += x.ref2;
                s.bits += x.bits * t.params as f64 / n.max(1.0);
            }
            s
        };
        (sum(&|t| t.codec), sum(&|t| t.rtn), sum(&|t| t.bitdelta))
    }
}

fn score(approx: &[f32], exact: &[f32], bits: f64) -> Score {
    let (err2, ref2) = approx
        .par_iter()
        .zip(exact)
        .map(|(&a, &e)| (((a - e) as f64).powi(2), (e as f64).powi(2)))
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    Score { err2, ref2, bits }
}

/// Compare expert `expert`'s stored linear-weight deltas with the exact deltas of `reference`
/// (a Hugging Face folder or a GGUF file).
/// Baselines: round-to-nearest per output row at the codec's bits, and BitDelta (1 bit).
pub fn eval(bundle: &Bundle, expert: &str, reference: &Path, progress: &dyn Fn(u64, u64)) -> Result<EvalReport> {
    let e = bundle.expert_index(expert)?;
    let params = bundle.experts[e].params;
    let model = ModelWeights::open(reference)?;
    let linear: Vec<_> = bundle.base_tensors().filter(|t| is_linear_weight(&t.name, &t.ne)).collect();
    let mut tensors = Vec::new();
    for (k, t) in linear.iter().enumerate() {
        progress(k as u64, linear.len() as u64);
        let (w_ref, ne) = model.tensor(&t.name)?;
        if ne != t.ne {
            crate::bail_invalid!(
                "{}: tensor for '{}' has shape {ne:?}, the bundle's base has {:?}",
                reference.display(),
                t.name,
                t.ne
            );
        }
        let n = w_ref.len();
        let n_in = t.ne[0] as usize;
        let w_base = quants::dequantize_par(t.ty, bundle.file.try_tensor_data(t)?, n, n_in)?;
        let exact: Vec<f32> = w_ref.par_iter().zip(&w_base).map(|(r, b)| r - b).collect();
        let stored = match bundle.delta(e, &t.name)? {
            Some(TensorDelta::Codec(c)) => {
                let bits = c.bits_per_param();
                (codec::decompress_f32(&c), bits)
            }
            Some(TensorDelta::LowRank(l)) => (l.to_f32(), l.bits_per_param()),
            Some(other) => {
                crate::bail_invalid!(
                    "{}: linear tensor '{}' is stored as '{}', neither by the codec nor factored",
                    bundle.label(),
                    t.name,
                    other.kind()
                )
            }
            None => (vec![0.0; n], 0.0),
        };
        let baseline = |p: CodecParams| -> Result<Score> {
            let c = codec::compress(&exact, n_in, n / n_in, None, &p)
                .map_err(|e| Error::Invalid(format!("tensor '{}': {e}", t.name)))?;
            Ok(score(&codec::decompress_f32(&c), &exact, c.bits_per_param()))
        };
        tensors.push(TensorEval {
            name: t.name.clone(),
            params: n,
            codec: score(&stored.0, &exact, stored.1),
            rtn: baseline(CodecParams::rtn(params.bits))?,
            bitdelta: baseline(CodecParams::bitdelta())?,
        });
    }
    progress(linear.len() as u64, linear.len() as u64);
    Ok(EvalReport { expert: expert.to_string(), params, tensors })
}
