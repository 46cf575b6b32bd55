//! Routing traces: which experts each token's router picked in each MoE layer, with their gate
//! weights. JSON lines: a header `{"switchyard_trace": 1, "n_layers": L, "n_experts": E}`, then
//! one line per token, `{"seq": S, "layers": [[[expert, weight], ...], ...]}` with one list per
//! layer (the token's top-k, any order). `seq` numbers the sequences (per-sequence cache
//! records reset when it changes).

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

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

/// One token's experts in one layer with their gate weights.
type Picks = Vec<(u32, f32)>;

/// Writes a trace while a model runs: the runtime hands over each MoE layer's top-k of a batch
/// of tokens as the layer is computed; once every layer of the batch is in, one line per token
/// is written. Batches arrive in order, so the lines follow the order tokens were evaluated.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    n_experts: usize,
    /// The batch being assembled: per layer, per token, its picks.
    batch: Vec<Option<Vec<Picks>>>,
    n_tokens: usize,
}

impl TraceWriter {
    pub fn create(path: &Path, n_layers: usize, n_experts: usize) -> Result<TraceWriter> {
        if !(1..=MAX_LAYERS).contains(&n_layers) || !(1..=MAX_EXPERTS).contains(&n_experts) {
            crate::bail_invalid!("{}: a trace needs 1 to {MAX_LAYERS} layers and 1 to {MAX_EXPERTS} experts (got {n_layers}, {n_experts})", path.display());
        }
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::new(file);
        let header = serde_json::json!({"switchyard_trace": 1, "n_layers": n_layers, "n_experts": n_experts});
        writeln!(out, "{header}").map_err(|e| Error::io(path, e))?;
        Ok(TraceWriter { path: path.to_path_buf(), out, n_experts, batch: vec![None; n_layers], n_tokens: 0 })
    }

    /// One layer of one batch: `experts` and `weights` hold `n_used` picks per token, token after
    /// token. `rows`, when given, says which of the batch's tokens those are: llama.cpp computes
    /// its last layer only for the tokens whose logits were asked for (a prompt's last token,
    /// perplexity's scored half); the others get no route in that layer. The picks are stored
    /// highest weight first.
    pub fn layer(
        &mut self,
        layer: usize,
        n_used: usize,
        experts: &[i32],
        weights: &[f32],
        rows: Option<&[i32]>,
    ) -> Result<()> {
        let n_layers = self.batch.len();
        if layer >= n_layers || n_used == 0 || experts.len() != weights.len() || !experts.len().is_multiple_of(n_used) {
            crate::bail_invalid!(
                "{}: layer {layer} of {n_layers}: {} picks, {} weights, {n_used} per token",
                self.path.display(),
                experts.len(),
                weights.len()
            );
        }
        let n_tokens = experts.len() / n_used;
        if self.batch[layer].is_some() {
            crate::bail_invalid!("{}: layer {layer} recorded twice in one batch", self.path.display());
        }
        if let Some(rows) = rows {
            if rows.len() != n_tokens {
                crate::bail_invalid!(
                    "{}: layer {layer}: {} rows for {n_tokens} tokens",
                    self.path.display(),
                    rows.len()
                );
            }
        }
        let started = self.batch.iter().any(Option::is_some);
        let batch_tokens = match (started, rows) {
            (true, _) => self.n_tokens,
            // the first layer of a batch names its size, unless it is a subset
            (false, None) => n_tokens,
            (false, Some(rows)) => rows.iter().map(|&r| r.max(0) as usize + 1).max().unwrap_or(0),
        };
        let mut tokens = vec![Vec::new(); batch_tokens];
        for (t, (ids, ws)) in experts.chunks_exact(n_used).zip(weights.chunks_exact(n_used)).enumerate() {
            let row = match rows {
                Some(rows) => rows[t],
                None => t as i32,
            };
            if row < 0 || row as usize >= batch_tokens || (rows.is_none() && n_tokens != batch_tokens) {
                crate::bail_invalid!(
                    "{}: layer {layer}: {n_tokens} tokens (row {row}) in a batch of {batch_tokens}",
                    self.path.display()
                );
            }
            let mut picks = Vec::with_capacity(n_used);
            for (&e, &w) in ids.iter().zip(ws) {
                if e < 0 || e as usize >= self.n_experts || !w.is_finite() || w < 0.0 {
                    crate::bail_invalid!(
                        "{}: layer {layer}: pick ({e}, {w}) is not [expert < {}, weight >= 0]",
                        self.path.display(),
                        self.n_experts
                    );
                }
                picks.push((e as u32, w));
            }
            picks.sort_by(|a, b| b.1.total_cmp(&a.1));
            tokens[row as usize] = picks;
        }
        self.n_tokens = batch_tokens;
        self.batch[layer] = Some(tokens);
        if self.batch.iter().all(Option::is_some) {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> Result<()> {
        if !self.batch.iter().all(Option::is_some) {
            crate::bail_invalid!("{}: a batch ended with layers missing", self.path.display());
        }
        let layers: Vec<Vec<Picks>> = self.batch.iter_mut().map(|l| l.take().expect("complete")).collect();
        for t in 0..self.n_tokens {
            let per_layer: Vec<&Picks> = layers.iter().map(|l| &l[t]).collect();
            let line = serde_json::json!({"seq": 0, "layers": per_layer});
            writeln!(self.out, "{line}").map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Flush what is written. A batch missing layers (a run cut short) is dropped.
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_trace_reads_back_token_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&path, 2, 4).unwrap();
        // two batches of two tokens, top-2; layers may arrive in any order
        w.layer(1, 2, &[3, 0, 1, 2], &[0.25, 0.75, 0.5, 0.5], None).unwrap();
        assert!(w.layer(1, 2, &[3, 0, 1, 2], &[0.25, 0.75, 0.5, 0.5], None).is_err(), "a layer twice");
        w.layer(0, 2, &[0, 1, 2, 3], &[0.6, 0.4, 0.1, 0.9], None).unwrap();
        w.layer(0, 1, &[2], &[1.0], None).unwrap();
        assert!(w.layer(1, 1, &[3, 0], &[1.0, 1.0], None).is_err(), "two tokens in a batch of one");
        w.layer(1, 1, &[3], &[1.0], None).unwrap();
        assert!(w.layer(0, 1, &[4], &[1.0], None).is_err(), "expert 4 of 4");
        // a last layer computed for some tokens only (llama.cpp's output rows): the others get none
        w.layer(0, 1, &[1, 2, 3], &[1.0, 1.0, 1.0], None).unwrap();
        assert!(w.layer(1, 1, &[0], &[1.0], Some(&[3])).is_err(), "row 3 of 3");
        w.layer(1, 1, &[0], &[1.0], Some(&[2])).unwrap();
        w.finish().unwrap();

        let t = Trace::load(&path).unwrap();
        assert_eq!((t.n_layers, t.n_experts, t.tokens.len()), (2, 4, 6));
        assert_eq!(t.tokens[3].layers, vec![vec![(1, 1.0)], vec![]]);
        assert_eq!(t.tokens[5].layers, vec![vec![(3, 1.0)], vec![(0, 1.0)]]);
        assert_eq!(t.tokens[0].layers, vec![vec![(0, 0.6), (1, 0.4)], vec![(0, 0.75), (3, 0.25)]]);
        assert_eq!(t.tokens[1].layers[0], vec![(3, 0.9), (2, 0.1)]);
        assert_eq!(t.tokens[2].layers, vec![vec![(2, 1.0)], vec![(3, 1.0)]]);
    }
}
