//! Result codes, the panic boundary and the per-thread error detail.

use std::cell::RefCell;
use std::ffi::c_char;

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
    /// The caller's buffer is too small; the needed length was reported.
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
        switchyard::Error::Unsupported(_) => SWITCHYARD_RESULT_UNSUPPORTED,
        switchyard::Error::Invalid(m) if m.contains("no expert '") => SWITCHYARD_RESULT_NOT_FOUND,
        switchyard::Error::Invalid(_) => SWITCHYARD_RESULT_INVALID,
    }
}

/// Run `f` so that a panic becomes `SWITCHYARD_RESULT_PANIC` instead of unwinding into C.
pub(crate) fn boundary(f: impl FnOnce() -> switchyard_result) -> switchyard_result {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal error (panic caught at the C boundary): {what}"));
            SWITCHYARD_RESULT_PANIC
        }
    }
}

/// Like [`boundary`] for functions that return a plain value: `fallback` on panic.
pub(crate) fn boundary_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Return early with `SWITCHYARD_RESULT_NULL_ARGUMENT` when any pointer is NULL.
macro_rules! check_null {
    ($($p:ident),+) => {
        $(if $p.is_null() {
            $crate::error::set_last_error(concat!("argument '", stringify!($p), "' is NULL"));
            return $crate::error::switchyard_result::SWITCHYARD_RESULT_NULL_ARGUMENT;
        })+
    };
}
pub(crate) use check_null;

/// Copy `s` into the caller's buffer `buf` of `len` bytes as a NUL-terminated string and store
/// its length (without the NUL) in `*out_len` when `out_len` is not NULL. When `buf` is too
/// small (or NULL with `len` 0), nothing is copied, the needed length is still stored, and the
/// result is `SWITCHYARD_RESULT_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `buf` must be valid for `len` bytes (or NULL with `len` 0); `out_len` NULL or valid.
pub(crate) unsafe fn write_str(s: &str, buf: *mut c_char, len: usize, out_len: *mut usize) -> switchyard_result {
    if !out_len.is_null() {
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { *out_len = s.len() };
    }
    if buf.is_null() || len < s.len() + 1 {
        set_last_error(format!("buffer of {len} bytes is too small for {} bytes and the NUL", s.len()));
        return SWITCHYARD_RESULT_BUFFER_TOO_SMALL;
    }
    // SAFETY: buf has room for s.len() + 1 bytes (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    SWITCHYARD_RESULT_OK
}

/// A static, NUL-terminated description of `result`. Never NULL.
#[no_mangle]
pub extern "C" fn switchyard_result_str(result: switchyard_result) -> *const c_char {
    let s: &'static str = match result {
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
    };
    s.as_ptr().cast()
}

/// Copy the calling thread's last error detail (which file, tensor or key, and why) into
/// `buf` of `len` bytes, NUL-terminated and truncated to fit; returns the detail's full length
/// in bytes without the NUL (0 when there was none). `buf` may be NULL when `len` is 0.
#[no_mangle]
pub unsafe extern "C" fn switchyard_last_error(buf: *mut c_char, len: usize) -> usize {
    boundary_value(0, || {
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

/// `n` elements at `ptr`, or an empty slice when `n` is 0 (where C callers may pass NULL).
///
/// # Safety
/// When `n > 0`, `ptr` must point to `n` initialised elements that outlive the slice.
pub(crate) unsafe fn slice_or_empty<'a, T>(ptr: *const T, n: usize) -> &'a [T] {
    if n == 0 {
        &[]
    } else {
        // SAFETY: upheld by the caller.
        unsafe { std::slice::from_raw_parts(ptr, n) }
    }
}
