//! Streaming, atomic GGUF v3 writer.
//!
//! The header is computed up front (offsets follow from the shapes, as in ggml), written to a
//! temporary file next to the destination, and then the caller streams each tensor's bytes in
//! header order. `finish` fsyncs and renames the temporary file onto the destination, so readers
//! only ever see either the old file or the complete new one, and a writer dropped half-way (an
//! error, a panic) leaves nothing behind.
//!
//! The bytes match what ggml's `gguf_write_to_file` produces for the same content (header, zero
//! padding to the alignment, each tensor padded with zeros, including the last), except that we
//! keep the stored number of dimensions instead of trimming trailing 1s, so a parsed file is
//! reproduced byte for byte.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::file::GgufFile;
use super::metadata::Metadata;
use super::tensor::{check_name, check_shape, pad_to, TensorInfoOut};
use super::value::{Array, Value};
use super::{alignment_from, MAGIC, VERSION};
use crate::bail_invalid;
use crate::error::{Error, Result};

/// Buffer in front of the temporary file; large tensor writes bypass it.
const BUF_BYTES: usize = 1 << 20;
const ZEROS: [u8; 4096] = [0; 4096];

/// What the writer knows about each tensor: enough to check the streamed bytes.
#[derive(Debug)]
struct Planned {
    name: String,
    n_bytes: u64,
    padded: u64,
}

/// See the module documentation. Typical use:
///
/// ```no_run
/// # use switchyard::gguf::{GgufWriter, Metadata, TensorInfoOut};
/// # use switchyard::GgmlType;
/// # fn main() -> switchyard::Result<()> {
/// let mut md = Metadata::new();
/// md.insert("general.architecture", "llama");
/// let tensors = [TensorInfoOut::new("w", GgmlType::F32, [4u64, 2])];
/// let mut w = GgufWriter::create("out.gguf", &md, &tensors)?;
/// w.begin_tensor("w")?;
/// w.write_chunk(&[0u8; 16])?;
/// w.write_chunk(&[0u8; 16])?;
/// w.end_tensor()?;
/// w.finish()
/// # }
/// ```
pub struct GgufWriter {
    path: PathBuf,
    label: String,
    out: BufWriter<NamedTempFile>,
    plan: Vec<Planned>,
    alignment: u64,
    data_offset: u64,
    /// Index of the next tensor to begin.
    next: usize,
    /// The tensor being streamed: its index and the bytes written so far.
    current: Option<(usize, u64)>,
    /// Set after an I/O error: the temporary file's content is then unknown.
    failed: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("n_tensors", &self.plan.len())
            .field("next", &self.next)
            .field("current", &self.current)
            .finish()
    }
}

impl GgufWriter {
    /// Validates `metadata` and `tensors` like the reader would, then writes the header to a
    /// temporary file in the destination's directory. Alignment comes from `general.alignment`
    /// (a u32 power of two) or defaults to 32.
    pub fn create(path: impl AsRef<Path>, metadata: &Metadata, tensors: &[TensorInfoOut]) -> Result<GgufWriter> {
        let path = path.as_ref().to_path_buf();
        let label = path.display().to_string();
        let (header, plan, alignment) = encode_header(metadata, tensors, &label)?;

        // Same directory, so the final rename cannot cross file systems.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut out = BufWriter::with_capacity(BUF_BYTES, tmp);
        out.write_all(&header).map_err(|e| Error::io(&path, e))?;
        let data_offset = header.len() as u64;
        Ok(GgufWriter { path, label, out, plan, alignment, data_offset, next: 0, current: None, failed: false })
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section (the padded header size).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    fn invalid(&self, msg: impl std::fmt::Display) -> Error {
        Error::Invalid(format!("{}: {msg}", self.label))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(self.invalid("writer is unusable after an earlier I/O error"));
        }
        Ok(())
    }

    fn io(&mut self, r: std::io::Result<()>) -> Result<()> {
        r.map_err(|e| {
            self.failed = true;
            Error::io(&self.path, e)
        })
    }

    /// Writes a whole tensor; it must be the next one in header order and `bytes` must have
    /// exactly its size. Nothing is written if either check fails.
    pub fn write_tensor_data(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        // Check the size before beginning, so a wrong-sized call leaves the writer unchanged.
        if let Some(p) = self.plan.get(self.next).filter(|p| p.name == name && self.current.is_none()) {
            if p.n_bytes != bytes.len() as u64 {
                return Err(self.invalid(format_args!(
                    "tensor '{name}': got {} bytes of data, expected {}",
                    bytes.len(),
                    p.n_bytes
                )));
            }
        }
        self.begin_tensor(name)?;
        self.write_chunk(bytes)?;
        self.end_tensor()
    }

    /// Starts streaming tensor `name`, which must be the next one in header order.
    pub fn begin_tensor(&mut self, name: &str) -> Result<()> {
        self.check_usable()?;
        if let Some((i, done)) = self.current {
            let p = &self.plan[i];
            return Err(self.invalid(format_args!(
                "tensor '{}' is incomplete ({done} of {} bytes written) when beginning tensor '{name}'",
                p.name, p.n_bytes
            )));
        }
        match self.plan.get(self.next) {
            Some(p) if p.name == name => {
                self.current = Some((self.next, 0));
                self.next += 1;
                Ok(())
            }
            Some(p) => {
                let why = if self.plan[..self.next].iter().any(|q| q.name == name) {
                    "was already written"
                } else if self.plan.iter().any(|q| q.name == name) {
                    "is out of header order"
                } else {
                    "is not in the header"
                };
                Err(self.invalid(format_args!("tensor '{name}' {why}; expected tensor '{}' next", p.name)))
            }
            None => Err(self.invalid(format_args!(
                "tensor '{name}': all {} tensors of the header are already written",
                self.plan.len()
            ))),
        }
    }

    /// Appends bytes to the tensor begun with [`begin_tensor`](Self::begin_tensor). Writing more
    /// than the tensor's size is an error (and writes nothing).
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        let Some((i, done)) = self.current else {
            return Err(self.invalid("write_chunk called with no tensor begun"));
        };
        let total = done.checked_add(bytes.len() as u64);
        let p = &self.plan[i];
        match total {
            Some(t) if t <= p.n_bytes => {
                let r = self.out.write_all(bytes);
                self.io(r)?;
                self.current = Some((i, t));
                Ok(())
            }
            _ => Err(self.invalid(format_args!(
                "tensor '{}': {} more bytes would exceed its size ({done} of {} written)",
                p.name,
                bytes.len(),
                p.n_bytes
            ))),
        }
    }

    /// Ends the current tensor, checking its length, and writes its alignment padding.
    pub fn end_tensor(&mut self) -> Result<()> {
        self.check_usable()?;
        let Some((i, done)) = self.current else {
            return Err(self.invalid("end_tensor called with no tensor begun"));
        };
        let p = &self.plan[i];
        if done != p.n_bytes {
            return Err(
                self.invalid(format_args!("tensor '{}': got {done} bytes of data, expected {}", p.name, p.n_bytes))
            );
        }
        let pad = p.padded - p.n_bytes;
        let r = write_zeros(&mut self.out, pad);
        self.io(r)?;
        self.current = None;
        Ok(())
    }

    /// Checks that every tensor was written, flushes and fsyncs the temporary file and renames
    /// it onto the destination (replacing any existing file).
    pub fn finish(self) -> Result<()> {
        self.check_usable()?;
        if let Some((i, done)) = self.current {
            let p = &self.plan[i];
            return Err(
                self.invalid(format_args!("tensor '{}' is incomplete: {done} of {} bytes written", p.name, p.n_bytes))
            );
        }
        if let Some(p) = self.plan.get(self.next) {
            return Err(self.invalid(format_args!(
                "tensor '{}' was never written ({} of {} tensors written)",
                p.name,
                self.next,
                self.plan.len()
            )));
        }
        let path = self.path;
        let tmp = self.out.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        // NamedTempFile creates files readable by the owner only; a model file should have the
        // usual permissions.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(0o644);
            tmp.as_file().set_permissions(perms).map_err(|e| Error::io(&path, e))?;
        }
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_parent_dir(&path);
        Ok(())
    }
}

/// Makes the rename durable. Best effort: some platforms and file systems cannot fsync a
/// directory, and the data itself is already synced.
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Writes a whole file in one call (atomically, like [`GgufWriter`]).
pub fn write_gguf(path: impl AsRef<Path>, metadata: &Metadata, tensors: &[(TensorInfoOut, &[u8])]) -> Result<()> {
    let infos: Vec<TensorInfoOut> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut w = GgufWriter::create(path, metadata, &infos)?;
    for (t, data) in tensors {
        w.write_tensor_data(&t.name, data)?;
    }
    w.finish()
}

/// Rewrites `file` at `path` (atomically, like [`GgufWriter`]) with `metadata` in place of its
/// own and every tensor's bytes unchanged: for edits that only touch metadata.
pub fn rewrite_with_metadata(file: &GgufFile, metadata: &Metadata, path: impl AsRef<Path>) -> Result<()> {
    let tensors: Vec<(TensorInfoOut, &[u8])> = file
        .tensors
        .iter()
        .map(|t| Ok((TensorInfoOut::new(t.name.clone(), t.ty, t.ne.clone()), file.try_tensor_data(t)?)))
        .collect::<Result<_>>()?;
    write_gguf(path, metadata, &tensors)
}

/// The header [`GgufWriter`] would write for `metadata` and `tensors`, padded to the alignment
/// (so its length is the data section's offset). Errors are labelled with `metadata.label()`.
pub fn header_bytes(metadata: &Metadata, tensors: &[TensorInfoOut]) -> Result<Vec<u8>> {
    encode_header(metadata, tensors, metadata.label()).map(|(h, _, _)| h)
}

/// Validates and encodes the header, padded to the alignment. Returns the bytes, the per-tensor
/// plan and the alignment.
fn encode_header(metadata: &Metadata, tensors: &[TensorInfoOut], label: &str) -> Result<(Vec<u8>, Vec<Planned>, u64)> {
    let alignment = alignment_from(metadata).map_err(|e| Error::Invalid(format!("{label}: {e}")))?;

    let mut plan = Vec::with_capacity(tensors.len());
    let mut seen = HashSet::with_capacity(tensors.len());
    for t in tensors {
        let name = &t.name;
        check_name(name).map_err(|e| Error::Invalid(format!("{label}: tensor '{}': {e}", name.escape_debug())))?;
        if !seen.insert(name.as_str()) {
            bail_invalid!("{label}: tensor '{name}' appears twice in the tensor list");
        }
        let n_bytes = check_shape(t.ty, &t.ne).map_err(|e| Error::Invalid(format!("{label}: tensor '{name}': {e}")))?;
        let padded = pad_to(n_bytes, alignment)
            .ok_or_else(|| Error::Invalid(format!("{label}: tensor '{name}': size {n_bytes} overflows when padded")))?;
        plan.push(Planned { name: name.clone(), n_bytes, padded });
    }

    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    put_u32(&mut h, VERSION);
    put_u64(&mut h, tensors.len() as u64);
    put_u64(&mut h, metadata.len() as u64);
    for (key, value) in metadata.iter() {
        // ggml asserts on empty keys, so such a file could not be loaded.
        if key.is_empty() {
            bail_invalid!("{label}: metadata has an empty key");
        }
        put_str(&mut h, key);
        put_value(&mut h, value);
    }
    let mut offset = 0u64;
    for (t, p) in tensors.iter().zip(&plan) {
        put_str(&mut h, &t.name);
        put_u32(&mut h, t.ne.len() as u32);
        for &d in &t.ne {
            put_u64(&mut h, d);
        }
        put_u32(&mut h, t.ty as u32);
        put_u64(&mut h, offset);
        offset = offset
            .checked_add(p.padded)
            .ok_or_else(|| Error::Invalid(format!("{label}: tensor '{}': data section size overflows", t.name)))?;
    }
    let padded_len = pad_to(h.len() as u64, alignment).unwrap_or(h.len() as u64) as usize;
    h.resize(padded_len, 0);
    Ok((h, plan, alignment))
}

fn put_u32(h: &mut Vec<u8>, v: u32) {
    h.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(h: &mut Vec<u8>, v: u64) {
    h.extend_from_slice(&v.to_le_bytes());
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    put_u64(h, s.len() as u64);
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &Value) {
    put_u32(h, v.value_type().id());
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_str(h, s),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(h, a),
    }
}

fn put_array(h: &mut Vec<u8>, a: &Array) {
    put_u32(h, a.elem_type().id());
    put_u64(h, a.len() as u64);
    // One helper per element width keeps this a flat match.
    fn all<T: Copy, const N: usize>(h: &mut Vec<u8>, v: &[T], enc: fn(T) -> [u8; N]) {
        h.reserve(v.len() * N);
        for &x in v {
            h.extend_from_slice(&enc(x));
        }
    }
    match a {
        Array::U8(v) => h.extend_from_slice(v),
        Array::I8(v) => all(h, v, i8::to_le_bytes),
        Array::U16(v) => all(h, v, u16::to_le_bytes),
        Array::I16(v) => all(h, v, i16::to_le_bytes),
        Array::U32(v) => all(h, v, u32::to_le_bytes),
        Array::I32(v) => all(h, v, i32::to_le_bytes),
        Array::F32(v) => all(h, v, f32::to_le_bytes),
        Array::Bool(v) => h.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(h, s)),
        Array::U64(v) => all(h, v, u64::to_le_bytes),
        Array::I64(v) => all(h, v, i64::to_le_bytes),
        Array::F64(v) => all(h, v, f64::to_le_bytes),
    }
}
