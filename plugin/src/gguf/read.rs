//! Parsing a GGUF header from bytes, with ggml's validation rules.
//!
//! The input is untrusted: every count read from the file (keys, tensors, string and array
//! lengths) is checked against the bytes that are actually left *before* anything is allocated
//! for it, so a tiny file claiming 2^60 tensors fails at once instead of exhausting memory, and
//! every read is bounds-checked so no input can make the parser panic.

use std::collections::{HashMap, HashSet};

use super::metadata::Metadata;
use super::tensor::{check_name, check_shape, pad_to, TensorInfo, MAX_DIMS, MAX_NAME_BYTES};
use super::value::{Array, Value, ValueType};
use super::{alignment_from, KEY_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::{bail_invalid, bail_unsupported};

/// Smallest possible encoding of one key/value pair: key length (8), a non-empty key (1), the
/// type tag (4) and the smallest value, one byte.
const MIN_KV_BYTES: usize = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: name length (8), n_dims (4), one dimension (8), type (4),
/// offset (8). (Names may be empty.)
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;
/// Encoded size of a string's length prefix, the smallest encoding of one array string.
const STRING_LEN_BYTES: usize = 8;

/// Everything a GGUF header says, validated against the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// 2 or 3 (the layouts are identical for little-endian files).
    pub version: u32,
    pub metadata: Metadata,
    /// In file order; offsets are relative to `data_offset`.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section: the end of the header rounded up to `alignment`.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Linear search; [`super::GgufFile::tensor`] has an index.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Parses and validates the header of a GGUF file.
///
/// `bytes` is the **whole file** (typically a memory map): tensor data extents are checked
/// against its length. `label` names the file in error messages.
pub fn parse_header(bytes: &[u8], label: &str) -> Result<GgufHeader> {
    parse_with_index(bytes, label, &|_| true).map(|(header, _)| header)
}

/// [`parse_header`] leaving out the metadata keys that start with `prefix` (see
/// [`super::GgufFile::open_without`]).
pub fn parse_header_without(bytes: &[u8], label: &str, prefix: &str) -> Result<GgufHeader> {
    parse_with_index(bytes, label, &|key| !key.starts_with(prefix)).map(|(header, _)| header)
}

/// [`parse_header`] plus the name -> position index it builds anyway to find duplicates. Metadata
/// keys for which `keep` is false (never `general.alignment`) are bounds-checked like the others
/// but never decoded into values, so a reader that does not need them (a host's tokenizer arrays:
/// tens of thousands of strings) allocates nothing for them.
pub(crate) fn parse_with_index(
    bytes: &[u8],
    label: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(GgufHeader, HashMap<String, usize>)> {
    let mut r = Reader { buf: bytes, pos: 0, label };

    let magic = r.take(4, &|| "the magic number".into())?;
    if magic != MAGIC {
        bail_invalid!("{label}: not a GGUF file: bad magic \"{}\", expected \"GGUF\"", magic.escape_ascii());
    }
    let version = r.u32(&|| "the version".into())?;
    check_version(version, label)?;

    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata key count".into())?;
    // Fail fast on absurd counts, before allocating anything sized by them.
    let left = r.remaining();
    if n_kv > (left / MIN_KV_BYTES) as u64 {
        bail_invalid!(
            "{label}: header claims {n_kv} metadata keys but only {left} bytes follow \
             (each key needs at least {MIN_KV_BYTES})"
        );
    }
    if n_tensors > (left / MIN_TENSOR_INFO_BYTES) as u64 {
        bail_invalid!(
            "{label}: header claims {n_tensors} tensors but only {left} bytes follow \
             (each tensor info needs at least {MIN_TENSOR_INFO_BYTES})"
        );
    }

    let mut metadata = Metadata::with_capacity(label, n_kv as usize);
    // general.alignment places the tensor data: never left out, whatever the caller's prefix
    let keep = |key: &str| key == KEY_ALIGNMENT || keep(key);
    let mut skipped: HashSet<&str> = HashSet::new();
    for i in 0..n_kv {
        let (key, value) = read_kv(&mut r, i, &keep)?;
        if metadata.contains_key(key) || skipped.contains(key) {
            bail_invalid!("{label}: duplicate metadata key '{key}' (key #{i})");
        }
        match value {
            Some(value) => drop(metadata.insert(key, value)),
            None => drop(skipped.insert(key)),
        }
    }
    let alignment = alignment_from(&metadata).map_err(|e| Error::Invalid(format!("{label}: {e}")))?;

    // Tighter than the bound checked above: only what is left after the metadata can hold
    // tensor infos, so the reservation never exceeds what the file could describe.
    let cap = (n_tensors as usize).min(r.remaining() / MIN_TENSOR_INFO_BYTES);
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(cap);
    let mut index: HashMap<String, usize> = HashMap::with_capacity(cap);
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut r, i)?;
        if let Some(&first) = index.get(&info.name) {
            bail_invalid!("{label}: tensor '{}' appears twice (tensors #{first} and #{i})", info.name);
        }
        index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }

    // The data section starts at the end of the header rounded up to the alignment; ggml
    // seeks there without looking at the padding bytes, and so do we.
    let header_end = r.pos as u64;
    let data_offset = pad_to(header_end, alignment)
        .ok_or_else(|| Error::Invalid(format!("{label}: header size {header_end} overflows when padded")))?;
    check_data_layout(&tensors, alignment, data_offset, bytes.len() as u64, label)?;

    Ok((GgufHeader { version, metadata, tensors, alignment, data_offset }, index))
}

fn check_version(version: u32, label: &str) -> Result<()> {
    if version == 0 {
        bail_invalid!("{label}: bad GGUF version 0");
    }
    // A version-3 file written on a big-endian machine reads as 0x03000000 here.
    if version & 0xFFFF == 0 {
        bail_unsupported!(
            "{label}: GGUF version {version:#x} looks byte-swapped; big-endian GGUF files are not supported"
        );
    }
    if version == 1 {
        bail_unsupported!("{label}: GGUF version 1 is not supported (only versions 2 and 3)");
    }
    if version > super::VERSION {
        bail_unsupported!("{label}: GGUF version {version} is newer than this reader supports (versions 2 and 3)");
    }
    Ok(())
}

/// ggml requires each tensor to start exactly where the previous one ends, rounded up to the
/// alignment, in header order (so offsets are fully determined by the shapes), and we require
/// the data to lie inside the file so that slicing the map can never fail later.
fn check_data_layout(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    file_len: u64,
    label: &str,
) -> Result<()> {
    let mut expected = 0u64;
    let mut prev: Option<&str> = None;
    for t in tensors {
        let name = &t.name;
        let offset = t.offset;
        if !offset.is_multiple_of(alignment) {
            bail_invalid!("{label}: tensor '{name}': offset {offset} is not a multiple of alignment {alignment}");
        }
        if offset < expected {
            let prev = prev.unwrap_or("");
            bail_invalid!(
                "{label}: tensor '{name}': offset {offset} is out of order: it overlaps the previous \
                 tensor '{prev}', which ends at {expected} (tensors must be stored in header order)"
            );
        }
        if offset > expected {
            bail_invalid!(
                "{label}: tensor '{name}': offset {offset} leaves a gap; expected {expected} (tensor \
                 data must be contiguous, each tensor padded to alignment {alignment})"
            );
        }
        // Validated by check_shape already, so this is the exact size.
        let n_bytes = t.n_bytes();
        let end = data_offset.checked_add(offset).and_then(|s| s.checked_add(n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => bail_invalid!(
                "{label}: tensor '{name}': data ends at byte {} but the file is only {file_len} bytes",
                end.map_or_else(|| "(overflow)".to_string(), |e| e.to_string())
            ),
        }
        expected = pad_to(n_bytes, alignment)
            .and_then(|p| expected.checked_add(p))
            .ok_or_else(|| Error::Invalid(format!("{label}: tensor '{name}': data section size overflows")))?;
        prev = Some(name);
    }
    Ok(())
}

/// Reads key/value pair number `i`; the key borrows from the file, and the value is None
/// (bounds-checked, not decoded) where `keep` refuses the key.
fn read_kv<'a>(r: &mut Reader<'a>, i: u64, keep: &dyn Fn(&str) -> bool) -> Result<(&'a str, Option<Value>)> {
    let label = r.label;
    let key_bytes = r.string_bytes(&|| format!("metadata key #{i}"))?;
    let Ok(key) = std::str::from_utf8(key_bytes) else {
        bail_invalid!("{label}: metadata key #{i} (\"{}\") is not valid UTF-8", key_bytes.escape_ascii());
    };
    // ggml asserts on empty keys when it stores them, so such a file would abort llama.cpp.
    if key.is_empty() {
        bail_invalid!("{label}: metadata key #{i} is empty");
    }
    let kept = keep(key);
    let tag = r.u32(&|| format!("the type of metadata key '{key}'"))?;
    let value = match value_type(tag, key, label)? {
        ValueType::Array => {
            let elem_tag = r.u32(&|| format!("the element type of metadata key '{key}'"))?;
            let elem = value_type(elem_tag, key, label)?;
            if elem == ValueType::Array {
                bail_invalid!("{label}: metadata key '{key}': nested arrays (arrays of arrays) are not supported");
            }
            let n = r.u64(&|| format!("the array length of metadata key '{key}'"))?;
            if !kept {
                skip_array(r, elem, n, key)?;
                return Ok((key, None));
            }
            Value::Array(read_array(r, elem, n, key)?)
        }
        ty if !kept => {
            let what = || format!("the value of metadata key '{key}'");
            match ty.fixed_size() {
                Some(size) => r.take(size, &what)?,
                None => r.string_bytes(&what)?,
            };
            return Ok((key, None));
        }
        ty => read_scalar(r, ty, key)?,
    };
    Ok((key, Some(value)))
}

fn value_type(tag: u32, key: &str, label: &str) -> Result<ValueType> {
    ValueType::from_u32(tag)
        .ok_or_else(|| Error::Invalid(format!("{label}: metadata key '{key}' has unknown value type id {tag}")))
}

fn read_scalar(r: &mut Reader<'_>, ty: ValueType, key: &str) -> Result<Value> {
    let what = || format!("the value of metadata key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(r.array(&what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(r.array(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(r.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(r.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(r.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array(&what)?)),
        ValueType::Bool => {
            let [b] = r.array(&what)?;
            Value::Bool(to_bool(b, r.label, key, None)?)
        }
        ValueType::String => Value::String(r.string(&what)?),
        // read_kv handles arrays before calling us; reaching this is a caller bug, not bad input.
        ValueType::Array => {
            bail_invalid!("{}: metadata key '{key}': unexpected nested array", r.label)
        }
    })
}

/// ggml reads any non-zero byte as true, but writing it back would give 1: only 0 and 1 keep the
/// round trip exact, and anything else is a corrupt file in practice.
fn to_bool(b: u8, label: &str, key: &str, elem: Option<u64>) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => {
            let at = elem.map_or_else(String::new, |j| format!(" element {j}"));
            bail_invalid!("{label}: metadata key '{key}'{at}: bool byte is {b}, expected 0 or 1")
        }
    }
}

/// Checks, before anything is sized by `n`, that `n` elements of `elem` can fit in what is left
/// of the file (a string takes at least its length prefix); the bytes they take when of fixed
/// size, None for strings.
fn array_extent(r: &Reader<'_>, elem: ValueType, n: u64, key: &str) -> Result<Option<usize>> {
    let (label, left) = (r.label, r.remaining());
    if elem == ValueType::String {
        if n > (left / STRING_LEN_BYTES) as u64 {
            bail_invalid!("{label}: metadata key '{key}': array of {n} strings cannot fit in the {left} bytes left");
        }
        return Ok(None);
    }
    let Some(size) = elem.fixed_size() else {
        bail_invalid!("{label}: metadata key '{key}': unexpected element type {elem}")
    };
    match n.checked_mul(size as u64).filter(|&t| t <= left as u64) {
        Some(total) => Ok(Some(total as usize)),
        None => bail_invalid!(
            "{label}: metadata key '{key}': array of {n} {elem} elements cannot fit in the {left} bytes left"
        ),
    }
}

fn read_array(r: &mut Reader<'_>, elem: ValueType, n: u64, key: &str) -> Result<Array> {
    let label = r.label;
    let Some(total) = array_extent(r, elem, n, key)? else {
        let mut v = Vec::with_capacity(n as usize);
        for j in 0..n {
            v.push(r.string(&|| format!("element {j} of metadata key '{key}'"))?);
        }
        return Ok(Array::String(v));
    };
    let data = r.take(total, &|| format!("the elements of metadata key '{key}'"))?;
    Ok(match elem {
        ValueType::U8 => Array::U8(data.to_vec()),
        ValueType::I8 => Array::I8(data.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => Array::U16(decode(data, u16::from_le_bytes)),
        ValueType::I16 => Array::I16(decode(data, i16::from_le_bytes)),
        ValueType::U32 => Array::U32(decode(data, u32::from_le_bytes)),
        ValueType::I32 => Array::I32(decode(data, i32::from_le_bytes)),
        ValueType::F32 => Array::F32(decode(data, f32::from_le_bytes)),
        ValueType::U64 => Array::U64(decode(data, u64::from_le_bytes)),
        ValueType::I64 => Array::I64(decode(data, i64::from_le_bytes)),
        ValueType::F64 => Array::F64(decode(data, f64::from_le_bytes)),
        ValueType::Bool => Array::Bool(
            data.iter().enumerate().map(|(j, &b)| to_bool(b, label, key, Some(j as u64))).collect::<Result<_>>()?,
        ),
        ValueType::String | ValueType::Array => {
            bail_invalid!("{label}: metadata key '{key}': unexpected element type {elem}")
        }
    })
}

/// Steps over an array [`read_array`] would read, with the same bounds checks and messages,
/// allocating nothing for its elements (their UTF-8 and bool bytes are not checked).
fn skip_array(r: &mut Reader<'_>, elem: ValueType, n: u64, key: &str) -> Result<()> {
    match array_extent(r, elem, n, key)? {
        Some(total) => drop(r.take(total, &|| format!("the elements of metadata key '{key}'"))?),
        None => {
            for j in 0..n {
                r.string_bytes(&|| format!("element {j} of metadata key '{key}'"))?;
            }
        }
    }
    Ok(())
}

/// Decodes little-endian fixed-size elements; `data.len()` is a multiple of `N` by construction.
fn decode<T, const N: usize>(data: &[u8], conv: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| conv(to_array(c))).collect()
}

/// `c` always has length `N` here (from `chunks_exact` or `take(N)`).
fn to_array<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

fn read_tensor_info(r: &mut Reader<'_>, i: u64) -> Result<TensorInfo> {
    let label = r.label;
    let name_bytes = r.string_bytes(&|| format!("the name of tensor #{i}"))?;
    if name_bytes.len() >= MAX_NAME_BYTES {
        bail_invalid!(
            "{label}: tensor #{i} ('{}'): name is {} bytes long; ggml allows at most {} (GGML_MAX_NAME - 1)",
            String::from_utf8_lossy(name_bytes),
            name_bytes.len(),
            MAX_NAME_BYTES - 1
        );
    }
    let name = match std::str::from_utf8(name_bytes) {
        Ok(n) => n.to_string(),
        Err(_) => bail_invalid!("{label}: tensor #{i} (\"{}\"): name is not valid UTF-8", name_bytes.escape_ascii()),
    };
    if let Err(e) = check_name(&name) {
        bail_invalid!("{label}: tensor #{i} ('{}'): {e}", name.escape_debug());
    }

    let n_dims = r.u32(&|| format!("n_dims of tensor '{name}'"))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        bail_invalid!("{label}: tensor '{name}': n_dims is {n_dims}; GGUF allows 1 to {MAX_DIMS}");
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        ne.push(r.u64(&|| format!("dimension {j} of tensor '{name}'"))?);
    }
    let type_id = r.u32(&|| format!("the type of tensor '{name}'"))?;
    let Some(ty) = GgmlType::from_u32(type_id) else {
        bail_unsupported!("{label}: tensor '{name}': unknown ggml type id {type_id}");
    };
    if let Err(e) = check_shape(ty, &ne) {
        bail_invalid!("{label}: tensor '{name}': {e}");
    }
    let offset = r.u64(&|| format!("the data offset of tensor '{name}'"))?;
    Ok(TensorInfo { name, ty, ne, offset })
}

/// Bounds-checked little-endian cursor. `what` closures describe the item being read for error
/// messages; they only run on failure.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    label: &'a str,
}

type What<'w> = &'w dyn Fn() -> String;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: What<'_>) -> Result<&'a [u8]> {
        let slice = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end));
        match slice {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => bail_invalid!(
                "{}: truncated file: reading {} at byte {} needs {n} bytes, only {} left",
                self.label,
                what(),
                self.pos,
                self.remaining()
            ),
        }
    }

    fn array<const N: usize>(&mut self, what: What<'_>) -> Result<[u8; N]> {
        self.take(N, what).map(to_array)
    }

    fn u32(&mut self, what: What<'_>) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What<'_>) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// The raw bytes of a length-prefixed string; the length is checked against the remaining
    /// bytes before anything else so a bogus length costs nothing.
    fn string_bytes(&mut self, what: What<'_>) -> Result<&'a [u8]> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        let left = self.remaining();
        if len > left as u64 {
            bail_invalid!("{}: {}: string length {len} exceeds the {left} bytes left in the file", self.label, what());
        }
        self.take(len as usize, what)
    }

    fn string(&mut self, what: What<'_>) -> Result<String> {
        let bytes = self.string_bytes(what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => bail_invalid!(
                "{}: {}: string is not valid UTF-8 (invalid byte at position {})",
                self.label,
                what(),
                e.valid_up_to()
            ),
        }
    }
}
