//! Result codes, how library errors map to them, and the per-thread error detail.

use std::cell::RefCell;
use std::ffi::c_char;

use crate::ptr::boundary;

/// Outcome of a call.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum switchyard_result {
    SWITCHYARD_RESULT_OK = 0,
    /// A required pointer argument was NULL.
    SWITCHYARD_RESULT_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    SWITCHYARD_RESULT_INVALID_UTF8 = 2,
    /// The operating system refused a file operation.
    SWITCHYARD_RESULT_IO = 3,
    /// Malformed, truncated or mismatched input (a file, a tensor, a key).
    SWITCHYARD_RESULT_INVALID = 4,
    /// Well-formed input this version does not handle.
    SWITCHYARD_RESULT_UNSUPPORTED = 5,
    /// No expert or tensor of that name.
    SWITCHYARD_RESULT_NOT_FOUND = 6,
    /// The caller's buffer is too small. No call of ABI 4 returns it (names are lent by the
    /// model, not copied); kept so that every other code keeps its number.
    SWITCHYARD_RESULT_BUFFER_TOO_SMALL = 7,
    /// The host's callback reported a failure.
    SWITCHYARD_RESULT_CALLBACK_FAILED = 8,
    /// A bug in switchyard: a panic was caught at the boundary.
    SWITCHYARD_RESULT_PANIC = 9,
}

use switchyard_result::*;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: impl Into<String>) {
    LAST_ERROR.with(|e| *e.borrow_mut() = msg.into());
}

/// Record `err` for [`switchyard_last_error`] and map it to a result code.
pub(crate) fn fail(err: &switchyard::Error) -> switchyard_result {
    set_last_error(err.to_string());
    match err {
        switchyard::Error::Io { .. } => SWITCHYARD_RESULT_IO,
        switchyard::Error::Invalid(_) => SWITCHYARD_RESULT_INVALID,
        switchyard::Error::NotFound(_) => SWITCHYARD_RESULT_NOT_FOUND,
        switchyard::Error::Unsupported(_) => SWITCHYARD_RESULT_UNSUPPORTED,
    }
}

/// `Ok` or the code of the error, recorded for [`switchyard_last_error`].
pub(crate) fn result_of(res: switchyard::Result<()>) -> switchyard_result {
    match res {
        Ok(()) => SWITCHYARD_RESULT_OK,
        Err(e) => fail(&e),
    }
}

impl switchyard_result {
    /// The code C passed as a plain integer; None for a value no version of the ABI defines.
    fn from_code(code: u32) -> Option<Self> {
        // every variant, in code order (a test checks it); `description` is the exhaustive
        // match that stops a new variant from being forgotten here
        const ALL: [switchyard_result; 10] = [
            SWITCHYARD_RESULT_OK,
            SWITCHYARD_RESULT_NULL_ARGUMENT,
            SWITCHYARD_RESULT_INVALID_UTF8,
            SWITCHYARD_RESULT_IO,
            SWITCHYARD_RESULT_INVALID,
            SWITCHYARD_RESULT_UNSUPPORTED,
            SWITCHYARD_RESULT_NOT_FOUND,
            SWITCHYARD_RESULT_BUFFER_TOO_SMALL,
            SWITCHYARD_RESULT_CALLBACK_FAILED,
            SWITCHYARD_RESULT_PANIC,
        ];
        ALL.into_iter().find(|r| *r as u32 == code)
    }

    fn description(self) -> &'static str {
        match self {
            SWITCHYARD_RESULT_OK => "ok\0",
            SWITCHYARD_RESULT_NULL_ARGUMENT => "a required argument was NULL\0",
            SWITCHYARD_RESULT_INVALID_UTF8 => "a string argument was not valid UTF-8\0",
            SWITCHYARD_RESULT_IO => "file operation failed\0",
            SWITCHYARD_RESULT_INVALID => "invalid input\0",
            SWITCHYARD_RESULT_UNSUPPORTED => "unsupported input\0",
            SWITCHYARD_RESULT_NOT_FOUND => "no such expert or tensor\0",
            SWITCHYARD_RESULT_BUFFER_TOO_SMALL => "buffer too small\0",
            SWITCHYARD_RESULT_CALLBACK_FAILED => "the host callback failed\0",
            SWITCHYARD_RESULT_PANIC => "internal error (panic)\0",
        }
    }
}

/// A static, NUL-terminated description of result code `result` (a `switchyard_result` value
/// read as the integer C holds, so any value is safe to pass). Never NULL: a code this
/// library does not define gives "unknown result code".
#[no_mangle]
pub extern "C" fn switchyard_result_str(result: u32) -> *const c_char {
    let s = switchyard_result::from_code(result).map_or("unknown result code\0", switchyard_result::description);
    s.as_ptr().cast()
}

/// Copy the calling thread's last error detail (which file, tensor or key, and why) into
/// `buf` of `len` bytes, NUL-terminated and truncated to fit; returns the detail's full length
/// in bytes without the NUL (0 when there was none). `buf` may be NULL when `len` is 0.
#[no_mangle]
pub unsafe extern "C" fn switchyard_last_error(buf: *mut c_char, len: usize) -> usize {
    boundary(|| {
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            if !buf.is_null() && len > 0 {
                let mut n = e.len().min(len - 1);
                while !e.is_char_boundary(n) {
                    n -= 1;
                }
                // SAFETY: buf is valid for len bytes (caller contract), n + 1 <= len.
                unsafe {
                    std::ptr::copy_nonoverlapping(e.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            e.len()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_code_maps_back_to_its_variant_and_others_to_unknown() {
        let describe = |code: u32| unsafe { CStr::from_ptr(switchyard_result_str(code)) }.to_str().unwrap();
        for code in 0..=SWITCHYARD_RESULT_PANIC as u32 {
            let r = switchyard_result::from_code(code).expect("codes are contiguous");
            assert_eq!(r as u32, code);
            assert_ne!(describe(code), "unknown result code");
        }
        for code in [SWITCHYARD_RESULT_PANIC as u32 + 1, 1000, u32::MAX] {
            assert_eq!(describe(code), "unknown result code");
        }
    }
}
