//! Mixture-of-experts pieces that do not need a model: captured FFN inputs (for moefy), routing
//! traces, and the expert cache simulator (HOBBIT's policies against LRU, LFU and Belady's
//! optimum).

pub mod cache;
pub mod capture;
pub mod offload;
pub mod sim;
pub mod trace;
