//! Recording MoE routing traces from a running model (llama.cpp's `SWITCHYARD_TRACE`): the host
//! hands over each layer's top-k as it is computed; `switchyard sim` replays the file.

use std::ffi::c_char;

use switchyard::moe::trace::TraceWriter;

use crate::error::{boundary, check_null, slice_or_empty, switchyard_result};
use crate::recording::{open_recording, Recording};
use switchyard_result::*;

/// An open trace file.
pub struct switchyard_trace {
    recording: Recording<TraceWriter>,
}

/// Create (truncate) the trace at `path` for a model of `n_layers` MoE layers of `n_experts`
/// experts. On success `*out` receives a handle to release with `switchyard_trace_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_init(
    path: *const c_char,
    n_layers: u32,
    n_experts: u32,
    out: *mut *mut switchyard_trace,
) -> switchyard_result {
    boundary(|| {
        // SAFETY: the caller's pointers, as documented.
        unsafe {
            open_recording(
                path,
                out,
                |p| TraceWriter::create(p, n_layers as usize, n_experts as usize),
                |recording| switchyard_trace { recording },
            )
        }
    })
}

/// Record layer `layer` of one batch: `n_tokens` tokens, `experts[t * n_used + i]` token t's i-th
/// expert and `weights[...]` its gate weight. `rows` is NULL when the layer ran for every token
/// of the batch, else `rows[t]` is token t's index in the batch (llama.cpp's last layer runs only
/// for output tokens). A token's lines are written once every layer of its batch is in.
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
        check_null!(trace);
        // a layer may run for no token of a batch (llama.cpp's last layer when the batch asks
        // for no logits): then its arrays may be NULL
        let n = n_used as usize * n_tokens as usize;
        if n > 0 {
            check_null!(experts, weights);
        }
        // SAFETY: the caller passes arrays of n_used * n_tokens elements and a live handle.
        let (trace, experts, weights) = unsafe { (&*trace, slice_or_empty(experts, n), slice_or_empty(weights, n)) };
        // SAFETY: when not NULL, the caller passes n_tokens rows.
        let rows = (!rows.is_null()).then(|| unsafe { slice_or_empty(rows, n_tokens as usize) });
        trace.recording.update(|w| w.layer(layer as usize, n_used as usize, experts, weights, rows))
    })
}

/// Flush and close a trace from `switchyard_trace_init`. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_trace_free(trace: *mut switchyard_trace) -> switchyard_result {
    boundary(|| {
        if trace.is_null() {
            return SWITCHYARD_RESULT_OK;
        }
        // SAFETY: from Box::into_raw in switchyard_trace_init; the caller gives up its handle.
        unsafe { Box::from_raw(trace) }.recording.close()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
            assert_eq!(switchyard_trace_free(handle), SWITCHYARD_RESULT_OK);
        }
        let t = Trace::load(&path).unwrap();
        assert_eq!(t.tokens.len(), 2);
        assert_eq!(t.tokens[1].layers, vec![vec![(3, 0.5)], vec![]]);
    }
}
