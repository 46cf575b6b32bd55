//! Recording MoE routing traces from a running model (llama.cpp's `SWITCHYARD_TRACE`): the host
//! hands over each layer's top-k as it is computed; `switchyard sim` replays the file.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use switchyard::moe::trace::TraceWriter;

use crate::error::{boundary, check_null, fail, set_last_error, switchyard_result};
use crate::model::utf8;
use switchyard_result::*;

/// An open trace file.
pub struct switchyard_trace {
    writer: Mutex<Option<TraceWriter>>,
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
        check_null!(path, out);
        // SAFETY: checked non-NULL, NUL-terminated by contract.
        let path = match unsafe { utf8(path, "path") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        match TraceWriter::create(Path::new(path), n_layers as usize, n_experts as usize) {
            Ok(w) => {
                let t = Box::new(switchyard_trace { writer: Mutex::new(Some(w)) });
                // SAFETY: out checked non-NULL.
                unsafe { *out = Box::into_raw(t) };
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
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
        check_null!(trace, experts, weights);
        let n = n_used as usize * n_tokens as usize;
        // SAFETY: the caller passes arrays of n_used * n_tokens elements and a live handle.
        let (trace, experts, weights) =
            unsafe { (&*trace, std::slice::from_raw_parts(experts, n), std::slice::from_raw_parts(weights, n)) };
        // SAFETY: when not NULL, the caller passes n_tokens rows.
        let rows = (!rows.is_null()).then(|| unsafe { std::slice::from_raw_parts(rows, n_tokens as usize) });
        let mut guard = trace.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            set_last_error("the trace failed earlier and was closed");
            return SWITCHYARD_RESULT_INVALID;
        };
        match w.layer(layer as usize, n_used as usize, experts, weights, rows) {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => {
                // a trace with a hole would mislead the simulator: stop writing it
                if let Some(w) = guard.take() {
                    let _ = w.finish();
                }
                fail(&e)
            }
        }
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
        let t = unsafe { Box::from_raw(trace) };
        let w = t.writer.into_inner().unwrap_or_else(|p| p.into_inner());
        match w.map(TraceWriter::finish) {
            Some(Err(e)) => fail(&e),
            _ => SWITCHYARD_RESULT_OK,
        }
    })
}
