//! Guessing later layers' experts early (HOBBIT's prefetching, "A Mixed Precision Expert
//! Offloading System for Fast MoE Inference", arXiv 2411.01433): the residual stream changes
//! little from one layer to the next, so a later layer's router applied to the current layer's
//! gate input picks mostly the experts that layer will pick. The MoE cache reads those experts
//! while the current layer computes.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::weights::gguf_tensor_f32;

/// One layer's router: `n_expert` rows of `n_embd` weights (llama.cpp's ffn_gate_inp).
struct Router {
    weights: Vec<f32>,
}

pub struct Lookahead {
    n_embd: usize,
    n_expert: usize,
    /// Per model layer; None for a dense one.
    routers: Vec<Option<Router>>,
}

impl Lookahead {
    /// Every layer's router of a mixture-of-experts GGUF (`blk.L.ffn_gate_inp.weight`, any type,
    /// dequantised to f32).
    pub fn load(gguf: &GgufFile, n_layer: usize, n_expert: usize) -> Result<Lookahead> {
        let mut n_embd = 0;
        let mut routers = Vec::with_capacity(n_layer);
        for il in 0..n_layer {
            let name = format!("blk.{il}.ffn_gate_inp.weight");
            if gguf.tensor(&name).is_none() {
                routers.push(None);
                continue;
            }
            let (weights, ne) = gguf_tensor_f32(gguf, &name)?;
            if ne.len() != 2 || ne[1] != n_expert as u64 || (n_embd != 0 && ne[0] as usize != n_embd) {
                crate::bail_invalid!("{}: router '{name}' is {ne:?}, not [n_embd, {n_expert}]", gguf.label());
            }
            n_embd = ne[0] as usize;
            routers.push(Some(Router { weights }));
        }
        Ok(Lookahead { n_embd, n_expert, routers })
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// The `k` experts layer `layer`'s router ranks highest for gate input `x` (n_embd values),
    /// best first; None when that layer has no router. The router's softmax is monotonic, so
    /// its logits rank the same.
    pub fn predict(&self, layer: usize, x: &[f32], k: usize) -> Option<Vec<u32>> {
        let router = self.routers.get(layer)?.as_ref()?;
        debug_assert_eq!(x.len(), self.n_embd);
        let mut logits: Vec<(u32, f32)> = router
            .weights
            .chunks_exact(self.n_embd)
            .enumerate()
            .map(|(e, row)| (e as u32, row.iter().zip(x).map(|(w, v)| w * v).sum()))
            .collect();
        logits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Some(logits.into_iter().take(k.min(self.n_expert)).map(|(e, _)| e).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{write_gguf, Metadata, TensorInfoOut, Value};
    use crate::GgmlType;

    #[test]
    fn later_routers_rank_experts_by_their_logits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moe.gguf");
        let mut md = Metadata::new();
        md.insert("general.architecture", Value::String("llama".into()));
        // layer 0 dense, layer 1 a router of 3 experts over n_embd = 2
        let router: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0];
        let bytes: Vec<u8> = router.iter().flat_map(|v| v.to_le_bytes()).collect();
        let info = TensorInfoOut::new("blk.1.ffn_gate_inp.weight", GgmlType::F32, [2u64, 3]);
        write_gguf(&path, &md, &[(info, bytes.as_slice())]).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        let la = Lookahead::load(&gguf, 2, 3).unwrap();
        assert_eq!(la.n_embd(), 2);
        assert_eq!(la.predict(0, &[1.0, 2.0], 2), None, "a dense layer");
        assert_eq!(la.predict(1, &[1.0, 2.0], 2), Some(vec![1, 0]));
        assert_eq!(la.predict(1, &[-3.0, -1.0], 1), Some(vec![2]));
        assert_eq!(la.predict(1, &[0.0, 0.0], 9), Some(vec![0, 1, 2]), "ties by expert, k capped");
        assert!(Lookahead::load(&gguf, 2, 4).err().unwrap().to_string().contains("blk.1.ffn_gate_inp.weight"));
    }
}
