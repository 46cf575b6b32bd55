//! W_base + D for one tensor into a caller's buffer: the single reconstruction path used by
//! `extract`, the benchmarks and the C ABI.

use crate::codec::{reconstruct_into, Output};
use crate::error::Result;
use crate::gguf::TensorInfo;

use super::delta::{rows_of, TensorDelta};

/// Reconstruct base tensor `info` (bytes `base`) with `delta` applied (None: the base itself).
pub fn materialize(info: &TensorInfo, base: &[u8], delta: Option<&TensorDelta>, out: Output<'_>) -> Result<()> {
    let (n_in, n_rows) = rows_of(&info.ne);
    let res = match delta {
        Some(d) => reconstruct_into(info.ty, base, n_in, n_rows, out, |r, row| d.apply_row(r, row)),
        None => reconstruct_into(info.ty, base, n_in, n_rows, out, |_, _| {}),
    };
    res.map_err(|e| crate::Error::Invalid(format!("tensor '{}': {e}", info.name)))
}
