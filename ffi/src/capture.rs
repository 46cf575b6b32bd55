//! Capturing a dense model's FFN inputs while it runs (llama.cpp's `SWITCHYARD_CAPTURE`): the
//! host hands over each layer's normalised hidden states as they are computed; `switchyard
//! moefy` reads the file.

use std::ffi::c_char;

use switchyard::moe::capture::CaptureWriter;

use crate::error::switchyard_result;
use crate::ptr::{boundary, try_ref_from_ptr, try_slice, Castable, OwnershipBox};
use crate::recording::{self, Recording};

/// A capture being recorded.
pub struct switchyard_capture {
    _private: [u8; 0],
}

impl Castable for switchyard_capture {
    type Ownership = OwnershipBox;
    type RustType = Recording<CaptureWriter>;
}

/// Start a capture of `n_layers` layers of `n_embd` values per token, written to `path` by
/// `switchyard_capture_finish`. On success `*out` receives the handle.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_init(
    path: *const c_char,
    n_layers: u32,
    n_embd: u32,
    out: *mut *mut switchyard_capture,
) -> switchyard_result {
    // SAFETY: the caller's pointers, as documented.
    unsafe { recording::init(path, out, |p| CaptureWriter::create(p, n_layers as usize, n_embd as usize)) }
}

/// Append `n_rows` rows of `n_embd` floats (`data`, row after row) to layer `layer`. After a
/// failed call the capture is stopped: later calls fail and nothing is written.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_layer(
    capture: *const switchyard_capture,
    layer: u32,
    n_rows: u32,
    n_embd: u32,
    data: *const f32,
) -> switchyard_result {
    boundary(|| {
        let capture = try_ref_from_ptr!(capture);
        // a layer that ran for no token passes no rows (and may pass NULL)
        let data = try_slice!(data, n_rows as usize * n_embd as usize);
        capture.update(|w| {
            if n_embd as usize != w.n_embd() {
                switchyard::bail_invalid!("rows of {n_embd} values; the capture holds rows of {}", w.n_embd());
            }
            w.layer(layer as usize, data)
        })
    })
}

/// Write the capture to its file. Fails when writing fails, when a `switchyard_capture_layer`
/// call failed before (then nothing is written) or when called twice. Call it before
/// `switchyard_capture_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_finish(capture: *const switchyard_capture) -> switchyard_result {
    // SAFETY: NULL or a live handle, as documented.
    unsafe { recording::finish(capture) }
}

/// Release a capture from `switchyard_capture_init`. NULL is ignored. Without
/// `switchyard_capture_finish` before, nothing is written.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_free(capture: *mut switchyard_capture) {
    // SAFETY: NULL or a handle from switchyard_capture_init that the caller gives up.
    unsafe { recording::free(capture) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::switchyard_result::*;
    use std::ffi::CString;
    use switchyard::moe::capture::Capture;

    #[test]
    fn a_capture_through_the_abi_takes_empty_layers_and_writes_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid strings and out-pointer; the handle is used while live and freed once.
        unsafe {
            assert_eq!(switchyard_capture_init(c_path.as_ptr(), 2, 2, &mut handle), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_capture_layer(handle, 0, 1, 2, [1.0f32, 2.0].as_ptr()), SWITCHYARD_RESULT_OK);
            // a layer that ran for no token (llama.cpp's last layer without outputs)
            assert_eq!(switchyard_capture_layer(handle, 1, 0, 2, std::ptr::null()), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_capture_layer(handle, 1, 1, 2, std::ptr::null()), SWITCHYARD_RESULT_NULL_ARGUMENT);
            assert!(!path.exists(), "written only on finish");
            assert_eq!(switchyard_capture_finish(handle), SWITCHYARD_RESULT_OK);
            switchyard_capture_free(handle);
        }
        let c = Capture::load(&path).unwrap();
        assert_eq!((c.rows(0), c.rows(1)), (1, 0));

        // rows of the wrong width: that capture is dropped, nothing is written
        let other = dir.path().join("other.safetensors");
        let c_other = CString::new(other.to_str().unwrap()).unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(switchyard_capture_init(c_other.as_ptr(), 2, 2, &mut handle), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_capture_layer(handle, 1, 1, 3, [0f32; 3].as_ptr()), SWITCHYARD_RESULT_INVALID);
            assert_eq!(switchyard_capture_layer(handle, 0, 1, 2, [1.0f32, 2.0].as_ptr()), SWITCHYARD_RESULT_INVALID);
            assert_eq!(switchyard_capture_finish(handle), SWITCHYARD_RESULT_INVALID, "the failure is reported");
            switchyard_capture_free(handle);
        }
        assert!(!other.exists());

        // freed without finishing: abandoned, nothing is written
        let dropped = dir.path().join("dropped.safetensors");
        let c_dropped = CString::new(dropped.to_str().unwrap()).unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(switchyard_capture_init(c_dropped.as_ptr(), 1, 2, &mut handle), SWITCHYARD_RESULT_OK);
            assert_eq!(switchyard_capture_layer(handle, 0, 1, 2, [1.0f32, 2.0].as_ptr()), SWITCHYARD_RESULT_OK);
            switchyard_capture_free(handle);
            switchyard_capture_free(std::ptr::null_mut());
        }
        assert!(!dropped.exists());
    }
}
