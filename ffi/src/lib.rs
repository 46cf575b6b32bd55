//! The C ABI of switchyard. Grows with the llama.cpp plugin; see include/switchyard.h.

use std::ffi::c_char;

/// Version of the library as a NUL-terminated string, e.g. "0.1.0". Never NULL; static storage.
#[no_mangle]
pub extern "C" fn switchyard_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
