//! The MoE cache's settings, as `--moe-cache` and its options give them: how big the cache is,
//! which eviction policy it uses, the thresholds that decide what a miss loads, and how far it
//! reads ahead.

use super::policy::Policy;
use crate::error::Result;
use crate::moe::importance::Thresholds;

/// How big the cache is: bytes, or a share of all expert bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Percent(f64),
}

impl Budget {
    /// "25%", "512M", "2G", "1073741824".
    pub fn parse(s: &str) -> Result<Budget> {
        let t = s.trim();
        let budget = if let Some(p) = t.strip_suffix('%') {
            p.trim().parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(Budget::Percent)
        } else {
            let (num, mult) = match t.chars().last() {
                Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
                Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
                Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
                _ => (t, 1),
            };
            num.trim().parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| Budget::Bytes((v * mult as f64) as u64))
        };
        match budget {
            Some(b) => Ok(b),
            None => crate::bail_invalid!("moe cache budget '{s}' is not bytes (512M, 2G) or a percentage (25%)"),
        }
    }

    /// The budget in bytes, for experts of `total` bytes in all.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// A policy a running model can use, by name ([`Policy::from_name`]).
pub fn parse_policy(name: &str) -> Result<Policy> {
    match Policy::from_name(name) {
        Some(p) => Ok(p),
        None => crate::bail_invalid!(
            "moe cache policy '{name}' is not lru, lfu, hobbit or hobbit:W (4 weights summing to 1)"
        ),
    }
}

/// Everything that sets up a MoE cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeCacheConfig {
    pub budget: Budget,
    pub policy: Policy,
    /// HOBBIT's unimportance thresholds ([`Thresholds`]): on a miss, a pick above `t1` loads
    /// the expert's low-precision copy, one above `t2` is skipped. 1 and 1 load everything in
    /// high precision.
    pub t1: f64,
    pub t2: f64,
    /// Also skip by the per-layer beta that `moe-pack --trace` stores in the file.
    pub skip_beta: bool,
    /// How many later layers to read ahead for (0: no prefetching).
    pub prefetch: usize,
}

impl MoeCacheConfig {
    /// A cache of `budget` that evicts the least recently used expert, loads every pick in
    /// high precision and does not read ahead.
    pub fn new(budget: Budget) -> MoeCacheConfig {
        let Thresholds { t1, t2, .. } = Thresholds::ALL_HIGH;
        MoeCacheConfig { budget, policy: Policy::Lru, t1, t2, skip_beta: false, prefetch: 0 }
    }

    /// Refuses thresholds outside [0, 1]; `label` names the model.
    pub fn check(&self, label: &str) -> Result<()> {
        let (t1, t2) = (self.t1, self.t2);
        if !(0.0..=1.0).contains(&t1) || !(0.0..=1.0).contains(&t2) {
            crate::bail_invalid!("{label}: the thresholds t1 and t2 must be in [0, 1] (got t1 {t1}, t2 {t2})");
        }
        Ok(())
    }
}
