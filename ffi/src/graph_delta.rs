//! `switchyard_graph_delta`: an expert's delta of one weight in the form a host's graph applies
//! it (y = W_base x + D x with W_base as the file holds it), converted once at load.

use std::ffi::{c_char, c_void};

use switchyard::bundle::in_graph::GraphDelta;
use switchyard::GgmlType;

use crate::error::{fail, set_last_error, switchyard_result};
use crate::model::switchyard_model;
use crate::ptr::{boundary, free_box, to_boxed_ptr, try_out, try_ref_from_ptr, try_str, Castable, OwnershipBox};
use switchyard_result::*;

/// One converted delta; release with `switchyard_graph_delta_free`.
pub struct switchyard_graph_delta {
    _private: [u8; 0],
}

impl Castable for switchyard_graph_delta {
    type Ownership = OwnershipBox;
    type RustType = GraphDelta;
}

/// What a converted delta holds, lent by the delta (valid until `switchyard_graph_delta_free`).
/// With `rank` 0 the graph adds `data x` (a matrix of the base weight's shape in `ggml_type`, an
/// `enum ggml_type` value) and, when `n_salient` > 0, `salient g` where g holds x's channels
/// `salient_idx` (`n_salient` values, sorted) and `salient` is an F16 matrix of `n_salient`
/// columns and the base's rows. With `rank` > 0 it adds `b (data x)`: `data` is `rank` rows of
/// the base's row length and `b` the base's number of rows of `rank` values, both in `ggml_type`.
#[repr(C)]
pub struct switchyard_graph_delta_parts {
    pub ggml_type: i32,
    pub data: *const c_void,
    pub data_size: usize,
    pub rank: u32,
    pub b: *const c_void,
    pub b_size: usize,
    pub n_salient: u32,
    pub salient_idx: *const i32,
    /// IEEE half-precision bit patterns, row-major `[rows][n_salient]`.
    pub salient: *const u16,
}

/// The codec deltas' type a host asked for: an `enum ggml_type` value, or -1 for the library's
/// choice (Q2_K where it takes the codes as they are, else Q4_0 where it holds them exactly,
/// else Q8_0: `switchyard::bundle::in_graph::codec_type`).
fn requested_type(ty: i32) -> Result<Option<GgmlType>, switchyard_result> {
    if ty < 0 {
        return Ok(None);
    }
    GgmlType::from_u32(ty as u32).map(Some).ok_or_else(|| {
        set_last_error(format!("argument 'type': {ty} is not a ggml type"));
        SWITCHYARD_RESULT_INVALID
    })
}

/// Whether the host applies weight `name`'s deltas in its graph (1) or switches the weight in
/// place (0: `switchyard_model_tensor_type` then gives its type; also 0 for NULL arguments or
/// a weight no expert changes).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_in_graph(model: *const switchyard_model, name: *const c_char) -> u32 {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        m.lock().in_graph(name) as u32
    })
}

/// The ggml type (`*out_type`), rank (`*out_rank`, 0 unless low-rank) and number of salient
/// channels (`*out_n_salient`) of expert `expert`'s delta of weight `name` as
/// `switchyard_model_graph_delta` converts it with `type`, without converting it. `*out_type`
/// is -1 when the expert leaves the weight unchanged or it is not applied in the graph.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_graph_delta_shape(
    model: *const switchyard_model,
    expert: u32,
    name: *const c_char,
    type_: i32,
    out_type: *mut i32,
    out_rank: *mut u32,
    out_n_salient: *mut u32,
) -> switchyard_result {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        let out_type = try_out!(out_type);
        let out_rank = try_out!(out_rank);
        let out_n_salient = try_out!(out_n_salient);
        let requested = match requested_type(type_) {
            Ok(t) => t,
            Err(res) => return res,
        };
        match m.lock().graph_delta_shape(expert as usize, name, requested) {
            Ok(shape) => {
                let (rank, n_salient) = shape.map_or((0, 0), |s| (s.rank, s.n_salient));
                let (Ok(rank), Ok(n_salient)) = (u32::try_from(rank), u32::try_from(n_salient)) else {
                    set_last_error(format!(
                        "weight '{name}': rank {rank} or {n_salient} salient channels overflow u32"
                    ));
                    return SWITCHYARD_RESULT_INVALID;
                };
                out_type.write(shape.map_or(-1, |s| s.ty as i32));
                out_rank.write(rank);
                out_n_salient.write(n_salient);
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Convert expert `expert`'s delta of weight `name` for the graph, the codec's part in ggml
/// type `type` (-1: the library's choice). `*out` receives a handle to release with
/// `switchyard_graph_delta_free`, or NULL when the expert leaves the weight unchanged or it is
/// not applied in the graph.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_graph_delta(
    model: *const switchyard_model,
    expert: u32,
    name: *const c_char,
    type_: i32,
    out: *mut *mut switchyard_graph_delta,
) -> switchyard_result {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        let out = try_out!(out);
        let requested = match requested_type(type_) {
            Ok(t) => t,
            Err(res) => return res,
        };
        match m.lock().graph_delta(expert as usize, name, requested) {
            Ok(d) => {
                out.write(d.map_or(std::ptr::null_mut(), to_boxed_ptr));
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Drop the bundle file's pages from the process's resident memory, once the host has
/// converted the deltas it needs: the host maps the base weights itself, and the library's
/// reads of the file would otherwise stay counted in its RSS. Never fails (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_release_resident(model: *const switchyard_model) {
    boundary(|| try_ref_from_ptr!(model).lock().release_resident())
}

/// What `delta` holds, into `*out` (pointers lent by `delta`).
#[no_mangle]
pub unsafe extern "C" fn switchyard_graph_delta_get_parts(
    delta: *const switchyard_graph_delta,
    out: *mut switchyard_graph_delta_parts,
) -> switchyard_result {
    boundary(|| {
        let d = try_ref_from_ptr!(delta);
        let out = try_out!(out);
        out.write(switchyard_graph_delta_parts {
            ggml_type: d.ty as i32,
            data: d.data.as_ptr().cast(),
            data_size: d.data.len(),
            rank: d.rank as u32,
            b: if d.b.is_empty() { std::ptr::null() } else { d.b.as_ptr().cast() },
            b_size: d.b.len(),
            n_salient: d.salient_idx.len() as u32,
            salient_idx: d.salient_idx.as_ptr(),
            salient: d.salient.as_ptr().cast(),
        });
        SWITCHYARD_RESULT_OK
    })
}

/// Release a delta from `switchyard_model_graph_delta`. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_graph_delta_free(delta: *mut switchyard_graph_delta) {
    // SAFETY: NULL or a handle from switchyard_model_graph_delta, which the caller gives up here.
    boundary(|| unsafe { free_box(delta) })
}
