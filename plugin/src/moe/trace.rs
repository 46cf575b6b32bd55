//! Routing traces: which experts each token's router picked in each MoE layer, with their gate
//! weights. JSON lines: a header `{"switchyard_trace": 1, "n_layers": L, "n_experts": E}`, then
//! one line per token, `{"seq": S, "layers": [[[expert, weight], ...], ...]}` with one list per
//! layer (the token's top-k, any order). `seq` numbers the sequences (per-sequence cache
//! records reset when it changes).

use std::io::BufRead;
use std::path::Path;

use crate::error::{Error, Result};

/// Bounds a trace's header may ask for: generous for real MoE models, and they bound what a
/// file can make us allocate.
const MAX_LAYERS: usize = 1024;
const MAX_EXPERTS: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub n_layers: usize,
    pub n_experts: usize,
    pub tokens: Vec<TokenRoute>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenRoute {
    pub seq: u64,
    /// Per layer, the selected experts with their gate weights, highest weight first.
    pub layers: Vec<Vec<(u32, f32)>>,
}

impl Trace {
    pub fn load(path: &Path) -> Result<Trace> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::read(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// Parses a trace; `label` names the source in errors (with the line number).
    pub fn read(reader: impl BufRead, label: &str) -> Result<Trace> {
        let mut lines = reader.lines().enumerate();
        let bad = |n: usize, m: String| Error::Invalid(format!("{label}:{}: {m}", n + 1));
        let (n0, header) = lines.next().ok_or_else(|| Error::Invalid(format!("{label}: empty trace")))?;
        let header = header.map_err(|e| bad(n0, e.to_string()))?;
        let h: serde_json::Value = serde_json::from_str(&header).map_err(|e| bad(n0, format!("header: {e}")))?;
        if h.get("switchyard_trace").and_then(|v| v.as_u64()) != Some(1) {
            return Err(bad(n0, "not a switchyard trace (no \"switchyard_trace\": 1)".into()));
        }
        let field = |k: &str, max: usize| -> Result<usize> {
            match h.get(k).and_then(|v| v.as_u64()) {
                Some(v) if (1..=max as u64).contains(&v) => Ok(v as usize),
                _ => Err(bad(n0, format!("\"{k}\" must be 1 to {max}"))),
            }
        };
        let (n_layers, n_experts) = (field("n_layers", MAX_LAYERS)?, field("n_experts", MAX_EXPERTS)?);
        let mut tokens = Vec::new();
        for (n, line) in lines {
            let line = line.map_err(|e| bad(n, e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
            let seq = v.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
            let layers =
                v.get("layers").and_then(|l| l.as_array()).ok_or_else(|| bad(n, "no \"layers\" list".into()))?;
            if layers.len() != n_layers {
                return Err(bad(n, format!("{} layers, the header says {n_layers}", layers.len())));
            }
            let mut routes = Vec::with_capacity(n_layers);
            for (l, picks) in layers.iter().enumerate() {
                let picks = picks.as_array().ok_or_else(|| bad(n, format!("layer {l} is not a list")))?;
                let mut route = Vec::with_capacity(picks.len());
                for p in picks {
                    let pair = p.as_array().filter(|a| a.len() == 2);
                    let e = pair.and_then(|a| a[0].as_u64()).filter(|&e| (e as usize) < n_experts);
                    let w = pair.and_then(|a| a[1].as_f64()).filter(|w| w.is_finite() && *w >= 0.0);
                    let (Some(e), Some(w)) = (e, w) else {
                        return Err(bad(n, format!("layer {l}: {p} is not [expert < {n_experts}, weight >= 0]")));
                    };
                    route.push((e as u32, w as f32));
                }
                route.sort_by(|a, b| b.1.total_cmp(&a.1));
                routes.push(route);
            }
            tokens.push(TokenRoute { seq, layers: routes });
        }
        Ok(Trace { n_layers, n_experts, tokens })
    }
}
