//! The prompt embedding: the base model's token embedding rows pooled over the prompt, by mean
//! (L2-normalised) and by element-wise max, concatenated ("SWEM-concat": Shen et al., ACL 2018,
//! "Baseline Needs More Love"). The mean carries the overall topic; the max keeps a few
//! telling tokens (a language's name, an operator) from being averaged away by the words
//! around them.
//!
//! Deeper embeddings (the base model run with pooling) would cost a full prefill per routed
//! prompt; the token embedding table costs one row read per token and already separates
//! domains well (docs/BENCHMARKS.md, routing). Fine-tunes rarely change it, and the router
//! reads the base's rows from the bundle file, so the route does not depend on the expert in
//! place.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::quants::dequantize_row;
use crate::GgmlType;

/// llama.cpp's name for the token embedding table.
pub const TOKEN_EMBD: &str = "token_embd.weight";

pub struct TokenEmbedding {
    file: Arc<GgufFile>,
    ty: GgmlType,
    dim: usize,
    n_vocab: usize,
    row_bytes: usize,
    data_offset: usize,
}

/// The token embedding table of `file`, checked to be a matrix.
fn table(file: &GgufFile) -> Result<&crate::gguf::TensorInfo> {
    let label = file.label();
    let info = file
        .tensor(TOKEN_EMBD)
        .ok_or_else(|| Error::Invalid(format!("{label}: no tensor '{TOKEN_EMBD}' to embed prompts with")))?;
    if info.ne.len() != 2 {
        crate::bail_invalid!("{label}: tensor '{TOKEN_EMBD}' has {} dimensions, expected 2", info.ne.len());
    }
    Ok(info)
}

/// Length of the prompt embeddings `file`'s token embedding gives ([`TokenEmbedding::feature_dim`]).
pub fn feature_dim_of(file: &GgufFile) -> Result<usize> {
    Ok(2 * table(file)?.ne[0] as usize)
}

impl TokenEmbedding {
    pub fn new(file: impl Into<Arc<GgufFile>>) -> Result<TokenEmbedding> {
        let file = file.into();
        let label = file.label().to_string();
        let info = table(&file)?;
        let (dim, n_vocab) = (info.ne[0] as usize, info.ne[1] as usize);
        let row_bytes = info.ty.row_bytes(dim as u64)? as usize;
        let (ty, data) = (info.ty, file.try_tensor_data(info)?);
        let data_offset = data.as_ptr() as usize - file.bytes().as_ptr() as usize;
        // prove the type decodes before any prompt depends on it
        dequantize_row(ty, &data[..row_bytes], &mut vec![0.0; dim])
            .map_err(|e| Error::Invalid(format!("{label}: tensor '{TOKEN_EMBD}': {e}")))?;
        Ok(TokenEmbedding { file, ty, dim, n_vocab, row_bytes, data_offset })
    }

    /// Length of a token embedding row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Length of a prompt embedding ([`TokenEmbedding::features`]): mean and max.
    pub fn feature_dim(&self) -> usize {
        2 * self.dim
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn label(&self) -> &str {
        self.file.label()
    }

    /// The embedding of a token sequence; all zeros for an empty one.
    pub fn features(&self, tokens: &[i32]) -> Result<Vec<f32>> {
        let mut sum = vec![0f64; self.dim];
        let mut max = vec![f32::NEG_INFINITY; self.dim];
        let mut row = vec![0f32; self.dim];
        let bytes = self.file.bytes();
        for &t in tokens {
            let Some(t) = usize::try_from(t).ok().filter(|&t| t < self.n_vocab) else {
                crate::bail_invalid!("{}: token {t} is outside the vocabulary (0..{})", self.label(), self.n_vocab);
            };
            let start = self.data_offset + t * self.row_bytes;
            dequantize_row(self.ty, &bytes[start..start + self.row_bytes], &mut row)?;
            for ((s, m), &r) in sum.iter_mut().zip(&mut max).zip(&row) {
                *s += r as f64;
                *m = m.max(r);
            }
        }
        if tokens.is_empty() {
            return Ok(vec![0.0; self.feature_dim()]);
        }
        let norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        Ok(sum.iter().map(|s| (s * scale) as f32).chain(max).collect())
    }
}
