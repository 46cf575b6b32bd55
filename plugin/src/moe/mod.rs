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
