//! Decompression on the CPU: W_base + D written row by row into a caller's buffer, in
//! parallel. Codes are decoded through per-byte lookup tables so the inner loop is a
//! fixed-width multiply-add the compiler vectorises.

use std::sync::OnceLock;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{CompressedDelta, SalientValues};
use crate::error::{Error, Result};
use crate::quants;
use crate::GgmlType;

/// Where reconstructed weights go. `Ggml` re-quantizes each row into a ggml type.
pub enum Output<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
    Ggml(GgmlType, &'a mut [u8]),
}

impl<'a> Output<'a> {
    /// View `bytes` as the elements of float type `ty` (f32, f16, bf16), refusing misaligned
    /// or odd-sized memory with an error instead of panicking, or as rows of a quantized type
    /// (`Ggml`). The bytes are native-endian floats, which is GGUF's little-endian layout on
    /// every host switchyard builds for.
    pub fn from_bytes(ty: GgmlType, bytes: &'a mut [u8]) -> Result<Output<'a>> {
        fn view<T: bytemuck::Pod>(b: &mut [u8]) -> Result<&mut [T]> {
            bytemuck::try_cast_slice_mut(b)
                .map_err(|e| Error::Invalid(format!("buffer cannot hold {}: {e:?}", std::any::type_name::<T>())))
        }
        Ok(match ty {
            GgmlType::F32 => Output::F32(view(bytes)?),
            GgmlType::F16 => Output::F16(view(bytes)?),
            GgmlType::BF16 => Output::BF16(view(bytes)?),
            other if quants::can_quantize(other) => Output::Ggml(other, bytes),
            other => crate::bail_unsupported!("materializing into {other} is not supported"),
        })
    }

    fn ty(&self) -> GgmlType {
        match self {
            Output::F32(_) => GgmlType::F32,
            Output::F16(_) => GgmlType::F16,
            Output::BF16(_) => GgmlType::BF16,
            Output::Ggml(t, _) => *t,
        }
    }
}

/// Lookup tables: byte -> the levels (code - L) of the codes it holds.
struct Luts {
    b1: [[f32; 8]; 256],
    b2: [[f32; 4]; 256],
    b4: [[f32; 2]; 256],
}

fn luts() -> &'static Luts {
    static LUTS: OnceLock<Luts> = OnceLock::new();
    LUTS.get_or_init(|| {
        fn table<const N: usize>(bits: u32) -> [[f32; N]; 256] {
            let half = ((1u32 << bits) - 1) as f32 / 2.0;
            let mask = (1u32 << bits) - 1;
            std::array::from_fn(|b| std::array::from_fn(|k| ((b as u32 >> (k as u32 * bits)) & mask) as f32 - half))
        }
        Luts { b1: table(1), b2: table(2), b4: table(4) }
    })
}

/// Elements decoded per unrolled iteration: 16 keeps the loop overhead under one instruction
/// per element for every code width.
const UNROLL: usize = 16;

#[inline(always)]
fn add_lut<const N: usize>(codes: &[u8], lut: &[[f32; N]; 256], step: f32, row: &mut [f32]) {
    let bytes = UNROLL / N;
    let (codes_main, codes_tail) = codes.split_at(codes.len() / bytes * bytes);
    let (row_main, row_tail) = row.split_at_mut(codes_main.len() * N);
    for (cb, out) in codes_main.chunks_exact(bytes).zip(row_main.chunks_exact_mut(UNROLL)) {
        for (j, &b) in cb.iter().enumerate() {
            let l = &lut[b as usize];
            for i in 0..N {
                out[j * N + i] += step * l[i];
            }
        }
    }
    for (&b, out) in codes_tail.iter().zip(row_tail.chunks_exact_mut(N)) {
        let l = &lut[b as usize];
        for i in 0..N {
            out[i] += step * l[i];
        }
    }
}

#[inline(always)]
fn add_3bit(codes: &[u8], step: f32, row: &mut [f32]) {
    for (src, out) in codes.chunks_exact(3).zip(row.chunks_exact_mut(8)) {
        let v = u32::from_le_bytes([src[0], src[1], src[2], 0]);
        for (i, o) in out.iter_mut().enumerate() {
            *o += step * (((v >> (3 * i)) & 7) as f32 - 3.5);
        }
    }
}

/// AVX2 decode of one group of 2-bit codes: 8 codes (2 bytes) per step, isolated with a
/// variable shift, converted and centred exactly, then multiplied and added as the table path
/// does (no FMA), so the results are bit-identical to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn add_2bit_avx2(codes: &[u8], step: f32, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let steps = row.len().min(codes.len() * 4) / 8;
    let shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let mask = _mm256_set1_epi32(3);
    let half = _mm256_set1_ps(1.5);
    let stepv = _mm256_set1_ps(step);
    let (c, r) = (codes.as_ptr(), row.as_mut_ptr());
    for k in 0..steps {
        // SAFETY: k < steps: bytes 2k, 2k+1 exist in codes and floats 8k..8k+8 in row.
        unsafe {
            let word = u16::from_le_bytes([*c.add(2 * k), *c.add(2 * k + 1)]) as i32;
            let q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), mask);
            let level = _mm256_sub_ps(_mm256_cvtepi32_ps(q), half);
            let p = r.add(8 * k);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(stepv, level)));
        }
    }
}

fn have_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Add row `r` of the decoded delta to `row`, which holds the base weights of that row.
pub fn add_delta_row(delta: &CompressedDelta, r: usize, row: &mut [f32]) {
    let n_sal = delta.salient_idx.len();
    // Salient channels replace whatever their (ignored) codes decode to: remember the base.
    let mut base_at_salient = [0.0f32; 64];
    let mut spill = Vec::new();
    let saved: &mut [f32] = if n_sal <= 64 {
        &mut base_at_salient[..n_sal]
    } else {
        spill.resize(n_sal, 0.0);
        &mut spill
    };
    for (s, &c) in saved.iter_mut().zip(&delta.salient_idx) {
        *s = row[c as usize];
    }
    add_codes_row(delta, r, row);
    for ((&c, &b), k) in delta.salient_idx.iter().zip(saved.iter()).zip(0..) {
        row[c as usize] = b + salient_value(delta, r, k);
    }
}

/// The delta's value at row `r`, salient channel `k` (the k-th of `salient_idx`).
#[inline]
pub fn salient_value(delta: &CompressedDelta, r: usize, k: usize) -> f32 {
    let n_sal = delta.salient_idx.len();
    match &delta.salient {
        SalientValues::F16(v) => v[r * n_sal + k].to_f32(),
        SalientValues::Q8 { values, steps } => values[r * n_sal + k] as f32 * steps[k].to_f32(),
    }
}

/// Add row `r` of the low-bit codes, every channel decoded from its code (salient channels
/// included, whose codes the full delta ignores), to `row`.
pub fn add_codes_row(delta: &CompressedDelta, r: usize, row: &mut [f32]) {
    let codes = delta.packed_row(r);
    let (group, steps) = delta.row_steps(r);
    let group_bytes = group * delta.bits as usize / 8;
    let l = luts();
    let avx2 = delta.bits == 2 && have_avx2();
    for ((cg, rg), step) in codes.chunks(group_bytes).zip(row.chunks_mut(group)).zip(steps) {
        let s = step.to_f32();
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked once above); groups hold multiples of 8 codes.
            unsafe { add_2bit_avx2(cg, s, rg) };
            continue;
        }
        match delta.bits {
            1 => add_lut(cg, &l.b1, s, rg),
            2 => add_lut(cg, &l.b2, s, rg),
            3 => add_3bit(cg, s, rg),
            4 => add_lut(cg, &l.b4, s, rg),
            _ => unreachable!("validated"),
        }
    }
}

/// The dense delta D, for evaluation.
pub fn decompress_f32(delta: &CompressedDelta) -> Vec<f32> {
    let mut out = vec![0.0f32; delta.n_in * delta.n_out];
    out.par_chunks_mut(delta.n_in).enumerate().for_each(|(r, row)| add_delta_row(delta, r, row));
    out
}

/// Write W_base + delta into `out`: `base` holds `n_rows` rows of `n_in` elements of
/// `base_ty`; `add` adds the delta of row r to a row of base weights (pass a no-op for an
/// unchanged tensor). Rows are processed in parallel, each through an f32 scratch row.
pub fn reconstruct_into<F>(
    base_ty: GgmlType,
    base: &[u8],
    n_in: usize,
    n_rows: usize,
    out: Output<'_>,
    add: F,
) -> Result<()>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let base_row = base_ty.row_bytes(n_in as u64)? as usize;
    if base.len() != base_row * n_rows {
        crate::bail_invalid!("base has {} bytes, expected {n_rows} rows of {base_row}", base.len());
    }
    let out_ty = out.ty();
    let out_row = out_ty.row_bytes(n_in as u64)? as usize;
    let bad_out =
        |len: usize| Error::Invalid(format!("output buffer holds {len} bytes, expected {}", out_row * n_rows));
    // Blocks of rows big enough to amortise scheduling, small enough to balance two cores.
    let rows_per_task = (256 * 1024 / (n_in * 4)).clamp(1, 64);

    macro_rules! run {
        ($buf:expr, $elems_per_row:expr, $store:expr) => {{
            let buf = $buf;
            if buf.len() != $elems_per_row * n_rows {
                return Err(bad_out(buf.len() * out_row / $elems_per_row.max(1)));
            }
            buf.par_chunks_mut($elems_per_row * rows_per_task).enumerate().try_for_each_init(
                || vec![0.0f32; n_in],
                |scratch, (t, chunk)| -> Result<()> {
                    for (i, dst) in chunk.chunks_exact_mut($elems_per_row).enumerate() {
                        let r = t * rows_per_task + i;
                        quants::dequantize_row(base_ty, &base[r * base_row..(r + 1) * base_row], scratch)?;
                        add(r, scratch);
                        $store(scratch.as_slice(), dst)?;
                    }
                    Ok(())
                },
            )
        }};
    }
    match out {
        // F32 needs no scratch row: decode straight into the caller's buffer.
        Output::F32(buf) => {
            if buf.len() != n_in * n_rows {
                return Err(bad_out(buf.len() * 4));
            }
            buf.par_chunks_mut(n_in * rows_per_task).enumerate().try_for_each(|(t, chunk)| -> Result<()> {
                for (i, dst) in chunk.chunks_exact_mut(n_in).enumerate() {
                    let r = t * rows_per_task + i;
                    quants::dequantize_row(base_ty, &base[r * base_row..(r + 1) * base_row], dst)?;
                    add(r, dst);
                }
                Ok(())
            })
        }
        Output::F16(buf) => run!(buf, n_in, |s: &[f32], d: &mut [f16]| -> Result<()> {
            quants::f32_to_f16(s, d);
            Ok(())
        }),
        Output::BF16(buf) => run!(buf, n_in, |s: &[f32], d: &mut [bf16]| -> Result<()> {
            d.convert_from_f32_slice(s);
            Ok(())
        }),
        Output::Ggml(ty, buf) => run!(buf, out_row, |s: &[f32], d: &mut [u8]| quants::quantize_row(ty, s, d)),
    }
}
