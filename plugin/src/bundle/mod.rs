//! The bundle: one GGUF holding the base model unchanged plus every expert's compressed delta
//! tensors and metadata (docs/FORMAT.md is the specification; keep the two in step).
//!
//! - [`naming`]: reserved keys and tensor names.
//! - [`delta`]: the per-tensor delta kinds and their (de)serialisation as GGUF tensors.
//! - [`read`]: opening and validating a bundle, resolving an expert's deltas.
//! - [`write`]: writing a bundle from a base GGUF and experts' deltas.
//! - [`low_rank`]: a delta stored as two thin factor matrices.
//! - [`in_graph`]: a delta in the form the host's graph applies it (ggml types).
//! - [`fingerprint`]: the hash of the base tensors that ties deltas to their base.

pub mod delta;
pub mod fingerprint;
pub mod in_graph;
pub mod low_rank;
pub mod materialize;
pub mod naming;
pub mod read;
pub mod write;

pub use delta::TensorDelta;
pub use materialize::materialize;
pub use read::Bundle;
pub use write::{write_bundle, ExpertDeltas, ExpertInfo};
