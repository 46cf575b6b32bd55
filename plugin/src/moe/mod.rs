//! Mixture-of-experts pieces around llama.cpp's MoE graph: captured FFN inputs (for moefy),
//! routing traces, the expert cache's policies (HOBBIT's against LRU, LFU and Belady's optimum)
//! with their simulator, and the runtime's offloaded experts with their prefetching.

pub mod cache;
pub mod capture;
pub mod lookahead;
pub mod offload;
pub mod sim;
pub mod trace;
