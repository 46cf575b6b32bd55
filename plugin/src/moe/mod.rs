//! Mixture-of-experts pieces around llama.cpp's MoE graph: captured FFN inputs (for moefy),
//! routing traces, the expert cache's policies (HOBBIT's against LRU, LFU and Belady's optimum)
//! with their simulator, the runtime's offloaded experts with their prefetching, and `moe-pack`'s
//! low-precision copies and skipping thresholds for it.

pub mod cache;
pub mod capture;
pub mod importance;
pub mod lookahead;
pub mod offload;
pub mod pack;
pub mod sim;
pub mod trace;
