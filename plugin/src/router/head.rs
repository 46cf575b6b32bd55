//! The router's classifier head: softmax(W·x + b) over its classes (experts, optionally
//! `base`), the decision rule, and its storage as bundle metadata.

use crate::bundle::naming::check_expert_name;
use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::gguf::{Array, Metadata, Value};
use crate::switch::BASE;

pub const KEY_FEATURES: &str = "switchyard.router.features";
pub const KEY_CLASSES: &str = "switchyard.router.classes";
pub const KEY_WEIGHT: &str = "switchyard.router.weight";
pub const KEY_BIAS: &str = "switchyard.router.bias";
pub const KEY_THRESHOLD: &str = "switchyard.router.threshold";
/// Every key the router owns; replacing a router removes them all first.
pub const KEYS: &[&str] = &[KEY_FEATURES, KEY_CLASSES, KEY_WEIGHT, KEY_BIAS, KEY_THRESHOLD];
/// The embedding the head was fitted on ([`super::embedding`]); a new embedding gets a new name
/// so old heads are refused instead of misread.
pub const FEATURES_TOKEN_EMBD_MEAN_MAX: &str = "token_embd_mean_max";
/// Enough for any bundle's experts; bounds what a file's header can make us allocate.
const MAX_CLASSES: usize = 256;
const MAX_DIM: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq)]
pub struct RouterHead {
    pub classes: Vec<String>,
    pub dim: usize,
    /// Class-major: the weights of class c are `weight[c * dim..(c + 1) * dim]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// Below this confidence the base model serves.
    pub threshold: f32,
}

/// A routing decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Route<'a> {
    /// The expert to run, or "base".
    pub expert: &'a str,
    /// The head's probability of its top class (0 for an empty prompt).
    pub confidence: f32,
    /// The head's top class, also when the threshold sent the prompt to base.
    pub predicted: &'a str,
}

/// Logits to probabilities, in place (shifted by the largest logit, so none overflows). The one
/// softmax of routers: prompt routers' classes and MoE routers' experts alike.
pub fn softmax(logits: &mut [f64]) {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        sum += *l;
    }
    for l in logits.iter_mut() {
        *l /= sum;
    }
}

impl RouterHead {
    /// Class probabilities for an embedding of length `dim`.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.dim, "embedding length");
        let logits: Vec<f64> = (0..self.classes.len())
            .map(|c| {
                let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                self.bias[c] as f64 + w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
            })
            .collect();
        let mut p = logits;
        softmax(&mut p);
        p.into_iter().map(|p| p as f32).collect()
    }

    /// The decision for an embedding: the top class, unless its probability is below the
    /// threshold (the head's, or `threshold` when given) or the prompt is empty; then base.
    pub fn route(&self, x: &[f32], empty: bool, threshold: Option<f32>) -> Route<'_> {
        let probs = self.probabilities(x);
        let (top, &p) = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("at least two classes");
        let predicted = self.classes[top].as_str();
        if empty {
            return Route { expert: BASE, confidence: 0.0, predicted };
        }
        let expert = if p < threshold.unwrap_or(self.threshold) { BASE } else { predicted };
        Route { expert, confidence: p, predicted }
    }

    /// Writes the head into bundle metadata, replacing any earlier router.
    pub fn to_metadata(&self, md: &mut Metadata) {
        for key in KEYS {
            md.remove(key);
        }
        md.insert(KEY_FEATURES, FEATURES_TOKEN_EMBD_MEAN_MAX);
        md.insert(KEY_CLASSES, Value::Array(Array::String(self.classes.clone())));
        md.insert(KEY_WEIGHT, Value::Array(Array::F32(self.weight.clone())));
        md.insert(KEY_BIAS, Value::Array(Array::F32(self.bias.clone())));
        md.insert(KEY_THRESHOLD, self.threshold);
    }

    /// The head stored in `md`, None when there is none; `label` names the file in errors.
    pub fn from_metadata(md: &Metadata, label: &str) -> Result<Option<RouterHead>> {
        let Some(features) = md.opt_str(KEY_FEATURES)? else {
            if let Some(key) = KEYS.iter().find(|k| md.contains_key(k)) {
                crate::bail_invalid!("{label}: key '{key}' without '{KEY_FEATURES}'");
            }
            return Ok(None);
        };
        if features != FEATURES_TOKEN_EMBD_MEAN_MAX {
            crate::bail_unsupported!(
                "{label}: key '{KEY_FEATURES}' is '{features}'; this switchyard routes on '{FEATURES_TOKEN_EMBD_MEAN_MAX}'"
            );
        }
        let classes = md.get_str_array(KEY_CLASSES)?.to_vec();
        let floats = |key: &str| -> Result<Vec<f32>> {
            match md.get_array(key)? {
                Array::F32(v) => Ok(v.clone()),
                other => Err(Error::Invalid(format!(
                    "{label}: key '{key}' is [{}], expected [f32]",
                    other.elem_type().name()
                ))),
            }
        };
        let weight = floats(KEY_WEIGHT)?;
        let bias = floats(KEY_BIAS)?;
        let threshold = md.get_f32(KEY_THRESHOLD)?;
        let dim = if classes.is_empty() { 0 } else { weight.len() / classes.len() };
        let head = RouterHead { dim, classes, weight, bias, threshold };
        head.validate(label)?;
        Ok(Some(head))
    }

    /// The rules a stored head obeys (docs/FORMAT.md), checked on reading and before storing.
    pub fn validate(&self, label: &str) -> Result<()> {
        let classes = &self.classes;
        if !(2..=MAX_CLASSES).contains(&classes.len()) {
            crate::bail_invalid!(
                "{label}: key '{KEY_CLASSES}' has {} classes, expected 2 to {MAX_CLASSES}",
                classes.len()
            );
        }
        for (i, c) in classes.iter().enumerate() {
            if c != BASE {
                check_expert_name(c).map_err(|e| Error::Invalid(format!("{label}: key '{KEY_CLASSES}': {e}")))?;
            }
            if classes[..i].contains(c) {
                crate::bail_invalid!("{label}: key '{KEY_CLASSES}' names class '{c}' twice");
            }
        }
        let n = classes.len();
        if self.dim == 0 || self.dim > MAX_DIM || self.weight.len() != n * self.dim {
            crate::bail_invalid!(
                "{label}: key '{KEY_WEIGHT}' has {} values, not {n} rows of 1 to {MAX_DIM}",
                self.weight.len()
            );
        }
        if !self.weight.iter().all(|x| x.is_finite()) {
            crate::bail_invalid!("{label}: key '{KEY_WEIGHT}' holds a non-finite number");
        }
        if self.bias.len() != n {
            crate::bail_invalid!("{label}: key '{KEY_BIAS}' has {} values for {n} classes", self.bias.len());
        }
        if !self.bias.iter().all(|x| x.is_finite()) {
            crate::bail_invalid!("{label}: key '{KEY_BIAS}' holds a non-finite number");
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            crate::bail_invalid!("{label}: key '{KEY_THRESHOLD}' is {}, expected 0 to 1", self.threshold);
        }
        Ok(())
    }

    /// Every class must be `base` or an expert of the bundle.
    pub fn check_classes(&self, bundle: &Bundle) -> Result<()> {
        for c in self.classes.iter().filter(|c| *c != BASE) {
            bundle.expert_index(c).map_err(|e| Error::Invalid(format!("key '{KEY_CLASSES}': {e}")))?;
        }
        Ok(())
    }

    pub fn check_dim(&self, dim: usize, label: &str) -> Result<()> {
        if dim != self.dim {
            crate::bail_invalid!(
                "{label}: the router expects {}-dimensional prompt embeddings but the base model gives {dim}",
                self.dim
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> RouterHead {
        // class 0 likes the first feature, class 1 the second; base (class 2) never wins alone
        RouterHead {
            classes: vec!["math".into(), "code".into(), BASE.into()],
            dim: 2,
            weight: vec![4.0, 0.0, 0.0, 4.0, 0.0, 0.0],
            bias: vec![0.0, 0.0, -1.0],
            threshold: 0.6,
        }
    }

    #[test]
    fn routes_to_the_top_class_above_the_threshold_and_to_base_below() {
        let h = head();
        let r = h.route(&[1.0, 0.0], false, None);
        assert_eq!((r.expert, r.predicted), ("math", "math"));
        assert!(r.confidence > 0.9);
        assert_eq!(h.route(&[0.0, 1.0], false, None).expert, "code");
        // a near tie: the top class is below the threshold
        let r = h.route(&[0.5, 0.45], false, None);
        assert_eq!((r.expert, r.predicted), (BASE, "math"));
        assert_eq!(h.route(&[0.5, 0.45], false, Some(0.1)).expert, "math");
        // an empty prompt always goes to base
        let r = h.route(&[0.0, 0.0], true, Some(0.0));
        assert_eq!((r.expert, r.confidence), (BASE, 0.0));
        let p = h.probabilities(&[0.3, -0.2]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn metadata_round_trips_and_replaces_an_older_router() {
        let mut md = Metadata::new();
        md.insert("general.architecture", "llama");
        let mut h = head();
        h.to_metadata(&mut md);
        assert_eq!(RouterHead::from_metadata(&md, "b.gguf").unwrap(), Some(h.clone()));
        h.threshold = 0.25;
        h.to_metadata(&mut md);
        assert_eq!(md.len(), 1 + KEYS.len());
        assert_eq!(RouterHead::from_metadata(&md, "b.gguf").unwrap().unwrap().threshold, 0.25);
        assert_eq!(RouterHead::from_metadata(&Metadata::new(), "b.gguf").unwrap(), None);
    }

    /// The key a broken router must be blamed on, and how to break it.
    type Breakage = (&'static str, fn(&mut Metadata));

    #[test]
    fn malformed_routers_are_refused_naming_the_key() {
        let cases: Vec<Breakage> = vec![
            (KEY_WEIGHT, |md| drop(md.insert(KEY_WEIGHT, Value::Array(Array::F32(vec![1.0; 5]))))),
            (KEY_BIAS, |md| drop(md.insert(KEY_BIAS, Value::Array(Array::F32(vec![0.0; 2]))))),
            (KEY_WEIGHT, |md| drop(md.insert(KEY_WEIGHT, Value::Array(Array::F32(vec![f32::NAN; 6]))))),
            (KEY_WEIGHT, |md| drop(md.insert(KEY_WEIGHT, Value::Array(Array::U32(vec![0; 6]))))),
            (KEY_THRESHOLD, |md| drop(md.insert(KEY_THRESHOLD, 1.5f32))),
            (KEY_CLASSES, |md| drop(md.insert(KEY_CLASSES, Value::Array(Array::String(vec!["a".into(); 3]))))),
            (KEY_CLASSES, |md| {
                drop(md.insert(KEY_CLASSES, Value::Array(Array::String(vec!["x y".into(), "b".into()]))))
            }),
            (KEY_FEATURES, |md| drop(md.insert(KEY_FEATURES, "hidden_state_mean"))),
            (KEY_FEATURES, |md| drop(md.remove(KEY_FEATURES))),
            (KEY_BIAS, |md| drop(md.remove(KEY_BIAS))),
        ];
        for (key, break_it) in cases {
            let mut md = Metadata::with_label("b.gguf");
            head().to_metadata(&mut md);
            break_it(&mut md);
            let err = RouterHead::from_metadata(&md, "b.gguf").unwrap_err().to_string();
            assert!(err.contains("b.gguf") && err.contains(key), "{key}: {err}");
        }
    }
}
