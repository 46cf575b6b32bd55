//! Captured FFN inputs: the normalised hidden state entering each layer's feed-forward block
//! (llama.cpp's `ffn_norm-L`), one row per token, recorded while a dense model runs on
//! calibration text (`SWITCHYARD_CAPTURE` in the patched llama.cpp). `switchyard moefy` computes
//! each FFN channel's activations from them and fits its routers on them.
//!
//! The file is safetensors: one F32 tensor `layer.L` of shape [rows, n_embd] per layer. Layers
//! may hold different row counts (llama.cpp runs its last layer only for the tokens whose
//! logits are asked for), so rows of different layers are not aligned token by token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Bounds on what a capture may hold: they keep a runaway run (or a hostile header) from
/// allocating without limit.
const MAX_LAYERS: usize = 1024;
const MAX_EMBD: usize = 1 << 16;
pub const MAX_BYTES: usize = 8 << 30;

/// Per layer, its captured rows, `n_embd` floats each.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    pub n_embd: usize,
    pub layers: Vec<Vec<f32>>,
}

impl Capture {
    pub fn rows(&self, layer: usize) -> usize {
        self.layers[layer].len() / self.n_embd
    }

    pub fn load(path: &Path) -> Result<Capture> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Parses a capture's bytes; `label` names the source in errors.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Capture> {
        let bad = |m: String| Error::Invalid(format!("{label}: {m}"));
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a capture: {e}")))?;
        let n_layers = st.len();
        if !(1..=MAX_LAYERS).contains(&n_layers) {
            return Err(bad(format!("{n_layers} tensors; a capture has 1 to {MAX_LAYERS} layers")));
        }
        let mut layers = Vec::with_capacity(n_layers);
        let mut n_embd = 0;
        for l in 0..n_layers {
            let name = format!("layer.{l}");
            let t = st.tensor(&name).map_err(|_| bad(format!("no tensor '{name}' ({n_layers} tensors)")))?;
            match (t.dtype(), t.shape()) {
                (Dtype::F32, &[_, e]) if (1..=MAX_EMBD).contains(&e) && (n_embd == 0 || e == n_embd) => n_embd = e,
                (dtype, shape) => {
                    return Err(bad(format!("'{name}' is {dtype:?} {shape:?}, not F32 [rows, n_embd] like the others")))
                }
            }
            layers.push(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect());
        }
        Ok(Capture { n_embd, layers })
    }
}

/// Collects a capture while a model runs and writes it when finished. It is held in memory
/// (bounded by MAX_BYTES): safetensors wants every shape up front.
pub struct CaptureWriter {
    path: PathBuf,
    capture: Capture,
    bytes: usize,
}

impl CaptureWriter {
    pub fn create(path: &Path, n_layers: usize, n_embd: usize) -> Result<CaptureWriter> {
        if !(1..=MAX_LAYERS).contains(&n_layers) || !(1..=MAX_EMBD).contains(&n_embd) {
            crate::bail_invalid!(
                "{}: a capture needs 1 to {MAX_LAYERS} layers of 1 to {MAX_EMBD} values (got {n_layers}, {n_embd})",
                path.display()
            );
        }
        // fail now, not after the run, when the folder cannot be written (and leave nothing)
        tempfile::NamedTempFile::new_in(parent_of(path)).map_err(|e| Error::io(path, e))?;
        Ok(CaptureWriter {
            path: path.to_path_buf(),
            capture: Capture { n_embd, layers: vec![Vec::new(); n_layers] },
            bytes: 0,
        })
    }

    pub fn n_embd(&self) -> usize {
        self.capture.n_embd
    }

    /// Appends `data` (rows of n_embd values, row after row) to `layer`.
    pub fn layer(&mut self, layer: usize, data: &[f32]) -> Result<()> {
        let (n_layers, n_embd) = (self.capture.layers.len(), self.capture.n_embd);
        if layer >= n_layers || !data.len().is_multiple_of(n_embd) {
            crate::bail_invalid!(
                "{}: layer {layer} of {n_layers}: {} values are not rows of {n_embd}",
                self.path.display(),
                data.len()
            );
        }
        self.bytes += std::mem::size_of_val(data);
        if self.bytes > MAX_BYTES {
            crate::bail_invalid!(
                "{}: more than {} GiB captured; capture fewer tokens",
                self.path.display(),
                MAX_BYTES >> 30
            );
        }
        self.capture.layers[layer].extend_from_slice(data);
        Ok(())
    }

    /// Writes the file: through a temporary beside it, so a failure leaves no partial capture.
    pub fn finish(self) -> Result<()> {
        let n_embd = self.capture.n_embd;
        let raw: Vec<Vec<u8>> = self.capture.layers.iter().map(|l| bytemuck::cast_slice(l).to_vec()).collect();
        let mut views = BTreeMap::new();
        for (l, bytes) in raw.iter().enumerate() {
            let view = TensorView::new(Dtype::F32, vec![bytes.len() / 4 / n_embd, n_embd], bytes)
                .map_err(|e| Error::Invalid(format!("{}: layer {l}: {e}", self.path.display())))?;
            views.insert(format!("layer.{l}"), view);
        }
        let tmp = tempfile::NamedTempFile::new_in(parent_of(&self.path)).map_err(|e| Error::io(&self.path, e))?;
        safetensors::serialize_to_file(views, &None, tmp.path())
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.path.display())))?;
        tmp.persist(&self.path).map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_reads_back_layer_by_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let mut w = CaptureWriter::create(&path, 2, 3).unwrap();
        w.layer(0, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.layer(1, &[7.0, 8.0, 9.0]).unwrap();
        w.layer(0, &[0.5, 0.25, 0.125]).unwrap();
        assert!(w.layer(1, &[1.0, 2.0]).is_err(), "not a whole row");
        assert!(w.layer(2, &[1.0, 2.0, 3.0]).is_err(), "layer 2 of 2");
        w.finish().unwrap();
        let c = Capture::load(&path).unwrap();
        assert_eq!(c.n_embd, 3);
        assert_eq!((c.rows(0), c.rows(1)), (3, 1));
        assert_eq!(c.layers[0][6..], [0.5, 0.25, 0.125]);
        assert_eq!(c.layers[1], [7.0, 8.0, 9.0]);
    }

    #[test]
    fn malformed_captures_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
        let e = Capture::load(&path).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        // a layer missing from the numbering
        let data = [0u8; 12];
        let view = TensorView::new(Dtype::F32, vec![1, 3], &data).unwrap();
        safetensors::serialize_to_file([("layer.1", view)], &None, &path).unwrap();
        let e = Capture::load(&path).unwrap_err().to_string();
        assert!(e.contains("no tensor 'layer.0'"), "{e}");
        assert!(CaptureWriter::create(&dir.path().join("x"), 0, 3).is_err());
    }
}
