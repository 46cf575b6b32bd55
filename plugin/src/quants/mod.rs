//! CPU (de)quantization of ggml tensor types.
//!
//! Bit layouts are exactly ggml's (`ggml-common.h` block structs) and the arithmetic follows
//! ggml's *reference* C routines (`dequantize_row_*`, `quantize_row_*_ref` in `ggml-quants.c`)
//! operation for operation, so results are bit-identical: f16 scales are widened to f32 first,
//! products are formed in the same order (`d * q`, `d * q + m`, `dl * q - ml`), and nothing is
//! fused into an FMA (Rust never contracts `a * b + c` on its own).
//!
//! Entry points:
//! - [`dequantize_row`] / [`quantize_row`]: one run of whole blocks, caller-provided buffers.
//! - [`dequantize`] / [`quantize`]: allocating convenience wrappers.
//! - [`dequantize_par`] / [`dequantize_par_into`] / [`quantize_par`]: whole tensors, split
//!   over rows with rayon (results identical to the serial functions).
//!
//! The types handled are listed once, in [`DEQUANTIZABLE`] and [`QUANTIZABLE`] (the k-quants
//! as ggml's reference quantizers make them, i.e. without an importance matrix); the tests
//! iterate those lists.
//!
//! Data is little-endian (as in GGUF files) regardless of the host.

mod float;
pub use float::f32_to_f16;
mod kquantize;
mod kquants;
mod legacy;
mod nonlinear;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use rayon::prelude::*;

/// Elements handed to one rayon task by the `_par` functions (rounded to whole rows).
const PAR_CHUNK_ELEMS: usize = 1 << 16;

/// Every type [`dequantize_row`] handles.
pub const DEQUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// Every type [`quantize_row`] handles (each of them also in [`DEQUANTIZABLE`]).
pub const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::MXFP4,
];

/// Whether [`quantize_row`] can write rows of `n` values in `ty`: a type it handles, and rows
/// of whole blocks.
pub fn can_write_rows(ty: GgmlType, n: u64) -> bool {
    can_quantize(ty) && n.is_multiple_of(ty.block_size() as u64)
}

/// Whether [`dequantize_row`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    DEQUANTIZABLE.contains(&ty)
}

/// Whether [`quantize_row`] handles `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    QUANTIZABLE.contains(&ty)
}

/// Bytes that `n` elements of `ty` take, as usize; `what` prefixes the error message.
fn bytes_for(ty: GgmlType, n: usize, what: &str) -> Result<usize> {
    let bytes = ty.row_bytes(n as u64).map_err(|e| Error::Invalid(format!("{what} {ty}: {e}")))?;
    usize::try_from(bytes)
        .map_err(|_| Error::Invalid(format!("{what} {ty}: {n} elements ({bytes} bytes) do not fit in memory")))
}

/// Dequantize `dst.len()` elements of type `ty` from `src` into `dst`.
///
/// `dst.len()` must be a multiple of the block size of `ty` and `src` exactly
/// `ty.row_bytes(dst.len())` bytes. The result is bit-identical to ggml's reference
/// `dequantize_row_*` (and `ggml_fp16_to_fp32_row` / `ggml_bf16_to_fp32_row` for F16 / BF16).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(ty) {
        return Err(Error::Unsupported(format!("dequantizing {ty} is not supported")));
    }
    let need = bytes_for(ty, dst.len(), "dequantizing")?;
    if src.len() != need {
        return Err(Error::Invalid(format!(
            "dequantizing {ty}: source is {} bytes but {} elements take {need} bytes",
            src.len(),
            dst.len()
        )));
    }
    use GgmlType::*;
    match ty {
        F32 => float::dequant_f32(src, dst),
        F16 => float::dequant_f16(src, dst),
        BF16 => float::dequant_bf16(src, dst),
        Q4_0 => legacy::dequant_q4_0(src, dst),
        Q4_1 => legacy::dequant_q4_1(src, dst),
        Q5_0 => legacy::dequant_q5_0(src, dst),
        Q5_1 => legacy::dequant_q5_1(src, dst),
        Q8_0 => legacy::dequant_q8_0(src, dst),
        Q2_K => kquants::dequant_q2_k(src, dst),
        Q3_K => kquants::dequant_q3_k(src, dst),
        Q4_K => kquants::dequant_q4_k(src, dst),
        Q5_K => kquants::dequant_q5_k(src, dst),
        Q6_K => kquants::dequant_q6_k(src, dst),
        Q8_K => kquants::dequant_q8_k(src, dst),
        IQ4_NL => nonlinear::dequant_iq4_nl(src, dst),
        IQ4_XS => nonlinear::dequant_iq4_xs(src, dst),
        MXFP4 => nonlinear::dequant_mxfp4(src, dst),
        _ => unreachable!("DEQUANTIZABLE lists {ty} without a dequantizer"),
    }
    Ok(())
}

/// Quantize `src` (a multiple of the block size of `ty`) into `dst`, which must be exactly
/// `ty.row_bytes(src.len())` bytes. Bit-identical to ggml's reference quantizers
/// (`quantize_row_*_ref`, `ggml_fp32_to_fp16_row`, `ggml_fp32_to_bf16_row_ref`); for the
/// k-quants Q2_K..Q6_K that holds for ggml built without FMA contraction of its reference code
/// (as on x86-64), see `kquantize.rs`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if !can_quantize(ty) {
        return Err(Error::Unsupported(format!("quantizing to {ty} is not supported")));
    }
    let need = bytes_for(ty, src.len(), "quantizing to")?;
    if dst.len() != need {
        return Err(Error::Invalid(format!(
            "quantizing to {ty}: destination is {} bytes but {} elements take {need} bytes",
            dst.len(),
            src.len()
        )));
    }
    use GgmlType::*;
    match ty {
        F32 => float::quant_f32(src, dst),
        F16 => float::quant_f16(src, dst),
        BF16 => float::quant_bf16(src, dst),
        Q4_0 => legacy::quant_q4_0(src, dst),
        Q4_1 => legacy::quant_q4_1(src, dst),
        Q5_0 => legacy::quant_q5_0(src, dst),
        Q5_1 => legacy::quant_q5_1(src, dst),
        Q8_0 => legacy::quant_q8_0(src, dst),
        Q2_K => kquantize::quant_q2_k(src, dst),
        Q3_K => kquantize::quant_q3_k(src, dst),
        Q4_K => kquantize::quant_q4_k(src, dst),
        Q5_K => kquantize::quant_q5_k(src, dst),
        Q6_K => kquantize::quant_q6_k(src, dst),
        Q8_K => kquants::quant_q8_k(src, dst),
        MXFP4 => nonlinear::quant_mxfp4(src, dst),
        _ => unreachable!("QUANTIZABLE lists {ty} without a quantizer"),
    }
    Ok(())
}

/// Dequantize `n_elements` elements of `ty` (a multiple of its block size) from `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    if !can_dequantize(ty) {
        return Err(Error::Unsupported(format!("dequantizing {ty} is not supported")));
    }
    // Validate before allocating: a bogus element count must not trigger a huge allocation.
    let need = bytes_for(ty, n_elements, "dequantizing")?;
    if src.len() != need {
        return Err(Error::Invalid(format!(
            "dequantizing {ty}: source is {} bytes but {n_elements} elements take {need} bytes",
            src.len()
        )));
    }
    let mut out = vec![0f32; n_elements];
    dequantize_row(ty, src, &mut out)?;
    Ok(out)
}

/// Quantize all of `src` (a multiple of the block size of `ty`) into a new buffer.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    if !can_quantize(ty) {
        return Err(Error::Unsupported(format!("quantizing to {ty} is not supported")));
    }
    let mut out = vec![0u8; bytes_for(ty, src.len(), "quantizing to")?];
    quantize_row(ty, src, &mut out)?;
    Ok(out)
}

/// Shape checks shared by the parallel functions: returns (rows, bytes per row).
fn tensor_rows(ty: GgmlType, n_elements: usize, ne0: usize, what: &str) -> Result<(usize, usize)> {
    if ne0 == 0 {
        return Err(Error::Invalid(format!("{what} {ty}: row length ne[0] is 0")));
    }
    if n_elements / ne0 * ne0 != n_elements {
        return Err(Error::Invalid(format!(
            "{what} {ty}: {n_elements} elements are not a whole number of rows of ne[0] = {ne0}"
        )));
    }
    Ok((n_elements / ne0, bytes_for(ty, ne0, what)?))
}

/// Rows per rayon task for rows of `ne0` elements.
fn rows_per_task(ne0: usize) -> usize {
    (PAR_CHUNK_ELEMS / ne0).max(1)
}

/// Dequantize a whole tensor of `n_elements` elements with row length `ne0` (ggml's ne[0]),
/// in parallel over groups of rows. Same result as [`dequantize`].
pub fn dequantize_par(ty: GgmlType, src: &[u8], n_elements: usize, ne0: usize) -> Result<Vec<f32>> {
    if !can_dequantize(ty) {
        return Err(Error::Unsupported(format!("dequantizing {ty} is not supported")));
    }
    let (rows, row_bytes) = tensor_rows(ty, n_elements, ne0, "dequantizing")?;
    check_tensor_bytes(ty, src.len(), rows, row_bytes, n_elements, "dequantizing", "source")?;
    let mut out = vec![0f32; n_elements];
    dequantize_par_into(ty, src, ne0, &mut out)?;
    Ok(out)
}

/// Like [`dequantize_par`] into a caller-provided buffer; `dst.len()` is the element count.
pub fn dequantize_par_into(ty: GgmlType, src: &[u8], ne0: usize, dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(ty) {
        return Err(Error::Unsupported(format!("dequantizing {ty} is not supported")));
    }
    let (rows, row_bytes) = tensor_rows(ty, dst.len(), ne0, "dequantizing")?;
    check_tensor_bytes(ty, src.len(), rows, row_bytes, dst.len(), "dequantizing", "source")?;
    let per = rows_per_task(ne0);
    dst.par_chunks_mut(per * ne0).zip(src.par_chunks(per * row_bytes)).try_for_each(|(y, x)| dequantize_row(ty, x, y))
}

/// Quantize a whole tensor with row length `ne0` in parallel over groups of rows.
/// Same result as [`quantize`].
pub fn quantize_par(ty: GgmlType, src: &[f32], ne0: usize) -> Result<Vec<u8>> {
    if !can_quantize(ty) {
        return Err(Error::Unsupported(format!("quantizing to {ty} is not supported")));
    }
    let (rows, row_bytes) = tensor_rows(ty, src.len(), ne0, "quantizing to")?;
    let total = rows
        .checked_mul(row_bytes)
        .ok_or_else(|| Error::Invalid(format!("quantizing to {ty}: {} elements overflow", src.len())))?;
    let mut out = vec![0u8; total];
    let per = rows_per_task(ne0);
    out.par_chunks_mut(per * row_bytes).zip(src.par_chunks(per * ne0)).try_for_each(|(y, x)| quantize_row(ty, x, y))?;
    Ok(out)
}

fn check_tensor_bytes(
    ty: GgmlType,
    have: usize,
    rows: usize,
    row_bytes: usize,
    n_elements: usize,
    what: &str,
    side: &str,
) -> Result<()> {
    let need = rows.checked_mul(row_bytes);
    if need != Some(have) {
        return Err(Error::Invalid(format!(
            "{what} {ty}: {side} is {have} bytes but {n_elements} elements ({rows} rows of {row_bytes} bytes) take {}",
            need.map_or_else(|| "more than fits in memory".to_string(), |n| format!("{n} bytes"))
        )));
    }
    Ok(())
}

// ---- small helpers shared by the kernels -------------------------------------------------

/// ggml_fp16_t stored little-endian -> f32 (exact, like GGML_FP16_TO_FP32).
#[inline(always)]
fn f16_le(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// f32 -> ggml_fp16_t little-endian bytes, round to nearest even (like GGML_FP32_TO_FP16).
#[inline(always)]
fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// A fixed-size view of a slice whose length is known to be `N` (checked once, so that the
/// indexing inside the kernels needs no bounds checks).
#[inline(always)]
fn arr<const N: usize, T>(s: &[T]) -> &[T; N] {
    s.try_into().expect("block slice has the block length")
}

#[inline(always)]
fn arr_mut<const N: usize, T>(s: &mut [T]) -> &mut [T; N] {
    s.try_into().expect("block slice has the block length")
}

/// ggml's `nearest_int`: round to nearest, ties to even, for |x| <= 2^22 (the k-quants only
/// call it in that range).
#[inline(always)]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}
