//! Balanced k-means over FFN channels: channels that fire together on the same tokens go to the
//! same expert (MoEfication's co-activation grouping), and every expert gets the same number of
//! channels, because llama.cpp stacks a layer's experts into one tensor.

use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};

const ITERATIONS: usize = 12;

/// Splits the columns of `profiles` (tokens × channels: how strongly each channel fires on each
/// token) into `k` groups of `ceil(n / k)` or fewer channels; returns each group's column
/// indices, ascending. Deterministic for a seed.
pub fn balanced_groups(profiles: ArrayView2<f32>, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let n = profiles.ncols();
    assert!(k >= 1 && n >= k, "{n} channels into {k} groups");
    // each channel as a unit vector of its centred profile: cosine similarity is then the
    // correlation of two channels' activity over the tokens
    let mut unit = profiles.t().to_owned();
    for mut row in unit.rows_mut() {
        let mean = row.mean().unwrap_or(0.0);
        row.mapv_inplace(|v| v - mean);
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    let mut centroids = plus_plus_seeds(&unit, k, seed);
    let capacity = n.div_ceil(k);
    let mut groups = Vec::new();
    for _ in 0..ITERATIONS {
        let similarity = unit.dot(&centroids.t()); // channels × k
        let assignment = assign_with_capacity(&similarity, capacity);
        let mut next = Array2::<f32>::zeros(centroids.raw_dim());
        for (c, &g) in assignment.iter().enumerate() {
            let mut row = next.row_mut(g);
            row += &unit.row(c);
        }
        for mut row in next.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
        let new_groups = (0..k).map(|g| (0..n).filter(|&c| assignment[c] == g).collect::<Vec<_>>()).collect();
        let settled = new_groups == groups;
        groups = new_groups;
        centroids = next;
        if settled {
            break;
        }
    }
    groups
}

/// k-means++ seeding: the first centroid at random, each next one drawn with probability
/// growing with its distance from the centroids so far.
fn plus_plus_seeds(unit: &Array2<f32>, k: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = unit.nrows();
    let mut chosen = vec![rng.gen_range(0..n)];
    let mut distance = vec![f32::INFINITY; n];
    while chosen.len() < k {
        let last = unit.row(*chosen.last().expect("one seed"));
        for (c, d) in distance.iter_mut().enumerate() {
            *d = d.min((1.0 - unit.row(c).dot(&last)).max(0.0));
        }
        let total: f32 = distance.iter().sum();
        let next = if total > 0.0 {
            let mut pick = rng.gen_range(0.0..total);
            distance.iter().position(|&d| {
                pick -= d;
                pick < 0.0
            })
        } else {
            None
        };
        // all remaining channels coincide with a centroid: take any one not chosen yet
        chosen.push(next.unwrap_or_else(|| (0..n).find(|c| !chosen.contains(c)).expect("n >= k")));
    }
    unit.select(Axis(0), &chosen)
}

/// Greedy balanced assignment: the most similar (channel, group) pairs first, a group taking
/// channels until it holds `capacity`.
fn assign_with_capacity(similarity: &Array2<f32>, capacity: usize) -> Vec<usize> {
    let (n, k) = similarity.dim();
    let mut pairs: Vec<(f32, usize, usize)> =
        similarity.indexed_iter().map(|((c, g), &s)| (if s.is_nan() { -1.0 } else { s }, c, g)).collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut assignment = vec![usize::MAX; n];
    let mut size = vec![0; k];
    for (_, c, g) in pairs {
        if assignment[c] == usize::MAX && size[g] < capacity {
            assignment[c] = g;
            size[g] += 1;
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_that_fire_together_are_grouped_in_equal_sizes() {
        // 12 channels in 3 hidden families, each family firing on its own third of 90 tokens,
        // interleaved so that contiguous splitting would be wrong
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let profiles = Array2::from_shape_fn((90, 12), |(t, c)| {
            let active = t % 3 == c % 3;
            (active as i32 as f32) * 2.0 + rng.gen_range(0.0..0.5)
        });
        let groups = balanced_groups(profiles.view(), 3, 1);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4]);
        for g in &groups {
            assert!(g.iter().all(|c| c % 3 == g[0] % 3), "{groups:?}");
        }
        assert_eq!(groups, balanced_groups(profiles.view(), 3, 1), "deterministic");
        // 10 channels into 4 groups: at most 3 each, every channel once
        let groups = balanced_groups(profiles.slice(ndarray::s![.., ..10]), 4, 2);
        assert!(groups.iter().all(|g| g.len() <= 3));
        let mut all: Vec<usize> = groups.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
