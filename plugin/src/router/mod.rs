//! Model-level routing: pick the expert for a prompt before it runs (the model-level router of
//! ME-Switch, "A Memory-Efficient Expert Switching Framework for Large Language Models", arXiv
//! 2406.09041, recast as domain classification).
//!
//! The prompt's embedding pools the bundle base model's token embeddings (its layer 0) over the
//! prompt's llama.cpp tokens by mean and by max, read straight from the bundle file; a
//! linear softmax head over the experts (and optionally `base`) turns it into a choice and a
//! confidence, and below the head's threshold the base model serves. Routing therefore costs a
//! table lookup per token, independent of the expert currently switched in, and never touches
//! the switched weights.
//!
//! - [`embedding`]: the prompt embedding.
//! - [`head`]: the classifier head, its decision rule and its storage in bundle metadata.
//! - [`metrics`]: accuracy, per-class precision/recall and the confusion matrix.
//! - `train` (feature `train`): fitting a head on labelled prompts.

pub mod embedding;
pub mod head;
pub mod metrics;
#[cfg(feature = "train")]
pub mod train;

use std::path::Path;

use crate::bundle::Bundle;
use crate::error::Result;
pub use embedding::TokenEmbedding;
pub use head::{Route, RouterHead};

/// A bundle's router ready to route token sequences: its head and the embedding it reads.
pub struct PromptRouter {
    pub embedding: TokenEmbedding,
    pub head: RouterHead,
}

impl PromptRouter {
    /// The router stored in the bundle at `path`; None when the bundle has none.
    pub fn open(path: &Path) -> Result<Option<PromptRouter>> {
        Self::from_bundle(&Bundle::open(path)?)
    }

    /// The router stored in `bundle`, which shares the bundle's file: the embedding rows are
    /// read from its mapping.
    pub fn from_bundle(bundle: &Bundle) -> Result<Option<PromptRouter>> {
        let Some(head) = RouterHead::from_metadata(&bundle.file.metadata, bundle.label())? else {
            return Ok(None);
        };
        check_fits(&head, bundle)?;
        Ok(Some(PromptRouter { embedding: TokenEmbedding::new(bundle.file.clone())?, head }))
    }

    /// The route for a prompt's tokens (without BOS or other special tokens). `threshold`
    /// overrides the head's own when given.
    pub fn route(&self, tokens: &[i32], threshold: Option<f32>) -> Result<Route<'_>> {
        let features = self.embedding.features(tokens)?;
        Ok(self.head.route(&features, tokens.is_empty(), threshold))
    }
}

/// Stores `head` in the bundle at `path`, replacing any router it had; the file is rewritten
/// atomically (readers see the old bundle or the new one) after the head is checked against it.
pub fn store(path: &Path, head: &RouterHead) -> Result<()> {
    let bundle = Bundle::open(path)?;
    head.validate(bundle.label())?;
    check_fits(head, &bundle)?;
    let mut md = bundle.file.metadata.clone();
    head.to_metadata(&mut md);
    crate::gguf::rewrite_with_metadata(&bundle.file, &md, path)
}

/// A head fits a bundle when its classes are the bundle's experts (or base) and it reads
/// embeddings of the length the bundle's token embedding gives.
fn check_fits(head: &RouterHead, bundle: &Bundle) -> Result<()> {
    head.check_classes(bundle)?;
    head.check_dim(embedding::feature_dim_of(&bundle.file)?, bundle.label())
}

/// One prompt per line for `llama-tokenize --stdin --lines`: the escapes llama.cpp undoes
/// (string_process_escapes) keep newlines, tabs and backslashes inside a prompt.
pub fn escape_prompt_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}
