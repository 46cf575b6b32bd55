//! What a token's pick needs when it misses the cache, from its gate weight: the one rule the
//! MoE cache and the simulator share.
//!
//! Picks are ranked by gate weight. HOBBIT ("A Mixed Precision Expert Offloading System for
//! Fast MoE Inference", arXiv 2411.01433): the unimportance s of a pick is the share of the
//! token's pick weight ranked above it; the top pick and any with s <= t1 need the
//! high-precision expert, t1 < s <= t2 the low-precision copy, s > t2 may be skipped. Dynamic
//! skipping ("Not All Experts are Equal: Efficient Expert Pruning and Skipping for
//! Mixture-of-Experts Large Language Models", arXiv 2402.14800): a pick after the first whose
//! weight is below beta times the first's may be skipped too. A skippable pick costs nothing
//! only when it misses: one in memory is used.

/// HOBBIT's thresholds t1 and t2, and the layer's dynamic-skipping threshold beta (0 never
/// skips).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub t1: f64,
    pub t2: f64,
    pub beta: f64,
}

impl Thresholds {
    /// Everything in high precision, nothing skipped.
    pub const ALL_HIGH: Thresholds = Thresholds { t1: 1.0, t2: 1.0, beta: 0.0 };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Skippable,
    Low,
    High,
}

/// `picks` (expert, gate weight) of one token, ranked by weight, highest first, each with what
/// it needs.
pub fn rank(picks: impl IntoIterator<Item = (u32, f64)>, th: &Thresholds) -> Vec<(u32, Need)> {
    let mut ranked: Vec<(u32, f64)> = picks.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = ranked.iter().map(|r| r.1).sum();
    let first = ranked.first().map_or(0.0, |r| r.1);
    let mut above = 0.0;
    ranked
        .iter()
        .enumerate()
        .map(|(i, &(e, w))| {
            let s = if total > 0.0 { above / total } else { 0.0 };
            above += w;
            let need = if i == 0 {
                Need::High
            } else if s > th.t2 || w < th.beta * first {
                Need::Skippable
            } else if s <= th.t1 {
                Need::High
            } else {
                Need::Low
            };
            (e, need)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimportance_and_beta_decide_each_pick() {
        let th = Thresholds { t1: 0.6, t2: 0.9, beta: 0.0 };
        // s = 0, 0.5, 0.8, 0.95
        let picks = [(3, 0.05), (0, 0.5), (1, 0.3), (2, 0.15)];
        assert_eq!(rank(picks, &th), vec![(0, Need::High), (1, Need::High), (2, Need::Low), (3, Need::Skippable)]);
        // beta 0.5: the second pick weighs 0.3 / 0.5 of the first, the third 0.15 / 0.5
        let th = Thresholds { beta: 0.5, ..Thresholds::ALL_HIGH };
        assert_eq!(
            rank(picks, &th),
            vec![(0, Need::High), (1, Need::High), (2, Need::Skippable), (3, Need::Skippable)]
        );
        // equal weights rank by expert; the first pick is never skipped
        let th = Thresholds { t1: 0.0, t2: 0.0, beta: 2.0 };
        assert_eq!(rank([(5, 0.5), (4, 0.5)], &th), vec![(4, Need::High), (5, Need::Skippable)]);
        assert_eq!(rank([(1, 0.0), (0, 0.0)], &Thresholds::ALL_HIGH), vec![(0, Need::High), (1, Need::High)]);
    }
}
