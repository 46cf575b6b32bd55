//! `switchyard sim`: replay a routing trace against each expert cache policy and Belady's
//! optimum.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use switchyard::moe::sim::{simulate, HobbitWeights, Policy, SimConfig};
use switchyard::moe::trace::Trace;

#[derive(Args)]
pub struct SimArgs {
    /// A routing trace (JSON lines; see plugin/src/moe/trace.rs).
    trace: PathBuf,
    /// Cache size in high-precision experts (all layers together).
    #[arg(long)]
    cache: f64,
    /// HOBBIT's unimportance thresholds: above t1 a miss loads low precision, above t2 the
    /// expert is skipped; 1 and 1 load everything in high precision.
    #[arg(long, default_value_t = 1.0)]
    t1: f64,
    #[arg(long, default_value_t = 1.0)]
    t2: f64,
    /// Bytes of a low-precision expert over a high-precision one (e.g. 0.25 for int4 vs f16).
    #[arg(long, default_value_t = 0.25)]
    low_cost: f64,
    /// HOBBIT's priority weights w_lru,w_lfu,w_lhu,w_fld (summing to 1).
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.25, 0.25, 0.25])]
    hobbit_weights: Vec<f64>,
}

pub fn sim(a: SimArgs) -> Result<()> {
    let w = &a.hobbit_weights;
    if w.len() != 4 || (w.iter().sum::<f64>() - 1.0).abs() > 1e-6 || w.iter().any(|x| *x < 0.0) {
        bail!("--hobbit-weights {w:?} must be 4 non-negative numbers summing to 1");
    }
    if !(0.0..=1.0).contains(&a.t1) || !(a.t1..=1.0).contains(&a.t2) {
        bail!("--t1 {} and --t2 {} must satisfy 0 <= t1 <= t2 <= 1", a.t1, a.t2);
    }
    let cache_ok = a.cache.is_finite() && a.cache > 0.0;
    let low_ok = a.low_cost > 0.0 && a.low_cost <= 1.0;
    if !(cache_ok && low_ok) {
        bail!("--cache must be positive and --low-cost in (0, 1]");
    }
    let trace = Trace::load(&a.trace)?;
    let cfg = SimConfig { capacity: a.cache, t1: a.t1, t2: a.t2, low_cost: a.low_cost };
    let hobbit = HobbitWeights { lru: w[0], lfu: w[1], lhu: w[2], fld: w[3] };
    println!(
        "{}: {} tokens, {} layers, {} experts; cache {} experts (t1 {}, t2 {}, low cost {})",
        a.trace.display(),
        trace.tokens.len(),
        trace.n_layers,
        trace.n_experts,
        a.cache,
        a.t1,
        a.t2,
        a.low_cost
    );
    println!("policy  hit_rate  loads_high  loads_low  skipped  bytes_moved(experts)");
    for policy in [Policy::Lru, Policy::Lfu, Policy::Hobbit(hobbit), Policy::Belady] {
        let r = simulate(&trace, policy, &cfg);
        println!(
            "{:<6}  {:>8.4}  {:>10}  {:>9}  {:>7}  {:>20.2}",
            policy.name(),
            r.hit_rate(),
            r.loads_high,
            r.loads_low,
            r.skipped,
            r.bytes_moved
        );
    }
    Ok(())
}
