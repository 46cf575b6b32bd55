//! Recording MoE routing traces from a running model (llama.cpp's `SWITCHYARD_TRACE`): the host
//! hands over each layer's top-k as it is computed; `switchyard sim` replays the file.

use std::ffi::c_char;

use switchyard::moe::trace::TraceWriter;

use crate::error::switchyard_result;
use crate::ptr::{boundary, try_opt_slice, try_ref_from_ptr, try_slice, Castable, OwnershipBox};
use crate::recording::{self, Recording};

/// An open trace file.
pub struct switchyard_trace {
    _private: [u8; 0],
}

impl Castable for switchyard_trace {
    type Ownership = OwnershipBox;
    type RustType = Recording<TraceWriter>;
}

/// Create (truncate) the trace at `path` for a model of `n_layers` MoE layers of `n_experts`
/// experts. On success `*out` receives a handle to end with `switchyard_trace_finish` and
/// release with `switchyard_trace_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_init(
    path: *const c_char,
    n_layers: u32,
    n_experts: u32,
    out: *mut *mut switchyard_trace,
) -> switchyard_result {
    // SAFETY: the caller's pointers, as documented.
    unsafe { recording::init(path, out, |p| TraceWriter::create(p, n_layers as usize, n_experts as usize)) }
}

/// Record layer `layer` of one batch: `n_tokens` tokens, `experts[t * n_used + i]` token t's i-th
/// expert and `weights[...]` its gate weight. `rows` is NULL when the layer ran for every token
/// of the batch, else `rows[t]` is token t's index in the batch (llama.cpp's last layer runs only
/// for output tokens). A token's lines are written once every layer of its batch is in. After a
/// failed call the trace is stopped: later calls fail.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_layer(
    trace: *const switchyard_trace,
    layer: u32,
    n_used: u32,
    n_tokens: u32,
    experts: *const i32,
    weights: *const f32,
    rows: *const i32,
) -> switchyard_result {
    boundary(|| {
        let trace = try_ref_from_ptr!(trace);
        // a layer may run for no token of a batch (llama.cpp's last layer when the batch asks
        // for no logits): then its arrays may be NULL
        let n = n_used as usize * n_tokens as usize;
        let (experts, weights) = (try_slice!(experts, n), try_slice!(weights, n));
        let rows = try_opt_slice!(rows, n_tokens as usize);
        trace.update(|w| w.layer(layer as usize, n_used as usize, experts, weights, rows))
    })
}

/// Flush and close the trace file. Fails when writing fails, when a `switchyard_trace_layer`
/// call failed before (the file then holds the batches completed until then) or when called
/// twice. Call it before `switchyard_trace_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_finish(trace: *const switchyard_trace) -> switchyard_result {
    // SAFETY: NULL or a live handle, as documented.
    unsafe { recording::finish(trace) }
}

/// Release a trace from `switchyard_trace_init`. NULL is ignored. Without
/// `switchyard_trace_finish` before, the batches completed so far are flushed and any error
/// doing so is dropped.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_free(trace: *mut switchyard_trace) {
    // SAFETY: NULL or a handle from switchyard_trace_init that the caller gives up.
    unsafe { recording::free(trace) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::switchyard_result::*;
    use std::ffi::CString;
    use switchyard::moe::trace::Trace;

    #[test]
    fn a_layer_that_ran_for_no_token_completes_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid strings and out-pointer; the handle is used while live and freed once.
        unsafe {
            assert_eq!(switchyard_trace_init(c_path.as_ptr(), 2, 4, &mut handle), SWITCHYARD_RESULT_OK);
            let (ids, ws) = ([1i32, 3], [0.5f32, 0.5]);
            assert_eq!(
                switchyard_trace_layer(handle, 0, 1, 2, ids.as_ptr(), ws.as_ptr(), std::ptr::null()),
                SWITCHYARD_RESULT_OK
            );
            let (no_ids, no_weights) = (std::ptr::null(), std::ptr::null());
            assert_eq!(switchyard_trace_layer(handle, 1, 1, 0, no_ids, no_weights, no_ids), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_trace_finish(handle), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_trace_finish(handle), SWITCHYARD_RESULT_INVALID, "finished once");
            switchyard_trace_free(handle);
        }
        let t = Trace::load(&path).unwrap();
        assert_eq!(t.tokens.len(), 2);
        assert_eq!(t.tokens[1].layers, vec![vec![(3, 0.5)], vec![]]);
    }
}
