//! GGUF v3 reading and writing (v2 is read too), following ggml's `gguf.cpp`.
//!
//! Layout of a file (all little-endian):
//!
//! ```text
//! "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv x  (key: string, type u32, value)            value of type array: elem type u32, n u64, n values
//! n_tensors x (name: string, n_dims u32, ne[n_dims] u64, ggml type u32, offset u64)
//! zero padding up to `general.alignment` (default 32)
//! tensor data, each tensor padded with zeros to the alignment, offsets in header order
//! ```
//!
//! Strings are a u64 byte length followed by the bytes (no NUL). The reader enforces ggml's
//! rules (see [`parse_header`]); the writer ([`GgufWriter`]) enforces the same rules so whatever
//! it writes can be read back, and reproduces a parsed file byte for byte.
//!
//! Submodules: [`value`] (typed values), [`metadata`] (ordered key/value map), [`tensor`]
//! (tensor descriptors and shape rules), `read` (the parser), `file` (memory-mapped files) and
//! `write` (the streaming, atomic writer).

mod file;
pub mod metadata;
mod read;
pub mod tensor;
pub mod value;
mod write;

#[cfg(test)]
mod tests;

pub use file::GgufFile;
pub use metadata::Metadata;
pub use read::{parse_header, parse_header_without, GgufHeader};
pub use tensor::{TensorInfo, TensorInfoOut, MAX_DIMS, MAX_NAME_BYTES};
pub use value::{Array, Value, ValueType};
pub use write::{header_bytes, rewrite_with_metadata, write_gguf, GgufWriter};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version this module writes and the newest it reads.
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`]; ggml requires a u32 power of two.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// The alignment `metadata` asks for. ggml reads the key with `gguf_get_val_u32`, which aborts
/// on any other type, so we insist on u32 too rather than accepting a file ggml cannot load.
/// The error has no file prefix; callers add it.
pub(crate) fn alignment_from(metadata: &Metadata) -> std::result::Result<u64, String> {
    match metadata.get(KEY_ALIGNMENT) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => {
            Err(format!("metadata key '{KEY_ALIGNMENT}' is {a}; it must be a non-zero power of two"))
        }
        Some(v) => Err(format!(
            "metadata key '{KEY_ALIGNMENT}' has type {}; it must be a u32 (a non-zero power of two)",
            v.type_name()
        )),
    }
}
