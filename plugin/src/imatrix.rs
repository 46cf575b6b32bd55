//! llama.cpp importance matrices: per weight tensor, the mean of x_i^2 over calibration tokens
//! for every input channel i. ME-Switch ranks salient input channels by quantization error
//! weighted by exactly this statistic, so users reuse the files `llama-imatrix` already makes.
//!
//! Two on-disk forms exist in the pinned llama.cpp (tools/imatrix/imatrix.cpp):
//! - GGUF (`general.type = "imatrix"`): tensors `<name>.in_sum2` (F32, [n_in, n_mat]) holding raw
//!   sums and `<name>.counts` (F32, [1, n_mat]); mean = in_sum2 / counts.
//!   With the patched `llama-imatrix --covariance`, also `<name>.in_cov` (F32, [n_in, n_in]):
//!   the raw sum of x x^T for each dense weight, for error feedback ([`crate::codec::ErrorFeedback`]).
//! - legacy `.dat`: i32 n_entries, then per entry i32 name length, name, i32 ncall, i32 nval,
//!   f32[nval] holding mean * ncall; then trailing chunk count and dataset name, ignored here.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::GgmlType;

/// Mean squared activation per input channel, keyed by GGUF tensor name
/// (`blk.0.attn_q.weight`). For MoE tensors the vector holds n_in * n_expert values.
#[derive(Debug, Default, Clone)]
pub struct Imatrix {
    entries: HashMap<String, Vec<f32>>,
    /// The mean of x x^T (n_in x n_in, row-major) per dense weight, where the file has it.
    covariances: HashMap<String, Vec<f32>>,
}

impl Imatrix {
    /// Read either form, chosen by the file's magic bytes.
    pub fn load(path: &Path) -> Result<Imatrix> {
        use std::io::Read;
        // The magic alone decides; a GGUF file is then mapped, not read.
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(|e| Error::io(path, e))?;
        if n == 4 && &magic == b"GGUF" {
            return Self::load_gguf(path);
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse_legacy(&bytes, &path.display().to_string())
    }

    /// The statistic for `tensor`, if the file has it.
    pub fn get(&self, tensor: &str) -> Option<&[f32]> {
        self.entries.get(tensor).map(Vec::as_slice)
    }

    /// The mean of x x^T over calibration tokens for `tensor`, if the file has it.
    pub fn covariance(&self, tensor: &str) -> Option<&[f32]> {
        self.covariances.get(tensor).map(Vec::as_slice)
    }

    /// Whether the file holds any covariance (made with `llama-imatrix --covariance`).
    pub fn has_covariances(&self) -> bool {
        !self.covariances.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, tensor: impl Into<String>, values: Vec<f32>) {
        self.entries.insert(tensor.into(), values);
    }

    fn load_gguf(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path)?;
        let label = path.display();
        let counts_of: HashMap<&str, _> =
            file.tensors.iter().filter_map(|t| t.name.strip_suffix(".counts").map(|base| (base, t))).collect();
        let mut out = Imatrix::default();
        for sums in &file.tensors {
            let Some(name) = sums.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let Some(counts) = counts_of.get(name) else {
                crate::bail_invalid!("{label}: tensor '{}' has no matching '{name}.counts'", sums.name);
            };
            if sums.ty != GgmlType::F32 || counts.ty != GgmlType::F32 {
                crate::bail_invalid!("{label}: imatrix tensors for '{name}' must be f32");
            }
            let sums_v = f32_values(file.tensor_data(sums));
            let counts_v = f32_values(file.tensor_data(counts));
            let n_mat = counts_v.len();
            if n_mat == 0 || !sums_v.len().is_multiple_of(n_mat) {
                crate::bail_invalid!("{label}: '{name}': {} sums do not divide into {n_mat} matrices", sums_v.len());
            }
            let per = sums_v.len() / n_mat;
            let means = sums_v
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let c = counts_v[i / per];
                    // llama.cpp stores 1.0 for experts that saw no token; do the same.
                    if c > 0.0 {
                        s / c
                    } else {
                        1.0
                    }
                })
                .collect();
            if let Some(cov) = file.tensor(&format!("{name}.in_cov")) {
                let n = per as u64;
                if n_mat != 1 || cov.ty != GgmlType::F32 || cov.ne != [n, n] {
                    crate::bail_invalid!(
                        "{label}: '{}' must be f32 [{n}, {n}] for one matrix, found {:?} {:?} for {n_mat}",
                        cov.name,
                        cov.ty,
                        cov.ne
                    );
                }
                let c = counts_v[0];
                let scale = if c > 0.0 { 1.0 / c } else { 0.0 };
                let mean = f32_values(file.tensor_data(cov)).into_iter().map(|v| v * scale).collect();
                out.covariances.insert(name.to_string(), mean);
            }
            out.entries.insert(name.to_string(), means);
        }
        if let Some(stray) = file
            .tensors
            .iter()
            .filter_map(|t| t.name.strip_suffix(".in_cov"))
            .find(|name| !out.entries.contains_key(*name))
        {
            crate::bail_invalid!("{label}: tensor '{stray}.in_cov' has no matching '{stray}.in_sum2'");
        }
        if out.entries.is_empty() {
            crate::bail_invalid!("{label}: GGUF file has no '<tensor>.in_sum2' imatrix tensors");
        }
        Ok(out)
    }

    /// Parse the legacy `.dat` layout from bytes; `label` names the file in errors.
    pub fn parse_legacy(bytes: &[u8], label: &str) -> Result<Imatrix> {
        let mut r = Reader { bytes, pos: 0, label };
        let n_entries = r.i32("entry count")?;
        if n_entries <= 0 {
            crate::bail_invalid!("{label}: imatrix declares {n_entries} entries");
        }
        let mut out = Imatrix::default();
        for _ in 0..n_entries {
            let len = r.len("name length", 1)?;
            let name = std::str::from_utf8(r.take(len, "tensor name")?)
                .map_err(|_| Error::Invalid(format!("{label}: tensor name is not UTF-8")))?
                .to_string();
            let ncall = r.i32(&format!("'{name}' call count"))?;
            let nval = r.len(&format!("'{name}' value count"), 4)?;
            let raw = r.take(nval * 4, &format!("'{name}' values"))?;
            let scale = if ncall > 0 { 1.0 / ncall as f32 } else { 1.0 };
            let values = f32_values(raw).into_iter().map(|v| v * scale).collect();
            if out.entries.insert(name.clone(), values).is_some() {
                crate::bail_invalid!("{label}: tensor '{name}' appears twice");
            }
        }
        Ok(out)
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Bounds-checked little-endian cursor: every count is checked against the bytes left
/// before anything is allocated from it.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    label: &'a str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            Error::Invalid(format!("{}: truncated while reading {what} at byte {}", self.label, self.pos))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative count of items of `item_size` bytes that must fit in the rest of the file.
    fn len(&mut self, what: &str, item_size: usize) -> Result<usize> {
        let n = self.i32(what)?;
        let left = self.bytes.len() - self.pos;
        if n < 0 || (n as usize).saturating_mul(item_size) > left {
            crate::bail_invalid!("{}: {what} {n} does not fit in the {left} bytes left", self.label);
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])]) -> Vec<u8> {
        let mut b = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, vals) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((vals.len() as i32).to_le_bytes());
            vals.iter().for_each(|v| b.extend(v.to_le_bytes()));
        }
        b.extend(7i32.to_le_bytes()); // last chunk
        b.extend(0i32.to_le_bytes()); // empty dataset name
        b
    }

    #[test]
    fn legacy_values_are_divided_by_ncall() {
        let b = legacy(&[("blk.0.ffn_up.weight", 4, &[4.0, 8.0]), ("x", 0, &[3.0])]);
        let m = Imatrix::parse_legacy(&b, "t.dat").unwrap();
        assert_eq!(m.get("blk.0.ffn_up.weight").unwrap(), &[1.0, 2.0]);
        assert_eq!(m.get("x").unwrap(), &[3.0]);
    }

    #[test]
    fn legacy_truncation_is_an_error_at_every_cut() {
        let b = legacy(&[("blk.0.ffn_up.weight", 4, &[4.0, 8.0])]);
        // Everything past the entries is optional trailer, so cut inside the entries only.
        for cut in 0..(b.len() - 8) {
            let err = Imatrix::parse_legacy(&b[..cut], "t.dat").unwrap_err().to_string();
            assert!(err.starts_with("t.dat:"), "{err}");
        }
    }

    type Entry = (String, Vec<u64>, Vec<f32>);

    fn gguf_imatrix(dir: &Path, tensors: &[&Entry]) -> std::path::PathBuf {
        use crate::gguf::{write_gguf, Metadata, TensorInfoOut};
        let path = dir.join("imatrix.gguf");
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
        let refs: Vec<(TensorInfoOut, &[u8])> = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, ne, _), b)| (TensorInfoOut::new(name.as_str(), GgmlType::F32, ne.clone()), b.as_slice()))
            .collect();
        write_gguf(&path, &Metadata::new(), &refs).unwrap();
        path
    }

    #[test]
    fn gguf_covariances_are_means_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let w = "blk.0.attn_q.weight";
        let sums = (format!("{w}.in_sum2"), vec![2, 1], vec![8.0, 4.0]);
        let counts = (format!("{w}.counts"), vec![1, 1], vec![4.0]);
        let cov = (format!("{w}.in_cov"), vec![2, 2], vec![8.0, 2.0, 2.0, 4.0]);
        let m = Imatrix::load(&gguf_imatrix(dir.path(), &[&sums, &counts, &cov])).unwrap();
        assert_eq!(m.get(w).unwrap(), &[2.0, 1.0]);
        assert_eq!(m.covariance(w).unwrap(), &[2.0, 0.5, 0.5, 1.0]);
        assert!(m.has_covariances());
        // without covariances
        let m = Imatrix::load(&gguf_imatrix(dir.path(), &[&sums, &counts])).unwrap();
        assert!(!m.has_covariances() && m.covariance(w).is_none());
        // a covariance of the wrong shape, or without its sums, names the tensor
        let bad = (cov.0.clone(), vec![2, 1], vec![1.0, 2.0]);
        let err = Imatrix::load(&gguf_imatrix(dir.path(), &[&sums, &counts, &bad])).unwrap_err().to_string();
        assert!(err.contains("imatrix.gguf") && err.contains("attn_q.weight.in_cov"), "{err}");
        let stray = ("blk.1.ffn_up.weight.in_cov".to_string(), vec![2, 2], vec![1.0; 4]);
        let err = Imatrix::load(&gguf_imatrix(dir.path(), &[&sums, &counts, &cov, &stray])).unwrap_err().to_string();
        assert!(err.contains("blk.1.ffn_up.weight.in_cov"), "{err}");
    }

    #[test]
    fn legacy_huge_counts_fail_without_allocating() {
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend(i32::MAX.to_le_bytes());
        let err = Imatrix::parse_legacy(&b, "t.dat").unwrap_err().to_string();
        assert!(err.contains("name length"), "{err}");
    }
}
