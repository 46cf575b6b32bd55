//! Tensor descriptors and the shape/name rules that the reader and the writer share, so that
//! whatever we write we can read back (and ggml can load).

use crate::ggml_type::GgmlType;

/// ggml's `GGML_MAX_NAME`: a tensor name must be *shorter* than this many bytes (ggml keeps it
/// in a fixed `char[64]` with a terminating NUL).
pub const MAX_NAME_BYTES: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// A tensor as described in a GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml dimensions, innermost (contiguous) first; 1 to 4 entries, exactly as stored in the
    /// file (trailing 1s are kept so the header round-trips byte for byte).
    pub ne: Vec<u64>,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        n_elements(&self.ne)
    }

    /// Bytes of the tensor data (without padding). Saturates instead of overflowing for a
    /// hand-built descriptor; descriptors from a parsed file are known not to overflow.
    pub fn n_bytes(&self) -> u64 {
        n_bytes(self.ty, &self.ne)
    }
}

/// A tensor to be written: like [`TensorInfo`] without the offset, which the writer computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfoOut {
    pub name: String,
    pub ty: GgmlType,
    pub ne: Vec<u64>,
}

impl TensorInfoOut {
    pub fn new(name: impl Into<String>, ty: GgmlType, ne: impl Into<Vec<u64>>) -> Self {
        TensorInfoOut { name: name.into(), ty, ne: ne.into() }
    }

    pub fn n_elements(&self) -> u64 {
        n_elements(&self.ne)
    }

    pub fn n_bytes(&self) -> u64 {
        n_bytes(self.ty, &self.ne)
    }
}

impl From<&TensorInfo> for TensorInfoOut {
    fn from(t: &TensorInfo) -> Self {
        TensorInfoOut { name: t.name.clone(), ty: t.ty, ne: t.ne.clone() }
    }
}

fn n_elements(ne: &[u64]) -> u64 {
    ne.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
}

fn n_bytes(ty: GgmlType, ne: &[u64]) -> u64 {
    let (blck, size) = ty.block_geometry();
    (n_elements(ne) / blck as u64).saturating_mul(size as u64)
}

/// Rounds `n` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn pad_to(n: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(n.checked_add(align - 1)? & !(align - 1))
}

/// Checks a tensor name the way ggml does, plus UTF-8 (checked by the caller's `String`) and no
/// NUL byte: ggml copies names into a C string and would silently truncate at the NUL, making two
/// different names collide. Returns the problem without the file/tensor prefix.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.len() >= MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes long; ggml allows at most {} (GGML_MAX_NAME - 1)",
            name.len(),
            MAX_NAME_BYTES - 1
        ));
    }
    if name.as_bytes().contains(&0) {
        return Err("name contains a NUL byte".to_string());
    }
    Ok(())
}

/// Validates a shape for `ty` as ggml's loader does and returns the data size in bytes. Zero
/// dimensions are rejected: ggml's element-count check divides by every dimension, so it cannot
/// load such a tensor.
pub(crate) fn check_shape(ty: GgmlType, ne: &[u64]) -> Result<u64, String> {
    if ne.is_empty() || ne.len() > MAX_DIMS {
        return Err(format!("has {} dimensions; GGUF allows 1 to {MAX_DIMS}", ne.len()));
    }
    // ggml stores dimensions as int64 and the element count must fit one too.
    let mut count: i64 = 1;
    for (j, &d) in ne.iter().enumerate() {
        if d == 0 {
            return Err(format!("dimension {j} is 0 (shape {ne:?})"));
        }
        let d = i64::try_from(d).map_err(|_| format!("dimension {j} = {d} does not fit in an int64 (shape {ne:?})"))?;
        count = count.checked_mul(d).ok_or_else(|| format!("shape {ne:?} has more elements than fit in an int64"))?;
    }
    let (blck, size) = ty.block_geometry();
    let row = ne[0];
    if !row.is_multiple_of(blck as u64) {
        return Err(format!("row length ne[0] = {row} is not a multiple of the {} block size {blck}", ty.name()));
    }
    // count fits in i64 and size is small, so this only overflows for absurd shapes; still checked.
    (count as u64 / blck as u64)
        .checked_mul(size as u64)
        .ok_or_else(|| format!("shape {ne:?} of type {} overflows a 64-bit byte size", ty.name()))
}
