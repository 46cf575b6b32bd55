//! `switchyard sim`: replay a routing trace against each expert cache policy, Belady's optimum,
//! Belady's within the routes a pre-gated model knows ahead, and the best fixed set of experts.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use switchyard::moe::sim::{best_fixed_set, simulate, tune_hobbit, HobbitWeights, Policy, SimConfig};
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
    #[arg(long, default_value = "0.25,0.25,0.25,0.25")]
    hobbit_weights: String,
    /// Also tune HOBBIT's weights on this (calibration) trace, in steps of 1/8, and replay TRACE
    /// with them: the row "hobbit*" (use them with --moe-policy hobbit:W at run time).
    #[arg(long)]
    tune_on: Option<PathBuf>,
    /// The row "belady/N": Belady's knowing only the routes of the current token and N - 1 more,
    /// least recently used beyond them: what a cache could do for a model whose routes are
    /// decided before its layers run (Read-ME's pre-gating router; 1: decoding one sequence).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    known_tokens: u32,
}

pub fn sim(a: SimArgs) -> Result<()> {
    let Some(hobbit) = HobbitWeights::parse(&a.hobbit_weights) else {
        bail!("--hobbit-weights {} must be 4 non-negative numbers summing to 1", a.hobbit_weights);
    };
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
    let tuned = match &a.tune_on {
        Some(path) => {
            let (w, r) = tune_hobbit(&Trace::load(path)?, &cfg, 8);
            println!("hobbit weights tuned on {}: {w} (hit rate there {:.4})", path.display(), r.hit_rate());
            Some(w)
        }
        None => None,
    };
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
    println!("policy     hit_rate  loads_high  loads_low  skipped  bytes_moved(experts)");
    let mut rows = vec![("lru", Policy::Lru), ("lfu", Policy::Lfu), ("hobbit", Policy::Hobbit(hobbit))];
    rows.extend(tuned.map(|w| ("hobbit*", Policy::Hobbit(w))));
    let within = format!("belady/{}", a.known_tokens);
    rows.push((&within, Policy::BeladyWithin(a.known_tokens)));
    rows.push(("belady", Policy::Belady));
    let results = rows.into_iter().map(|(name, policy)| (name, simulate(&trace, policy, &cfg)));
    for (name, r) in std::iter::once(("fixed*", best_fixed_set(&trace, &cfg))).chain(results) {
        println!(
            "{:<10} {:>8.4}  {:>10}  {:>9}  {:>7}  {:>20.2}",
            name,
            r.hit_rate(),
            r.loads_high,
            r.loads_low,
            r.skipped,
            r.bytes_moved
        );
    }
    Ok(())
}
