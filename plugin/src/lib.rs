//! switchyard: one base model plus compressed fine-tuned "expert" deltas in one GGUF bundle.
//!
//! Module map:
//! - [`gguf`]: GGUF read/write (ordered metadata, ggml's size caps, atomic writes).
//! - [`ggml_type`], [`quants`]: ggml tensor types and their (de)quantization on the CPU.
//! - [`imatrix`]: llama.cpp importance-matrix files (legacy `.dat` and GGUF).
//! - [`hf`]: Hugging Face safetensors folders and the HF -> GGUF tensor mapping.
//! - [`codec`]: the salient-aware delta codec and its baselines (BitDelta, round-to-nearest).
//! - [`bundle`]: the bundle format (base GGUF + expert deltas) and its validation.
//! - [`build_bundle`]: a bundle from a base GGUF and fine-tuned experts (`switchyard pack`).
//! - [`extract`]: one expert of a bundle as a standalone GGUF (`switchyard extract`).
//! - [`lowrank`], [`lora_adapter`]: an expert's deltas factored to low rank, written as a
//!   llama.cpp LoRA adapter (`switchyard extract --lora RANK`).
//! - [`switch`]: decoding base + an expert's delta into the weights llama.cpp computes with.
//! - [`router`]: choosing the expert for a prompt (embedding, classifier head, training).
//! - [`moe`]: captured FFN inputs, routing traces of mixture-of-experts models, the expert
//!   cache's policies and simulator, the runtime that reads experts on demand, and the
//!   low-precision expert copies it can load instead (`switchyard moe-pack`).
//! - `moefy` (feature `train`): a dense model refactored into a mixture of experts.

pub mod error;
pub mod ggml_type;
pub mod gguf;
pub mod quants;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
pub mod build_bundle;
pub mod bundle;
pub mod codec;
pub mod convert;
pub mod eval;
pub mod extract;
pub mod hf;
pub mod imatrix;
pub mod lora_adapter;
pub mod lowrank;
pub mod moe;
#[cfg(feature = "train")]
pub mod moefy;
pub mod router;
pub mod switch;
pub mod synth;
pub mod weights;

// Decoded weights are written as native floats into GGUF tensors, which are little-endian.
const _: () = assert!(cfg!(target_endian = "little"), "switchyard supports little-endian hosts only");
