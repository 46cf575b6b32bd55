//! Which expert to evict. The expert cache's bookkeeping, one use at a time: which (layer,
//! expert) entries are cached, what each costs, and which to evict when room is needed. The
//! simulator (`moe::sim`) replays traces through it and the MoE cache drives it while a model
//! runs, so both use the same policies and scores. Around it they differ: the MoE cache serves a
//! batch at a time, numbers layers as the model does (dense ones included) and uses a skippable
//! pick that is in memory; the simulator goes token by token over MoE layers and skips it.
//!
//! Policies choose the victim: least recently used; least frequently used; HOBBIT's
//! multidimensional priority (recency, frequency and high-precision use within the sequence,
//! and layer distance ahead of the current layer; "A Mixed Precision Expert Offloading System
//! for Fast MoE Inference", arXiv 2411.01433); Belady's (the entry used again farthest in the
//! future), the offline yardstick, which needs each use's next use; and Belady's within a window
//! of tokens whose routes are known (LRU beyond it): what a model whose routes are decided
//! before its layers run lets a cache do (the pre-gating router of "Read-ME: Refactorizing LLMs
//! as Router-Decoupled Mixture of Experts with System Co-Design", arXiv 2410.19123).

use std::collections::HashMap;

/// (layer, expert).
pub type Key = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Lru,
    Lfu,
    Hobbit(HobbitWeights),
    Belady,
    /// Belady's with the routes of the current token and `n - 1` more known; entries not used
    /// within them are evicted first, least recently used first.
    BeladyWithin(u32),
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Hobbit(_) => "hobbit",
            Policy::Belady => "belady",
            Policy::BeladyWithin(_) => "belady-within",
        }
    }

    /// The policies a running model can use (Belady needs the future): "lru", "lfu", "hobbit"
    /// or "hobbit:w_lru,w_lfu,w_lhu,w_fld" (e.g. weights tuned by `switchyard sim --tune-on`).
    pub fn from_name(name: &str) -> Option<Policy> {
        match name.split_once(':') {
            Some(("hobbit", w)) => HobbitWeights::parse(w).map(Policy::Hobbit),
            Some(_) => None,
            None => match name {
                "lru" => Some(Policy::Lru),
                "lfu" => Some(Policy::Lfu),
                "hobbit" => Some(Policy::Hobbit(HobbitWeights::default())),
                _ => None,
            },
        }
    }
}

/// w_lru, w_lfu, w_lhu, w_fld of HOBBIT's priority; they sum to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HobbitWeights {
    pub lru: f64,
    pub lfu: f64,
    pub lhu: f64,
    pub fld: f64,
}

impl HobbitWeights {
    /// "w_lru,w_lfu,w_lhu,w_fld": four non-negative numbers summing to 1.
    pub fn parse(s: &str) -> Option<HobbitWeights> {
        let w: Vec<f64> = s.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        let ok = w.len() == 4 && w.iter().all(|x| *x >= 0.0) && (w.iter().sum::<f64>() - 1.0).abs() <= 1e-6;
        ok.then(|| HobbitWeights { lru: w[0], lfu: w[1], lhu: w[2], fld: w[3] })
    }
}

impl std::fmt::Display for HobbitWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.lru, self.lfu, self.lhu, self.fld)
    }
}

impl Default for HobbitWeights {
    fn default() -> Self {
        HobbitWeights { lru: 0.25, lfu: 0.25, lhu: 0.25, fld: 0.25 }
    }
}

/// One use of an expert.
#[derive(Clone, Copy, Debug)]
pub struct Use {
    pub key: Key,
    /// Token number (in the run) and sequence of the use.
    pub token: u64,
    pub seq: u64,
    /// Served in high precision (a miss then loads the high-precision copy).
    pub high: bool,
    /// Bytes of what a miss loads, in high-precision experts.
    pub cost: f64,
    /// Belady only: when this key is used next (None: never).
    pub next_use: Option<NextUse>,
}

/// A later use of the same key: its token, and its place in the whole replay (any monotonic
/// clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NextUse {
    pub token: u64,
    pub order: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Hit,
    /// Load the expert. `evicted` were dropped to make room; `cached` is false when it could
    /// not be kept (larger than the cache, or everything else is protected): it is used once.
    Miss {
        evicted: Vec<Key>,
        cached: bool,
    },
}

struct Entry {
    cost: f64,
    /// The high-precision copy (else the low-precision one).
    high: bool,
    /// Clock of the last use, and its token.
    last_use: u64,
    last_token: u64,
    /// Uses and high-precision uses in the current sequence.
    uses: u64,
    high_uses: u64,
    seq: u64,
    next_use: Option<NextUse>,
}

/// Above every clock and replay position (f64 counts exactly up to 2^53).
const KNOWN: f64 = (1u64 << 53) as f64;

pub struct ExpertCache {
    policy: Policy,
    capacity: f64,
    n_layers: u32,
    used: f64,
    clock: u64,
    entries: HashMap<Key, Entry>,
}

impl ExpertCache {
    /// A cache of `capacity` high-precision experts' worth of bytes over `n_layers` layers.
    pub fn new(policy: Policy, capacity: f64, n_layers: u32) -> ExpertCache {
        ExpertCache { policy, capacity, n_layers: n_layers.max(1), used: 0.0, clock: 0, entries: HashMap::new() }
    }

    /// Forgets `key` (a load that failed).
    pub fn remove(&mut self, key: Key) {
        if let Some(e) = self.entries.remove(&key) {
            self.used -= e.cost;
        }
    }

    pub fn contains(&self, key: Key) -> bool {
        self.entries.contains_key(&key)
    }

    /// Bytes cached, in high-precision experts.
    pub fn used(&self) -> f64 {
        self.used
    }

    /// Whether `key` is cached in high precision (None: not cached).
    pub fn is_high(&self, key: Key) -> Option<bool> {
        self.entries.get(&key).map(|e| e.high)
    }

    /// Records one use. `protected` says which cached entries must not be evicted to make room
    /// (given the key and the token of its last use): the experts the current layer is serving.
    /// A high-precision use of a low-precision entry is a miss that replaces it (its records
    /// kept).
    pub fn access(&mut self, u: Use, layer: u32, protected: impl Fn(Key, u64) -> bool) -> Lookup {
        self.clock += 1;
        let clock = self.clock;
        let mut records = (0, 0);
        if let Some(e) = self.entries.get_mut(&u.key) {
            if e.seq != u.seq {
                (e.uses, e.high_uses, e.seq) = (0, 0, u.seq);
            }
            if e.high || !u.high {
                e.last_use = clock;
                e.last_token = u.token;
                e.uses += 1;
                e.high_uses += u.high as u64;
                e.next_use = u.next_use;
                return Lookup::Hit;
            }
            records = (e.uses, e.high_uses);
            self.remove(u.key);
        }
        let lookup = self.insert(u, layer, protected, 1);
        if let Some(e) = self.entries.get_mut(&u.key) {
            e.uses += records.0;
            e.high_uses += records.1;
        }
        lookup
    }

    /// Makes room for `u.key` ahead of its use (a prefetch) and caches it without counting a
    /// use: the use is counted when it comes. A key already cached is left as it is (`Hit`).
    pub fn admit(&mut self, u: Use, layer: u32, protected: impl Fn(Key, u64) -> bool) -> Lookup {
        self.clock += 1;
        if self.entries.contains_key(&u.key) {
            return Lookup::Hit;
        }
        self.insert(u, layer, protected, 0)
    }

    /// Evicts until `u` fits, then caches it with `uses` uses (when it fits at all).
    fn insert(&mut self, u: Use, layer: u32, protected: impl Fn(Key, u64) -> bool, uses: u64) -> Lookup {
        let mut evicted = Vec::new();
        if u.cost > self.capacity {
            return Lookup::Miss { evicted, cached: false };
        }
        while self.used + u.cost > self.capacity + 1e-9 {
            let victim = self
                .entries
                .iter()
                .filter(|(k, e)| !protected(**k, e.last_token))
                .min_by(|x, y| {
                    let (a, b) = (self.keep_score(*x.0, x.1, &u, layer), self.keep_score(*y.0, y.1, &u, layer));
                    // ties by key: the map's iteration order changes from run to run
                    a.total_cmp(&b).then(x.0.cmp(y.0))
                })
                .map(|(k, _)| *k);
            let Some(v) = victim else { break };
            self.used -= self.entries.remove(&v).expect("victim is cached").cost;
            evicted.push(v);
        }
        let cached = self.used + u.cost <= self.capacity + 1e-9;
        if cached {
            self.used += u.cost;
            let entry = Entry {
                cost: u.cost,
                high: u.high,
                last_use: self.clock,
                last_token: u.token,
                uses,
                high_uses: uses * u.high as u64,
                seq: u.seq,
                next_use: u.next_use,
            };
            self.entries.insert(u.key, entry);
        }
        Lookup::Miss { evicted, cached }
    }

    /// How much the policy wants to keep `e`; the lowest is evicted.
    fn keep_score(&self, k: Key, e: &Entry, u: &Use, layer: u32) -> f64 {
        match self.policy {
            Policy::Lru => e.last_use as f64,
            Policy::Lfu => e.uses as f64 + e.last_use as f64 / (self.clock as f64 + 1.0),
            Policy::Belady => -(e.next_use.map_or(u64::MAX, |n| n.order) as f64),
            Policy::BeladyWithin(n) => match e.next_use {
                // above any clock: known uses outrank the unknown, the sooner the higher
                Some(next) if next.token < u.token + n as u64 => KNOWN - next.order as f64,
                _ => e.last_use as f64,
            },
            Policy::Hobbit(w) => {
                let t = (u.token + 1) as f64;
                let (f, h) = if e.seq == u.seq { (e.uses as f64, e.high_uses as f64) } else { (0.0, 0.0) };
                let n = self.n_layers as f64;
                let ahead = ((k.0 as f64 - layer as f64 + n) % n) / n;
                w.lru * (e.last_token + 1) as f64 / t + w.lfu * f / t + w.lhu * h / t + w.fld * (1.0 - ahead)
            }
        }
    }
}
