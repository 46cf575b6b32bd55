//! How one base tensor's delta is stored for one expert, and its GGUF tensors.
//!
//! | kind      | tensors (under `switchyard.<i>.<base>.`)                | used for              |
//! |-----------|---------------------------------------------------------|-----------------------|
//! | `Codec`   | `codes` I8, `steps` F16, [`sal_idx` I32, `sal_val` F16/I8, `sal_step` F16] | linear weights |
//! | `LowRank` | `lr_a` Q8_0 [n_in, rank], `lr_b` Q8_0 [rank, n_out]: D ~ B A | linear weights (`pack --rank`) |
//! | `Dense`   | `delta` in a ggml type (Q8_0), shape of the base         | embeddings, output    |
//! | `Replace` | `full` F32, shape of the base                            | norms, biases         |

use std::collections::BTreeMap;

use half::f16;

use crate::codec::{self, CodecParams, CompressedDelta, Method, SalientValues, StepLayout};
use crate::error::{Error, Result};
use crate::gguf::{TensorInfo, TensorInfoOut};
use crate::quants;
use crate::GgmlType;

use super::low_rank::{may_factor, LowRankDelta, FACTOR_TYPE};
use super::naming::delta_tensor;

#[derive(Clone, Debug, PartialEq)]
pub enum TensorDelta {
    Codec(CompressedDelta),
    LowRank(LowRankDelta),
    /// W = W_base + dequantize(data): the delta itself stored in a ggml type.
    Dense {
        ty: GgmlType,
        data: Vec<u8>,
    },
    /// W = data: the expert's tensor stored whole, losslessly.
    Replace {
        data: Vec<f32>,
    },
}

/// (n_in, n_rows) of a base tensor: rows are everything past the first dimension.
pub fn rows_of(ne: &[u64]) -> (usize, usize) {
    let n_in = ne.first().copied().unwrap_or(1) as usize;
    (n_in, ne.iter().skip(1).product::<u64>() as usize)
}

/// The step layout an expert's codec parameters give a matrix of width `n_in`.
pub fn layout_for(params: &CodecParams, n_in: usize) -> StepLayout {
    match params.method {
        Method::BitDelta => StepLayout::Matrix,
        Method::Rtn => StepLayout::Groups { group: n_in },
        Method::Salient if params.group_size == 0 => StepLayout::Groups { group: n_in },
        Method::Salient => StepLayout::Groups { group: params.group_size.min(n_in) },
    }
}

impl TensorDelta {
    pub fn kind(&self) -> &'static str {
        match self {
            TensorDelta::Codec(_) => "codec",
            TensorDelta::LowRank(_) => "lowrank",
            TensorDelta::Dense { .. } => "dense",
            TensorDelta::Replace { .. } => "replace",
        }
    }

    pub fn stored_bytes(&self) -> usize {
        match self {
            TensorDelta::Codec(c) => c.stored_bytes(),
            TensorDelta::LowRank(l) => l.stored_bytes(),
            TensorDelta::Dense { data, .. } => data.len(),
            TensorDelta::Replace { data } => data.len() * 4,
        }
    }

    /// Turn row `r` of the base (in `row`) into row `r` of the expert.
    pub fn apply_row(&self, r: usize, row: &mut [f32]) {
        let n_in = row.len();
        match self {
            TensorDelta::Codec(c) => codec::add_delta_row(c, r, row),
            TensorDelta::LowRank(l) => l.add_row(r, row),
            TensorDelta::Dense { ty, data } => {
                let rb = ty.row_bytes(n_in as u64).expect("validated on read") as usize;
                let mut d = vec![0.0f32; n_in];
                quants::dequantize_row(*ty, &data[r * rb..(r + 1) * rb], &mut d).expect("validated on read");
                row.iter_mut().zip(&d).for_each(|(w, x)| *w += x);
            }
            TensorDelta::Replace { data } => row.copy_from_slice(&data[r * n_in..(r + 1) * n_in]),
        }
    }

    /// The GGUF tensors that store this delta for expert `index` and base tensor `base`.
    pub fn to_tensors(&self, index: usize, base: &str, base_ne: &[u64]) -> Vec<(TensorInfoOut, Vec<u8>)> {
        let name = |part: &str| delta_tensor(index, base, part);
        match self {
            TensorDelta::Replace { data } => {
                vec![(TensorInfoOut::new(name("full"), GgmlType::F32, base_ne.to_vec()), f32_bytes(data))]
            }
            TensorDelta::Dense { ty, data } => {
                vec![(TensorInfoOut::new(name("delta"), *ty, base_ne.to_vec()), data.clone())]
            }
            TensorDelta::LowRank(l) => vec![
                (TensorInfoOut::new(name("lr_a"), FACTOR_TYPE, vec![l.n_in as u64, l.rank as u64]), l.a.clone()),
                (TensorInfoOut::new(name("lr_b"), FACTOR_TYPE, vec![l.rank as u64, l.n_out as u64]), l.b.clone()),
            ],
            TensorDelta::Codec(c) => {
                let n_out = c.n_out as u64;
                let mut out = vec![(
                    TensorInfoOut::new(name("codes"), GgmlType::I8, vec![c.row_code_bytes() as u64, n_out]),
                    c.codes.clone(),
                )];
                let steps_ne = match c.layout {
                    StepLayout::Matrix => vec![1],
                    StepLayout::Groups { .. } => vec![c.groups_per_row() as u64, n_out],
                };
                out.push((TensorInfoOut::new(name("steps"), GgmlType::F16, steps_ne), f16_bytes(&c.steps)));
                let n_sal = c.salient_idx.len() as u64;
                if n_sal > 0 {
                    let idx: Vec<u8> = c.salient_idx.iter().flat_map(|&i| (i as i32).to_le_bytes()).collect();
                    out.push((TensorInfoOut::new(name("sal_idx"), GgmlType::I32, vec![n_sal]), idx));
                    match &c.salient {
                        SalientValues::F16(v) => out.push((
                            TensorInfoOut::new(name("sal_val"), GgmlType::F16, vec![n_sal, n_out]),
                            f16_bytes(v),
                        )),
                        SalientValues::Q8 { values, steps } => {
                            let v: Vec<u8> = values.iter().map(|&x| x as u8).collect();
                            out.push((TensorInfoOut::new(name("sal_val"), GgmlType::I8, vec![n_sal, n_out]), v));
                            out.push((
                                TensorInfoOut::new(name("sal_step"), GgmlType::F16, vec![n_sal]),
                                f16_bytes(steps),
                            ));
                        }
                    }
                }
                out
            }
        }
    }

    /// Rebuild a delta from its GGUF tensors (`parts`: part name -> (info, bytes)), checking
    /// every shape against the base tensor. `what` names the expert and tensor in errors.
    pub fn from_tensors(
        parts: &BTreeMap<&str, (&TensorInfo, &[u8])>,
        params: &CodecParams,
        base: &TensorInfo,
        what: &str,
    ) -> Result<TensorDelta> {
        let get = |part: &str| parts.get(part).copied();
        let expect = |part: &str, info: &TensorInfo, ty: GgmlType, ne: &[u64]| -> Result<()> {
            if info.ty != ty || info.ne != ne {
                return Err(Error::Invalid(format!(
                    "{what}: tensor '{}' is {} {:?}, expected {} {:?} for part '{part}'",
                    info.name, info.ty, info.ne, ty, ne
                )));
            }
            Ok(())
        };
        let keys: Vec<&str> = parts.keys().copied().collect();
        if let Some((info, bytes)) = get("full") {
            expect("full", info, GgmlType::F32, &base.ne)?;
            only(&keys, &["full"], what)?;
            return Ok(TensorDelta::Replace { data: f32_values(bytes) });
        }
        if let Some((info, bytes)) = get("delta") {
            if info.ne != base.ne || !quants::can_dequantize(info.ty) {
                crate::bail_invalid!(
                    "{what}: tensor '{}' is {} {:?}; expected a dequantizable type of shape {:?}",
                    info.name,
                    info.ty,
                    info.ne,
                    base.ne
                );
            }
            only(&keys, &["delta"], what)?;
            return Ok(TensorDelta::Dense { ty: info.ty, data: bytes.to_vec() });
        }
        let (n_in, n_out) = rows_of(&base.ne);
        if get("lr_a").is_some() || get("lr_b").is_some() {
            let (Some((a_info, a)), Some((b_info, b))) = (get("lr_a"), get("lr_b")) else {
                crate::bail_invalid!("{what}: a low-rank delta needs both 'lr_a' and 'lr_b'");
            };
            only(&keys, &["lr_a", "lr_b"], what)?;
            if !may_factor(&base.name, &base.ne) {
                crate::bail_invalid!("{what}: low-rank parts on a tensor that is not a 2-D linear weight");
            }
            let rank = a_info.ne.get(1).copied().unwrap_or(0);
            if rank == 0 || rank as usize > n_in.min(n_out) {
                crate::bail_invalid!("{what}: tensor '{}' has rank {rank}, not 1 to {}", a_info.name, n_in.min(n_out));
            }
            expect("lr_a", a_info, FACTOR_TYPE, &[n_in as u64, rank])?;
            expect("lr_b", b_info, FACTOR_TYPE, &[rank, n_out as u64])?;
            let l = LowRankDelta::from_parts(rank as usize, n_in, n_out, a.to_vec(), b.to_vec(), what)?;
            return Ok(TensorDelta::LowRank(l));
        }
        let (codes_info, codes) =
            get("codes").ok_or_else(|| Error::Invalid(format!("{what}: no 'codes', 'delta' or 'full' tensor")))?;
        let (steps_info, steps) =
            get("steps").ok_or_else(|| Error::Invalid(format!("{what}: 'codes' without 'steps'")))?;
        let bits = params.bits;
        let layout = layout_for(params, n_in);
        if n_in % 8 != 0 {
            crate::bail_invalid!("{what}: base width {n_in} is not a multiple of 8");
        }
        expect("codes", codes_info, GgmlType::I8, &[codec::bitpack::packed_len(n_in, bits) as u64, n_out as u64])?;
        let steps_ne = match layout {
            StepLayout::Matrix => vec![1],
            StepLayout::Groups { group } => vec![n_in.div_ceil(group) as u64, n_out as u64],
        };
        expect("steps", steps_info, GgmlType::F16, &steps_ne)?;
        let (salient_idx, salient) = match get("sal_idx") {
            None => {
                only(&keys, &["codes", "steps"], what)?;
                (Vec::new(), SalientValues::F16(Vec::new()))
            }
            Some((idx_info, idx)) => {
                if idx_info.ty != GgmlType::I32 || idx_info.ne.len() != 1 {
                    crate::bail_invalid!("{what}: tensor '{}' must be a 1-D i32 list", idx_info.name);
                }
                let n_sal = idx_info.ne[0];
                let idx: Vec<u32> =
                    idx.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect();
                let (val_info, val) =
                    get("sal_val").ok_or_else(|| Error::Invalid(format!("{what}: 'sal_idx' without 'sal_val'")))?;
                let values = match val_info.ty {
                    GgmlType::F16 => {
                        expect("sal_val", val_info, GgmlType::F16, &[n_sal, n_out as u64])?;
                        only(&keys, &["codes", "steps", "sal_idx", "sal_val"], what)?;
                        SalientValues::F16(f16_values(val))
                    }
                    _ => {
                        expect("sal_val", val_info, GgmlType::I8, &[n_sal, n_out as u64])?;
                        let (st_info, st) = get("sal_step")
                            .ok_or_else(|| Error::Invalid(format!("{what}: i8 'sal_val' without 'sal_step'")))?;
                        expect("sal_step", st_info, GgmlType::F16, &[n_sal])?;
                        only(&keys, &["codes", "steps", "sal_idx", "sal_val", "sal_step"], what)?;
                        SalientValues::Q8 { values: val.iter().map(|&b| b as i8).collect(), steps: f16_values(st) }
                    }
                };
                (idx, values)
            }
        };
        let c = CompressedDelta {
            n_in,
            n_out,
            bits,
            layout,
            codes: codes.to_vec(),
            steps: f16_values(steps),
            salient_idx,
            salient,
        };
        c.validate(what)?;
        Ok(TensorDelta::Codec(c))
    }
}

fn only(present: &[&str], allowed: &[&str], what: &str) -> Result<()> {
    match present.iter().find(|p| !allowed.contains(p)) {
        Some(extra) => Err(Error::Invalid(format!("{what}: unexpected part '{extra}' next to {allowed:?}"))),
        None => Ok(()),
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_values(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, ty: GgmlType, ne: &[u64]) -> TensorInfo {
        TensorInfo { name: name.into(), ty, ne: ne.to_vec(), offset: 0 }
    }

    /// from_tensors over `parts` (name, type, ne; zero bytes of the right size) for `base`.
    fn read(base: &TensorInfo, parts: &[(&str, GgmlType, &[u64])]) -> Result<TensorDelta> {
        let infos: Vec<TensorInfo> =
            parts.iter().map(|(p, ty, ne)| info(&format!("switchyard.0.x.{p}"), *ty, ne)).collect();
        let bytes: Vec<Vec<u8>> = infos.iter().map(|i| vec![0u8; i.n_bytes() as usize]).collect();
        let map =
            parts.iter().zip(infos.iter().zip(&bytes)).map(|((p, _, _), (i, b))| (*p, (i, b.as_slice()))).collect();
        TensorDelta::from_tensors(&map, &CodecParams::default(), base, "bundle: expert 'math', tensor 'x'")
    }

    #[test]
    fn low_rank_parts_are_read_only_where_the_graph_can_multiply_by_them() {
        let q = info("blk.0.attn_q.weight", GgmlType::Q4_0, &[256, 128]);
        let (a, b): (&[u64], &[u64]) = (&[256, 32], &[32, 128]);
        let ok = read(&q, &[("lr_a", FACTOR_TYPE, a), ("lr_b", FACTOR_TYPE, b)]).unwrap();
        assert!(matches!(ok, TensorDelta::LowRank(ref l) if l.rank == 32 && l.n_out == 128));
        let err = |base: &TensorInfo, parts: &[(&str, GgmlType, &[u64])]| read(base, parts).unwrap_err().to_string();
        for (e, needle) in [
            (err(&q, &[("lr_a", FACTOR_TYPE, a)]), "both 'lr_a' and 'lr_b'"),
            (err(&q, &[("lr_b", FACTOR_TYPE, b)]), "both 'lr_a' and 'lr_b'"),
            (
                err(&q, &[("lr_a", FACTOR_TYPE, a), ("lr_b", FACTOR_TYPE, b), ("codes", GgmlType::I8, &[64, 128])]),
                "unexpected part 'codes'",
            ),
            (err(&q, &[("lr_a", GgmlType::F16, a), ("lr_b", FACTOR_TYPE, b)]), "expected q8_0"),
            (err(&q, &[("lr_a", FACTOR_TYPE, a), ("lr_b", FACTOR_TYPE, &[64, 128])]), "part 'lr_b'"),
            (err(&q, &[("lr_a", FACTOR_TYPE, &[256, 160]), ("lr_b", FACTOR_TYPE, &[160, 128])]), "rank 160"),
            (
                err(
                    &info("token_embd.weight", GgmlType::Q8_0, &[256, 128]),
                    &[("lr_a", FACTOR_TYPE, a), ("lr_b", FACTOR_TYPE, b)],
                ),
                "not a 2-D linear weight",
            ),
            (
                err(
                    &info("blk.0.ffn_up_exps.weight", GgmlType::Q8_0, &[256, 128, 4]),
                    &[("lr_a", FACTOR_TYPE, a), ("lr_b", FACTOR_TYPE, b)],
                ),
                "not a 2-D linear weight",
            ),
        ] {
            assert!(e.contains(needle) && e.contains("tensor 'x'"), "{e} (wanted {needle:?})");
        }
    }
}
