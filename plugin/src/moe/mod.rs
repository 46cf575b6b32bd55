//! Mixture-of-experts pieces around llama.cpp's MoE graph: captured FFN inputs (for moefy),
//! routing traces, the MoE cache that reads experts on demand while a model runs (`--moe-cache`)
//! with its eviction policies (HOBBIT's against LRU, LFU and Belady's optimum), the simulator
//! that replays traces through those policies, `moe-pack`'s low-precision copies and skipping
//! thresholds for the cache, and `moe-prune`'s expert pruning.

pub mod cache;
pub mod capture;
pub mod importance;
pub mod low_precision;
#[cfg(feature = "train")]
pub mod prune;
pub mod sim;
pub mod trace;

use crate::error::Result;
use crate::gguf::GgufFile;

/// The number of layers and of experts per layer of a mixture-of-experts GGUF (its
/// architecture's block_count and expert_count). A model without experts is refused, the
/// message saying what there is then nothing `to` do.
pub fn moe_shape(gguf: &GgufFile, to: &str) -> Result<(usize, usize)> {
    let arch = gguf.metadata.get_str("general.architecture")?;
    let n_layer = gguf.metadata.get_u32(&format!("{arch}.block_count"))? as usize;
    let n_expert = gguf.metadata.opt_u32(&format!("{arch}.expert_count"))?.unwrap_or(0) as usize;
    if n_expert == 0 {
        crate::bail_invalid!("{}: not a mixture of experts ({arch}.expert_count): nothing to {to}", gguf.label());
    }
    Ok((n_layer, n_expert))
}
