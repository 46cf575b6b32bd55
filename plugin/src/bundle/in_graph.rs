//! An expert's delta in the form the model's graph applies it: y = W_base x + D x, with W_base
//! left exactly as the file holds it and D a matrix in one of ggml's own types, so ggml's
//! kernels (SIMD on the CPU, CUDA and the other backends) compute the delta's product.
//!
//! - A codec delta becomes its low-bit codes as a ggml matrix ([`GraphDelta::data`], every
//!   channel decoded from its code) plus, for the salient channels, the difference between the
//!   expert's value and what that matrix holds there ([`GraphDelta::salient`], F16): the graph
//!   adds D_low x + D_sal x[salient], which is the codec's delta up to the chosen type's rounding.
//!   The codes go into the type without a search: 1-2 bit codes into Q2_K (rows of a multiple
//!   of 256 values: each 16-value block's step becomes d * scale with a 4-bit scale, d the
//!   256-value block's largest step / 15, so a step moves by up to d/2 and one below d/2 of
//!   the block's largest becomes 0), else 1-3 bit codes into Q4_0, exactly (a level (2c - 2^b + 1) * step/2 is a
//!   Q4_0 value with d = step/2); any other type (`requested`) requantizes the decoded codes.
//! - A low-rank delta is its two factors as stored ([`super::low_rank`]): the graph adds
//!   B (A x), with A in [`GraphDelta::data`] and B in [`GraphDelta::b`].
//! - A dense delta (embeddings, output) is already a ggml matrix and is used as stored.
//! - A norm's weight, which experts replace whole, is the expert's vector (F32): the graph
//!   multiplies each token by its expert's.
//! - Any other tensor some expert replaces whole (biases, lossless embeddings) is not applied in
//!   the graph: [`crate::switch::Switcher`] writes it into the host's tensor on a switch.

use half::f16;
use rayon::prelude::*;

use crate::build_bundle::is_linear_weight;
use crate::codec::{self, bitpack, CompressedDelta, StepLayout};
use crate::error::{Error, Result};
use crate::quants;
use crate::GgmlType;

use super::low_rank::FACTOR_TYPE;
use super::TensorDelta;

/// One expert's delta of one weight, ready for the graph.
#[derive(Debug)]
pub struct GraphDelta {
    /// The type of `data` (and of `b`): `n_out` rows of `n_in` values, the base tensor's shape;
    /// for a low-rank delta, factor A: `rank` rows of `n_in` values.
    pub ty: GgmlType,
    pub data: Vec<u8>,
    /// A low-rank delta's rank (0: `data` is the whole delta) and its factor B: `n_out` rows of
    /// `rank` values.
    pub rank: usize,
    pub b: Vec<u8>,
    /// Input channels that get a correction (sorted, distinct).
    pub salient_idx: Vec<i32>,
    /// Row-major `[n_out][salient_idx.len()]`: the expert's delta minus `data`'s value there.
    pub salient: Vec<f16>,
}

/// What a [`GraphDelta`] will hold, known without converting it: the graph's tensors are
/// allocated from this first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphDeltaShape {
    pub ty: GgmlType,
    pub rank: usize,
    pub n_salient: usize,
}

impl GraphDelta {
    /// A delta that is one matrix (or vector) in `ty`, with no other part.
    fn whole(ty: GgmlType, data: Vec<u8>) -> GraphDelta {
        GraphDelta { ty, data, rank: 0, b: Vec::new(), salient_idx: Vec::new(), salient: Vec::new() }
    }
}

/// Whether the product with weight `name` reaches llama.cpp's graph through the calls the
/// patched build applies deltas in (`build_lora_mm`, `build_lora_mm_id`, the token-embedding
/// lookup): the linear weights, the output and the token embeddings.
pub fn applies_in_graph(name: &str, ne: &[u64]) -> bool {
    ne.len() >= 2 && (is_linear_weight(name, ne) || name == "token_embd.weight" || name == "output.weight")
}

/// Whether `name` is a norm's weight, which llama.cpp applies in `build_norm`, where the
/// patched build multiplies each token by its expert's.
pub fn is_norm_weight(name: &str, ne: &[u64]) -> bool {
    ne.len() == 1 && name.ends_with("_norm.weight")
}

/// Whether a type of `max_bits`-bit values in rows of `row_block` values with one scale per
/// `scale_block` values holds the codes of a codec delta of `bits` bits, rows of `n_in` values
/// and steps laid out as `layout`, as they are: each step falls on the type's scale blocks.
fn holds_codes(max_bits: u8, row_block: usize, scale_block: usize, bits: u8, n_in: usize, layout: StepLayout) -> bool {
    bits <= max_bits
        && n_in.is_multiple_of(row_block)
        && match layout {
            StepLayout::Matrix => true,
            StepLayout::Groups { group } => group == n_in || group.is_multiple_of(scale_block),
        }
}

/// Whether Q4_0 holds the codes exactly: 1-3 bits, and one step per 32-channel block.
fn q4_0_is_exact(bits: u8, n_in: usize, layout: StepLayout) -> bool {
    holds_codes(3, 32, 32, bits, n_in, layout)
}

/// Whether Q2_K takes the codes as they are (see the module doc): 1-2 bits, rows of a multiple
/// of 256 values, and one step per 16-channel block.
fn q2_k_takes_codes(bits: u8, n_in: usize, layout: StepLayout) -> bool {
    holds_codes(2, 256, 16, bits, n_in, layout)
}

/// The type a codec delta (as in [`q4_0_is_exact`]) is applied in: `requested` when given,
/// else Q2_K where it takes the codes as they are (2.625 bits per value, the codec's ~2.3
/// stored; and ggml's fastest 2-bit kernels), else Q4_0 where it holds them exactly, else Q8_0.
pub fn codec_type(
    bits: u8,
    n_in: usize,
    layout: StepLayout,
    requested: Option<GgmlType>,
    what: &str,
) -> Result<GgmlType> {
    let ty = match requested {
        Some(ty) => ty,
        None if q2_k_takes_codes(bits, n_in, layout) => GgmlType::Q2_K,
        None if q4_0_is_exact(bits, n_in, layout) => GgmlType::Q4_0,
        None => GgmlType::Q8_0,
    };
    if !quants::can_write_rows(ty, n_in as u64) {
        return Err(Error::Unsupported(format!(
            "{what}: the delta cannot be applied as {ty} (rows of {n_in} values; types: {})",
            quants::QUANTIZABLE.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(ty)
}

/// Convert a stored delta into the form the graph applies (`requested`: the codec deltas'
/// type, None for [`codec_type`]'s choice; dense deltas keep their stored type; a tensor
/// replaced whole is the expert's tensor in F32).
pub fn graph_delta(delta: TensorDelta, requested: Option<GgmlType>, what: &str) -> Result<GraphDelta> {
    match delta {
        TensorDelta::Codec(c) => codec_graph_delta(&c, codec_type(c.bits, c.n_in, c.layout, requested, what)?),
        // the stored bytes are the graph's: moved, not copied
        TensorDelta::LowRank(l) => Ok(GraphDelta { rank: l.rank, b: l.b, ..GraphDelta::whole(FACTOR_TYPE, l.a) }),
        TensorDelta::Dense { ty, data } => Ok(GraphDelta::whole(ty, data)),
        TensorDelta::Replace { data } => Ok(GraphDelta::whole(GgmlType::F32, bytemuck::cast_slice(&data).to_vec())),
    }
}

fn codec_graph_delta(c: &CompressedDelta, ty: GgmlType) -> Result<GraphDelta> {
    let row_bytes = ty.row_bytes(c.n_in as u64)? as usize;
    let mut data = vec![0u8; row_bytes * c.n_out];
    let direct: Option<fn(&CompressedDelta, usize, &mut [u8])> = match ty {
        GgmlType::Q2_K if q2_k_takes_codes(c.bits, c.n_in, c.layout) => Some(write_q2_k_row),
        GgmlType::Q4_0 if q4_0_is_exact(c.bits, c.n_in, c.layout) => Some(write_q4_0_row),
        _ => None,
    };
    data.par_chunks_mut(row_bytes).enumerate().try_for_each_init(
        || vec![0.0f32; c.n_in],
        |row, (r, dst)| {
            if let Some(write) = direct {
                write(c, r, dst);
                return Ok(());
            }
            row.fill(0.0);
            codec::add_codes_row(c, r, row);
            quants::quantize_row(ty, row, dst)
        },
    )?;
    let n_sal = c.salient_idx.len();
    let mut salient = vec![f16::ZERO; n_sal * c.n_out];
    if n_sal > 0 {
        salient.par_chunks_mut(n_sal).enumerate().try_for_each_init(
            || vec![0.0f32; c.n_in],
            |row, (r, fix)| {
                quants::dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], row)?;
                for (k, (f, &ch)) in fix.iter_mut().zip(&c.salient_idx).enumerate() {
                    *f = f16::from_f32(codec::salient_value(c, r, k) - row[ch as usize]);
                }
                Ok::<_, Error>(())
            },
        )?;
    }
    let salient_idx = c.salient_idx.iter().map(|&i| i as i32).collect();
    Ok(GraphDelta { salient_idx, salient, ..GraphDelta::whole(ty, data) })
}

/// The step of row `r`'s channel `ch`.
fn step_at(c: &CompressedDelta, r: usize, ch: usize) -> f32 {
    let (group, steps) = c.row_steps(r);
    steps[ch / group].to_f32()
}

/// Row `r`'s codes, one per byte.
fn unpacked_row(c: &CompressedDelta, r: usize) -> Vec<u8> {
    let mut codes = vec![0u8; c.n_in];
    bitpack::unpack(c.packed_row(r), c.bits, &mut codes);
    codes
}

/// Row `r` of a 1-2 bit codec delta as Q2_K blocks: a Q2_K value is d * s * q - dmin * m for
/// its 16-value block's 4-bit s and m; with q the code, s = round(step / d), m = s and
/// dmin = d * (2^bits - 1)/2 it is (q - (2^bits - 1)/2) * d * s, the code's level at step d * s.
fn write_q2_k_row(c: &CompressedDelta, r: usize, dst: &mut [u8]) {
    const QK: usize = 256;
    let codes = unpacked_row(c, r);
    let half = ((1u32 << c.bits) - 1) as f32 / 2.0;
    for (b, (block, out)) in codes.chunks_exact(QK).zip(dst.chunks_exact_mut(84)).enumerate() {
        let steps: [f32; 16] = std::array::from_fn(|j| step_at(c, r, b * QK + 16 * j));
        let max = steps.iter().fold(0.0f32, |m, &s| m.max(s));
        // d with an even mantissa, so that dmin = 1.5 d is exact in f16 too
        let d = f16::from_bits((f16::from_f32(max / 15.0).to_bits() + 1) & !1);
        let df = d.to_f32();
        out.fill(0);
        for (j, &s) in steps.iter().enumerate() {
            let sc = if df > 0.0 { ((s / df).round() as u8).min(15) } else { 0 };
            out[j] = sc | (sc << 4);
        }
        for (e, &q) in block.iter().enumerate() {
            let (n, rest) = (e / 128, e % 128);
            out[16 + 32 * n + rest % 32] |= q << (2 * (rest / 32));
        }
        out[80..82].copy_from_slice(&d.to_le_bytes());
        out[82..84].copy_from_slice(&f16::from_f32(df * half).to_le_bytes());
    }
}

/// Row `r` of a 1-3 bit codec delta as Q4_0 blocks, exactly: code k stands for
/// (k - (2^bits - 1)/2) * step = (2k - 2^bits + 1) * step/2, i.e. Q4_0's d = step/2 and
/// q = 2k - 2^bits + 9 (within 1..15).
fn write_q4_0_row(c: &CompressedDelta, r: usize, dst: &mut [u8]) {
    const QK: usize = 32;
    let codes = unpacked_row(c, r);
    let offset = 9 - (1i32 << c.bits);
    for (b, (block, out)) in codes.chunks_exact(QK).zip(dst.chunks_exact_mut(18)).enumerate() {
        // Halving an f16 is exact (bar subnormals, which no fitted step is).
        out[..2].copy_from_slice(&f16::from_f32(step_at(c, r, b * QK) / 2.0).to_le_bytes());
        let q = |k: u8| (2 * k as i32 + offset) as u8;
        for j in 0..QK / 2 {
            out[2 + j] = q(block[j]) | (q(block[j + QK / 2]) << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{compress, CodecParams, Method};

    fn delta(n_in: usize, n_out: usize, bits: u8, group: usize, salient: f32) -> CompressedDelta {
        let d: Vec<f32> = (0..n_in * n_out).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.01).collect();
        let p = CodecParams {
            method: Method::Salient,
            bits,
            group_size: group,
            salient_fraction: salient,
            salient_bits: 16,
        };
        compress(&d, n_in, n_out, None, &p).unwrap()
    }

    /// D_low x + D_sal x[salient], decoded, against the codec's own decode.
    fn applied(g: &GraphDelta, n_in: usize, n_out: usize) -> Vec<f32> {
        let rb = g.ty.row_bytes(n_in as u64).unwrap() as usize;
        let mut out = vec![0.0f32; n_in * n_out];
        let n_sal = g.salient_idx.len();
        for (r, row) in out.chunks_exact_mut(n_in).enumerate() {
            quants::dequantize_row(g.ty, &g.data[r * rb..(r + 1) * rb], row).unwrap();
            for (k, &ch) in g.salient_idx.iter().enumerate() {
                row[ch as usize] += g.salient[r * n_sal + k].to_f32();
            }
        }
        out
    }

    #[test]
    fn q4_0_holds_one_to_three_bit_codes_exactly() {
        for bits in 1..=3 {
            let c = delta(96, 8, bits, 32, 0.02);
            assert_eq!(codec_type(c.bits, c.n_in, c.layout, None, "t").unwrap(), GgmlType::Q4_0);
            let g = graph_delta(TensorDelta::Codec(c.clone()), None, "t").unwrap();
            let want = codec::decompress_f32(&c);
            let got = applied(&g, 96, 8);
            let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                // salient channels pass through one f16 rounding of the correction
                let tol = if g.salient_idx.contains(&((i % 96) as i32)) { 1e-3 * max } else { 0.0 };
                assert!((a - b).abs() <= tol, "{bits} bits, element {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q2_k_takes_two_bit_codes_with_only_the_steps_rounded() {
        for (bits, group) in [(2, 128), (1, 512), (2, 32)] {
            let c = delta(512, 4, bits, group, 0.01);
            assert_eq!(codec_type(c.bits, c.n_in, c.layout, None, "t").unwrap(), GgmlType::Q2_K);
            let g = graph_delta(TensorDelta::Codec(c.clone()), None, "t").unwrap();
            let want = codec::decompress_f32(&c);
            let got = applied(&g, 512, 4);
            // 4-bit scales of each block's largest step: a step moves by up to 1/30 of that
            let err = codec::relative_error(&got, &want);
            assert!(err < 0.04, "{bits} bits, groups of {group}: relative error {err}");
        }
    }

    #[test]
    fn other_types_requantize_and_salient_channels_stay_exact() {
        let c = delta(512, 4, 2, 128, 0.01);
        let g = graph_delta(TensorDelta::Codec(c.clone()), Some(GgmlType::Q4_1), "t").unwrap();
        assert_eq!(g.ty, GgmlType::Q4_1);
        let want = codec::decompress_f32(&c);
        let got = applied(&g, 512, 4);
        assert!(codec::relative_error(&got, &want) < 0.1, "{}", codec::relative_error(&got, &want));
        let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for r in 0..4 {
            for &ch in &g.salient_idx {
                let (a, b) = (got[r * 512 + ch as usize], want[r * 512 + ch as usize]);
                assert!((a - b).abs() <= 1e-3 * max, "row {r} channel {ch}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_type_that_cannot_hold_the_rows_is_refused_by_name() {
        let c = delta(96, 2, 2, 32, 0.0);
        assert_eq!(codec_type(c.bits, c.n_in, c.layout, None, "t").unwrap(), GgmlType::Q4_0, "rows of 96: no Q2_K");
        let e =
            codec_type(c.bits, c.n_in, c.layout, Some(GgmlType::Q2_K), "blk.0.attn_q.weight").unwrap_err().to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("q2_K"), "{e}");
        let norm = graph_delta(TensorDelta::Replace { data: vec![0.5, 2.0] }, None, "blk.0.attn_norm.weight").unwrap();
        assert_eq!((norm.ty, quants::dequantize(norm.ty, &norm.data, 2).unwrap()), (GgmlType::F32, vec![0.5, 2.0]));
    }

    #[test]
    fn four_bit_codes_fall_back_to_q8_0() {
        let c = delta(256, 2, 4, 128, 0.0);
        assert_eq!(codec_type(c.bits, c.n_in, c.layout, None, "t").unwrap(), GgmlType::Q8_0);
    }
}
