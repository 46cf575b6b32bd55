//! Capturing a dense model's FFN inputs while it runs (llama.cpp's `SWITCHYARD_CAPTURE`): the
//! host hands over each layer's normalised hidden states as they are computed; `switchyard
//! moefy` reads the file.

use std::ffi::c_char;

use switchyard::moe::capture::CaptureWriter;

use crate::error::{boundary, check_null, slice_or_empty, switchyard_result};
use crate::recording::{open_recording, Recording};
use switchyard_result::*;

/// A capture being recorded.
pub struct switchyard_capture {
    recording: Recording<CaptureWriter>,
}

/// Start a capture of `n_layers` layers of `n_embd` values per token, written to `path` by
/// `switchyard_capture_free`. On success `*out` receives the handle.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_init(
    path: *const c_char,
    n_layers: u32,
    n_embd: u32,
    out: *mut *mut switchyard_capture,
) -> switchyard_result {
    boundary(|| {
        // SAFETY: the caller's pointers, as documented.
        unsafe {
            open_recording(
                path,
                out,
                |p| CaptureWriter::create(p, n_layers as usize, n_embd as usize),
                |recording| switchyard_capture { recording },
            )
        }
    })
}

/// Append `n_rows` rows of `n_embd` floats (`data`, row after row) to layer `layer`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_layer(
    capture: *const switchyard_capture,
    layer: u32,
    n_rows: u32,
    n_embd: u32,
    data: *const f32,
) -> switchyard_result {
    boundary(|| {
        check_null!(capture);
        let n = n_rows as usize * n_embd as usize;
        if n > 0 {
            check_null!(data);
        }
        // SAFETY: the caller passes n_rows * n_embd floats (NULL for none) and a live handle.
        let (capture, data) = unsafe { (&*capture, slice_or_empty(data, n)) };
        capture.recording.update(|w| {
            if n_embd as usize != w.n_embd() {
                switchyard::bail_invalid!("rows of {n_embd} values; the capture holds rows of {}", w.n_embd());
            }
            w.layer(layer as usize, data)
        })
    })
}

/// Write the capture to its file (nothing is written if a layer call failed) and release the
/// handle. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_capture_free(capture: *mut switchyard_capture) -> switchyard_result {
    boundary(|| {
        if capture.is_null() {
            return SWITCHYARD_RESULT_OK;
        }
        // SAFETY: from Box::into_raw in switchyard_capture_init; the caller gives up its handle.
        unsafe { Box::from_raw(capture) }.recording.close()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use switchyard::moe::capture::Capture;

    #[test]
    fn a_capture_through_the_abi_takes_empty_layers_and_writes_on_free() {
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
            assert!(!path.exists(), "written only on free");
            assert_eq!(switchyard_capture_free(handle), SWITCHYARD_RESULT_OK);
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
            assert_eq!(switchyard_capture_free(handle), SWITCHYARD_RESULT_OK);
        }
        assert!(!other.exists());
    }
}
