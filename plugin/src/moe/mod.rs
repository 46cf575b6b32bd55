//! Mixture-of-experts runtime pieces that do not need a model: routing traces and the expert
//! cache simulator (HOBBIT's policies against LRU, LFU and Belady's optimum).

pub mod sim;
pub mod trace;
