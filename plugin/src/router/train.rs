//! Fitting a router head: multinomial logistic regression (linfa-logistic, L-BFGS with an L2
//! penalty) on standardised embeddings; the standardisation is folded into the stored weights,
//! so applying the head needs no statistics of the training set.

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};

use super::head::RouterHead;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// L2 penalty of the logistic regression (on standardised features).
    pub alpha: f64,
    pub max_iterations: u64,
    /// Stored with the head: below this confidence the base model serves.
    pub threshold: f32,
    /// Fit a bias per class. Without one (a MoE router in llama.cpp has none) the features are
    /// only scaled, not centred, so the head stays a plain matrix.
    pub intercept: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { alpha: 10.0, max_iterations: 200, threshold: 0.5, intercept: true }
    }
}

/// Fits a head on embeddings `x` (one per prompt) with labels indexing `classes`.
pub fn fit(x: &[Vec<f32>], labels: &[usize], classes: Vec<String>, opts: &TrainOptions) -> Result<RouterHead> {
    let dim = x.first().map_or(0, |r| r.len());
    if x.len() != labels.len() || dim == 0 || x.iter().any(|r| r.len() != dim) {
        crate::bail_invalid!(
            "router training: {} embeddings of unequal or zero length for {} labels",
            x.len(),
            labels.len()
        );
    }
    for (c, name) in classes.iter().enumerate() {
        if !labels.contains(&c) {
            crate::bail_invalid!("router training: no example of class '{name}'");
        }
    }
    let n = x.len();
    let mut mean = vec![0f64; dim];
    let mut var = vec![0f64; dim];
    for row in x {
        row.iter().zip(&mut mean).for_each(|(&v, m)| *m += v as f64 / n as f64);
    }
    for row in x {
        row.iter().zip(&mean).zip(&mut var).for_each(|((&v, m), s)| *s += (v as f64 - m).powi(2) / n as f64);
    }
    if !opts.intercept {
        mean.fill(0.0);
    }
    // a constant feature carries nothing; dividing by 1 keeps it harmless
    let std: Vec<f64> = var.iter().map(|v| if *v > 1e-12 { v.sqrt() } else { 1.0 }).collect();
    let records = Array2::from_shape_fn((n, dim), |(i, j)| (x[i][j] as f64 - mean[j]) / std[j]);
    let targets = Array1::from_iter(labels.iter().copied());
    let dataset = Dataset::new(records, targets);
    let model = MultiLogisticRegression::default()
        .alpha(opts.alpha)
        .max_iterations(opts.max_iterations)
        .with_intercept(opts.intercept)
        .fit(&dataset)
        .map_err(|e| Error::Invalid(format!("router training: {e}")))?;

    // linfa orders its columns by sorted label; map them back to our classes
    let (params, intercept) = (model.params(), model.intercept());
    let mut weight = vec![0f32; classes.len() * dim];
    let mut bias = vec![0f32; classes.len()];
    for (col, &c) in model.classes().iter().enumerate() {
        let mut b = intercept[col];
        for j in 0..dim {
            let w = params[[j, col]] / std[j];
            weight[c * dim + j] = w as f32;
            b -= w * mean[j];
        }
        bias[c] = b as f32;
    }
    Ok(RouterHead { classes, dim, weight, bias, threshold: opts.threshold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Three noisy clusters in 8 dimensions, with feature scales a thousand times apart (which
    /// the standardisation must absorb).
    fn clusters(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let scale = [1.0, 1e-3, 1e3, 1.0, 1.0, 10.0, 0.1, 1.0];
        (0..n)
            .map(|i| {
                let c = i % 3;
                let x = (0..8).map(|j| ((j == c) as i32 as f32 * 2.0 + rng.gen_range(-0.7..0.7)) * scale[j]).collect();
                (x, c)
            })
            .unzip()
    }

    #[test]
    fn fits_separable_classes_and_folds_the_standardisation_into_the_weights() {
        let (x, y) = clusters(300, 1);
        let classes: Vec<String> = ["math", "code", "chat"].map(String::from).to_vec();
        let head = fit(&x, &y, classes, &TrainOptions { alpha: 0.1, ..TrainOptions::default() }).unwrap();
        let (x_test, y_test) = clusters(300, 2);
        let right = x_test
            .iter()
            .zip(&y_test)
            .filter(|(x, &y)| head.route(x, false, Some(0.0)).expert == head.classes[y])
            .count();
        assert!(right >= 295, "{right}/300 held-out points classified right");
    }

    #[test]
    fn refuses_a_class_without_examples_and_ragged_input() {
        let (x, y) = clusters(30, 1);
        let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let err = fit(&x, &y, four, &TrainOptions::default()).unwrap_err().to_string();
        assert!(err.contains("no example of class 'd'"), "{err}");
        let mut ragged = x.clone();
        ragged[3].pop();
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert!(fit(&ragged, &y, three, &TrainOptions::default()).is_err());
    }
}
