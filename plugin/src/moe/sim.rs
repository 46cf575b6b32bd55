//! Expert cache simulation: replay a routing trace against a cache of expert slots and count
//! hits, bytes loaded and the precision of what was loaded.
//!
//! Each token visits the layers in order, and in each layer its selected experts, highest gate
//! weight first. HOBBIT's thresholds ("A Mixed Precision Expert Offloading System for Fast MoE
//! Inference", arXiv 2411.01433) decide what each pick needs ([`rank`]): top-1 and s <= t1
//! load in high precision on a miss, t1 < s <= t2 in low precision, s > t2 are skipped. A
//! low-precision pick hits either copy; a high-precision one hits only a high-precision copy and
//! otherwise replaces the low one (a high-precision load). The cache holds `capacity` high-precision experts' worth of bytes; a
//! low-precision copy costs `low_cost` of one. Experts of the layer being served are never
//! evicted to make room for each other.
//!
//! Eviction is [`ExpertCache`]'s, the same bookkeeping the runtime uses; Belady's optimum is
//! only possible here, where the whole trace is known.

use std::collections::HashMap;

use super::cache::policy::{ExpertCache, Lookup, NextUse, Use};
pub use super::cache::policy::{HobbitWeights, Policy};
use super::importance::{rank, Need, Thresholds};
use super::trace::Trace;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Cache size in high-precision experts.
    pub capacity: f64,
    /// Unimportance thresholds (t1 <= t2); t1 = t2 = 1 loads everything in high precision.
    pub t1: f64,
    pub t2: f64,
    /// Bytes of a low-precision expert over a high-precision one.
    pub low_cost: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimResult {
    /// Expert uses the trace asks for (skipped ones included).
    pub accesses: u64,
    pub hits: u64,
    pub loads_high: u64,
    pub loads_low: u64,
    pub skipped: u64,
    /// Bytes loaded, in high-precision experts.
    pub bytes_moved: f64,
}

impl SimResult {
    /// Counts a load of `cost` high-precision experts' bytes.
    fn load(&mut self, high: bool, cost: f64) {
        if high {
            self.loads_high += 1;
        } else {
            self.loads_low += 1;
        }
        self.bytes_moved += cost;
    }

    /// Hits over the uses that were served (skipped ones excluded).
    pub fn hit_rate(&self) -> f64 {
        let served = self.accesses - self.skipped;
        if served == 0 {
            0.0
        } else {
            self.hits as f64 / served as f64
        }
    }
}

/// One use of an expert, in replay order.
struct Access {
    key: (u32, u32),
    token: usize,
    seq: u64,
    layer: u32,
    high: bool,
    skip: bool,
}

/// The trace flattened into accesses, with HOBBIT's precision decision made per use.
fn accesses(trace: &Trace, cfg: &SimConfig) -> Vec<Access> {
    let mut out = Vec::new();
    for (t, tok) in trace.tokens.iter().enumerate() {
        for (l, picks) in tok.layers.iter().enumerate() {
            let th = Thresholds { t1: cfg.t1, t2: cfg.t2, beta: 0.0 };
            for (e, need) in rank(picks.iter().map(|&(e, w)| (e, w as f64)), &th) {
                let (high, skip) = (need == Need::High, need == Need::Skippable);
                out.push(Access { key: (l as u32, e), token: t, seq: tok.seq, layer: l as u32, high, skip });
            }
        }
    }
    out
}

pub fn simulate(trace: &Trace, policy: Policy, cfg: &SimConfig) -> SimResult {
    let acc = accesses(trace, cfg);
    // Belady needs each access's next use of the same key
    let mut next_use = vec![None; acc.len()];
    if matches!(policy, Policy::Belady | Policy::BeladyWithin(_)) {
        let mut seen: HashMap<(u32, u32), NextUse> = HashMap::new();
        for (i, a) in acc.iter().enumerate().rev() {
            if a.skip {
                continue;
            }
            next_use[i] = seen.get(&a.key).copied();
            seen.insert(a.key, NextUse { token: a.token as u64, order: i as u64 });
        }
    }
    let mut cache = ExpertCache::new(policy, cfg.capacity, trace.n_layers as u32);
    let mut r = SimResult::default();
    for (i, a) in acc.iter().enumerate() {
        r.accesses += 1;
        if a.skip {
            r.skipped += 1;
            continue;
        }
        let cost = if a.high { 1.0 } else { cfg.low_cost };
        let u = Use { key: a.key, token: a.token as u64, seq: a.seq, high: a.high, cost, next_use: next_use[i] };
        // the layer being served keeps its experts
        match cache.access(u, a.layer, |k, last_token| k.0 == a.layer && last_token == a.token as u64) {
            Lookup::Hit => r.hits += 1,
            Lookup::Miss { .. } => r.load(a.high, cost),
        }
    }
    r
}

/// The best fixed set of experts in hindsight: the `capacity` experts the trace uses most, each
/// loaded in high precision at its first use and never evicted; every use of another expert is a
/// load. What knowing only how often each expert is used gives: a policy that beats it exploits
/// when experts are used, as Belady's does.
pub fn best_fixed_set(trace: &Trace, cfg: &SimConfig) -> SimResult {
    let acc = accesses(trace, cfg);
    let mut uses: HashMap<(u32, u32), u64> = HashMap::new();
    for a in acc.iter().filter(|a| !a.skip) {
        *uses.entry(a.key).or_default() += 1;
    }
    let mut ranked: Vec<_> = uses.into_iter().collect();
    ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let mut fixed: HashMap<(u32, u32), bool> =
        ranked.iter().take(cfg.capacity.max(0.0) as usize).map(|(k, _)| (*k, false)).collect();
    let mut r = SimResult::default();
    for a in &acc {
        r.accesses += 1;
        if a.skip {
            r.skipped += 1;
            continue;
        }
        match fixed.get_mut(&a.key) {
            Some(loaded) if *loaded => r.hits += 1,
            Some(loaded) => {
                *loaded = true;
                r.load(true, 1.0);
            }
            None if a.high => r.load(true, 1.0),
            None => r.load(false, cfg.low_cost),
        }
    }
    r
}

/// HOBBIT's weights tuned on a trace: every point of the grid of weights in steps of
/// 1/`steps` summing to 1 is replayed, and the one with the most hits wins (ties: fewer bytes,
/// then grid order). Returns it with its result.
pub fn tune_hobbit(trace: &Trace, cfg: &SimConfig, steps: u32) -> (HobbitWeights, SimResult) {
    use rayon::prelude::*;
    let n = steps.max(1);
    let mut grid = Vec::new();
    for a in 0..=n {
        for b in 0..=n - a {
            for c in 0..=n - a - b {
                let d = n - a - b - c;
                let f = |x: u32| x as f64 / n as f64;
                grid.push(HobbitWeights { lru: f(a), lfu: f(b), lhu: f(c), fld: f(d) });
            }
        }
    }
    let results: Vec<SimResult> = grid.par_iter().map(|w| simulate(trace, Policy::Hobbit(*w), cfg)).collect();
    let best = (0..grid.len())
        .min_by(|&i, &j| {
            let (x, y) = (&results[i], &results[j]);
            y.hits.cmp(&x.hits).then(x.bytes_moved.total_cmp(&y.bytes_moved)).then(i.cmp(&j))
        })
        .expect("a non-empty grid");
    (grid[best], results[best])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::trace::TokenRoute;
    use rand::{Rng, SeedableRng};

    const ALL_HIGH: SimConfig = SimConfig { capacity: 2.0, t1: 1.0, t2: 1.0, low_cost: 0.25 };

    /// One layer, top-1 routing: the experts in `order`, one token each.
    fn single_layer(order: &[u32]) -> Trace {
        let tokens = order.iter().map(|&e| TokenRoute { seq: 0, layers: vec![vec![(e, 1.0)]] }).collect();
        Trace { n_layers: 1, n_experts: 8, tokens }
    }

    #[test]
    fn lru_and_belady_on_a_textbook_sequence() {
        // A B A C B with room for two: LRU evicts B for C and misses B again; Belady evicts A
        let t = single_layer(&[0, 1, 0, 2, 1]);
        assert_eq!(simulate(&t, Policy::Lru, &ALL_HIGH).hits, 1);
        assert_eq!(simulate(&t, Policy::Belady, &ALL_HIGH).hits, 2);
        let lfu = simulate(&t, Policy::Lfu, &ALL_HIGH);
        assert_eq!((lfu.hits, lfu.loads_high, lfu.bytes_moved), (1, 4, 4.0));
    }

    #[test]
    fn belady_within_one_token_knows_nothing_of_a_single_layer_and_falls_back_to_recency() {
        // each token has one use, so the next use is always in a later token: unknown
        let t = single_layer(&[0, 1, 0, 2, 1, 3, 0, 2, 1, 1, 3]);
        let lru = simulate(&t, Policy::Lru, &ALL_HIGH);
        assert_eq!(simulate(&t, Policy::BeladyWithin(1), &ALL_HIGH), lru);
        assert_eq!(
            simulate(&t, Policy::BeladyWithin(11), &ALL_HIGH).hits,
            simulate(&t, Policy::Belady, &ALL_HIGH).hits
        );
        // three layers, room for two: when token 1's layer 0 needs room, layers 1 and 2 hold
        // the experts token 1 uses next. Recency evicts layer 1's (used longest ago), then misses
        // it and layer 2's too; knowing token 1's routes evicts layer 2's, the later use
        let three = |a: u32| TokenRoute { seq: 0, layers: vec![vec![(a, 1.0)], vec![(0, 1.0)], vec![(0, 1.0)]] };
        let t = Trace { n_layers: 3, n_experts: 4, tokens: vec![three(0), three(1)] };
        let cfg = SimConfig { capacity: 2.0, ..ALL_HIGH };
        assert_eq!(simulate(&t, Policy::Lru, &cfg).hits, 0);
        assert_eq!(simulate(&t, Policy::BeladyWithin(1), &cfg).hits, 1);
    }

    #[test]
    fn the_best_fixed_set_keeps_the_most_used_experts() {
        // uses: 0 x3, 1 x2, 2 x1, 3 x2; room for two keeps 0 and 1 (1 before 3: ties by key)
        let t = single_layer(&[0, 1, 0, 2, 1, 3, 0, 3]);
        let r = best_fixed_set(&t, &ALL_HIGH);
        assert_eq!((r.accesses, r.hits, r.loads_high, r.bytes_moved), (8, 3, 5, 5.0));
        // a low-precision use of an expert outside the set loads its copy
        let tokens = vec![
            TokenRoute { seq: 0, layers: vec![vec![(0, 0.7), (1, 0.3)]] },
            TokenRoute { seq: 0, layers: vec![vec![(0, 0.7), (2, 0.3)]] },
        ];
        let t = Trace { n_layers: 1, n_experts: 4, tokens };
        let cfg = SimConfig { capacity: 1.0, t1: 0.6, t2: 1.0, low_cost: 0.25 };
        let r = best_fixed_set(&t, &cfg);
        assert_eq!((r.hits, r.loads_high, r.loads_low, r.bytes_moved), (1, 1, 2, 1.5));
    }

    #[test]
    fn a_cache_of_everything_misses_each_expert_once() {
        let t = single_layer(&[0, 1, 2, 0, 1, 2, 3, 3]);
        let big = SimConfig { capacity: 8.0, ..ALL_HIGH };
        for p in [Policy::Lru, Policy::Lfu, Policy::Hobbit(HobbitWeights::default()), Policy::Belady] {
            let r = simulate(&t, p, &big);
            assert_eq!((r.hits, r.loads_high), (4, 4), "{}", p.name());
        }
    }

    #[test]
    fn thresholds_pick_low_precision_and_skips() {
        // second expert: s = 0.7 (low, t1 = 0.6) in the first token, 0.95 (skipped, t2 = 0.9)
        let tokens = vec![
            TokenRoute { seq: 0, layers: vec![vec![(0, 0.7), (1, 0.3)]] },
            TokenRoute { seq: 0, layers: vec![vec![(2, 0.95), (3, 0.05)]] },
        ];
        let t = Trace { n_layers: 1, n_experts: 4, tokens };
        let cfg = SimConfig { capacity: 4.0, t1: 0.6, t2: 0.9, low_cost: 0.25 };
        let r = simulate(&t, Policy::Lru, &cfg);
        assert_eq!((r.accesses, r.loads_high, r.loads_low, r.skipped), (4, 2, 1, 1));
        assert_eq!(r.bytes_moved, 2.25);
        // expert 1 comes back as a low pick (a hit on its copy), then as top-1: the copy is
        // replaced by a high-precision load, which then serves a low pick too
        let mut tokens = t.tokens.clone();
        tokens.push(TokenRoute { seq: 0, layers: vec![vec![(2, 0.7), (1, 0.3)]] });
        tokens.push(TokenRoute { seq: 0, layers: vec![vec![(1, 1.0)]] });
        tokens.push(TokenRoute { seq: 0, layers: vec![vec![(0, 0.7), (1, 0.3)]] });
        let r = simulate(&Trace { tokens, ..t }, Policy::Lru, &cfg);
        assert_eq!((r.hits, r.loads_high, r.loads_low), (4, 3, 1));
        assert_eq!(r.bytes_moved, 3.25);
    }

    #[test]
    fn belady_is_never_beaten_on_random_traces() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for round in 0..20 {
            // skewed popularity, 4 layers of 8 experts, top-2
            let tokens = (0..200)
                .map(|_| TokenRoute {
                    seq: 0,
                    layers: (0..4)
                        .map(|_| {
                            let a = (rng.gen::<f64>().powi(3) * 8.0) as u32;
                            let b = (a + 1 + rng.gen_range(0..7)) % 8;
                            vec![(a, 0.6), (b, 0.4)]
                        })
                        .collect(),
                })
                .collect();
            let t = Trace { n_layers: 4, n_experts: 8, tokens };
            let cfg = SimConfig { capacity: 6.0 + round as f64, ..ALL_HIGH };
            let best = simulate(&t, Policy::Belady, &cfg).hits;
            let lru = simulate(&t, Policy::Lru, &cfg).hits;
            assert!(best_fixed_set(&t, &cfg).hits <= best, "round {round}");
            for p in [
                Policy::Lfu,
                Policy::Hobbit(HobbitWeights::default()),
                Policy::BeladyWithin(1),
                Policy::BeladyWithin(3),
            ] {
                let h = simulate(&t, p, &cfg).hits;
                assert!(h <= best, "{} {h} > belady {best} at capacity {}", p.name(), cfg.capacity);
            }
            // knowing every route is Belady's (for equal costs, which never-used entry goes
            // does not matter); knowing the current token's beats recency alone here
            assert_eq!(simulate(&t, Policy::BeladyWithin(200), &cfg).hits, best);
            assert!(simulate(&t, Policy::BeladyWithin(1), &cfg).hits >= lru, "round {round}");
        }
    }

    #[test]
    fn tuned_hobbit_weights_beat_every_other_point_of_the_grid() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let tokens = (0..150)
            .map(|_| TokenRoute {
                seq: 0,
                layers: (0..3).map(|_| vec![((rng.gen::<f64>().powi(2) * 6.0) as u32, 1.0)]).collect(),
            })
            .collect();
        let t = Trace { n_layers: 3, n_experts: 6, tokens };
        let cfg = SimConfig { capacity: 5.0, ..ALL_HIGH };
        let (best, r) = tune_hobbit(&t, &cfg, 4);
        assert_eq!(r, simulate(&t, Policy::Hobbit(best), &cfg), "the result of the weights returned");
        assert!((best.lru + best.lfu + best.lhu + best.fld - 1.0).abs() < 1e-9);
        for w in ["1,0,0,0", "0,1,0,0", "0,0,1,0", "0,0,0,1", "0.25,0.25,0.25,0.25", "0.5,0,0,0.5"] {
            let other = simulate(&t, Policy::Hobbit(HobbitWeights::parse(w).unwrap()), &cfg);
            assert!(other.hits <= r.hits, "{w}: {} > tuned {}", other.hits, r.hits);
        }
        assert_eq!(Policy::from_name(&format!("hobbit:{best}")), Some(Policy::Hobbit(best)));
        assert_eq!(Policy::from_name("hobbit:1,1,0,0"), None, "weights must sum to 1");
        assert_eq!(Policy::from_name("belady"), None, "needs the future");
    }

    #[test]
    fn traces_parse_and_bad_ones_name_the_line() {
        let good = "{\"switchyard_trace\": 1, \"n_layers\": 2, \"n_experts\": 4}\n\
                    {\"seq\": 0, \"layers\": [[[1, 0.2], [3, 0.8]], [[0, 1.0]]]}\n";
        let t = Trace::read(good.as_bytes(), "t.jsonl").unwrap();
        assert_eq!(t.tokens[0].layers[0], vec![(3, 0.8), (1, 0.2)], "sorted by weight");
        for (bad, what) in [
            ("{\"n_layers\": 2}\n", "t.jsonl:1"),
            ("{\"switchyard_trace\": 1, \"n_layers\": 0, \"n_experts\": 4}\n", "n_layers"),
            ("{\"switchyard_trace\": 1, \"n_layers\": 1, \"n_experts\": 4}\n{\"layers\": [[[9, 1.0]]]}\n", "t.jsonl:2"),
            ("{\"switchyard_trace\": 1, \"n_layers\": 2, \"n_experts\": 4}\n{\"layers\": [[[1, 1.0]]]}\n", "1 layers"),
        ] {
            let err = Trace::read(bad.as_bytes(), "t.jsonl").unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }
}
