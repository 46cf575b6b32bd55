//! Everything an exported function does with the raw pointers C hands it, in one place: the
//! panic boundary, NULL checks, casts from handles to the Rust values behind them, strings,
//! slices and out-pointers. Each `unsafe` step lives here once, so an exported function reads
//! as its job and not as a list of pointer checks.
//!
//! An exported function is written as
//! ```ignore
//! boundary(|| {
//!     let model = try_ref_from_ptr!(model);
//!     let name = try_str!(name);
//!     let out = try_out!(out);
//!     ...
//! })
//! ```
//! where each macro returns early, with the function's [`Failure`] value and the detail for
//! `switchyard_last_error`, when its argument is NULL (or, for strings, not UTF-8).

use std::ffi::{c_char, CStr};
use std::marker::PhantomData;

use crate::error::{set_last_error, switchyard_result};

/// What a function returns when it stops before producing its value: after a caught panic or
/// a NULL or malformed argument. A `switchyard_result` carries the reason itself; a function
/// returning a plain value returns that value's "nothing" and leaves the reason in
/// `switchyard_last_error`.
pub(crate) trait Failure {
    fn failure(reason: switchyard_result) -> Self;
}

impl Failure for switchyard_result {
    fn failure(reason: switchyard_result) -> Self {
        reason
    }
}

/// `_free` and other functions that cannot report anything.
impl Failure for () {
    fn failure(_: switchyard_result) -> Self {}
}

/// Counts and flags: 0.
impl Failure for u32 {
    fn failure(_: switchyard_result) -> Self {
        0
    }
}

/// Counts: 0.
impl Failure for usize {
    fn failure(_: switchyard_result) -> Self {
        0
    }
}

/// Strings the library owns: NULL.
impl Failure for *const c_char {
    fn failure(_: switchyard_result) -> Self {
        std::ptr::null()
    }
}

/// Indexes and `enum ggml_type` values: -1, llama.cpp's "none".
impl Failure for i32 {
    fn failure(_: switchyard_result) -> Self {
        -1
    }
}

/// Run the body of an exported function so that a panic becomes `T`'s failure value (for a
/// result: `SWITCHYARD_RESULT_PANIC`) with its message in `switchyard_last_error`, instead of
/// unwinding into C (which aborts the host).
pub(crate) fn boundary<T: Failure>(f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        set_last_error(format!("internal error (panic caught at the C boundary): {what}"));
        T::failure(switchyard_result::SWITCHYARD_RESULT_PANIC)
    })
}

/// How C may hold a pointer to a [`Castable`] type.
pub(crate) trait Ownership {}

/// Made by an `_init` (a `Box` given away), returned once to its `_free`.
pub(crate) struct OwnershipBox;
impl Ownership for OwnershipBox {}

/// Owned by C and lent for the duration of one call (a struct of callbacks, say).
pub(crate) struct OwnershipRef;
impl Ownership for OwnershipRef {}

/// A type C holds pointers to: `RustType` is what the pointer points at, `Ownership` says
/// whether the library may take it back as a `Box` (only handles it made can be freed, and
/// only one way).
pub(crate) trait Castable {
    type Ownership: Ownership;
    type RustType;
}

/// The value behind `p`, or None when it is NULL.
///
/// # Safety
/// `p` is NULL or points to a live `C::RustType` for `'a`.
pub(crate) unsafe fn ref_from_ptr<'a, C: Castable>(p: *const C) -> Option<&'a C::RustType> {
    // SAFETY: upheld by the caller.
    unsafe { p.cast::<C::RustType>().as_ref() }
}

/// Give `value` to C as a handle to release with [`free_box`].
pub(crate) fn to_boxed_ptr<C: Castable<Ownership = OwnershipBox>>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// Take back and drop a handle made by [`to_boxed_ptr`]; NULL is ignored.
///
/// # Safety
/// `p` is NULL or came from [`to_boxed_ptr`] and C gives it up with this call.
pub(crate) unsafe fn free_box<C: Castable<Ownership = OwnershipBox>>(p: *mut C) {
    if !p.is_null() {
        // SAFETY: from Box::into_raw of a C::RustType (to_boxed_ptr), released once.
        drop(unsafe { Box::from_raw(p.cast::<C::RustType>()) });
    }
}

/// The UTF-8 string at `p`, or the reason it is not one.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn str_from_ptr<'a>(p: *const c_char, what: &str) -> Result<&'a str, switchyard_result> {
    if p.is_null() {
        return Err(null_argument(what));
    }
    // SAFETY: non-NULL and NUL-terminated (caller).
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| {
        set_last_error(format!("argument '{what}' is not valid UTF-8"));
        switchyard_result::SWITCHYARD_RESULT_INVALID_UTF8
    })
}

/// The `n` elements at `p`; NULL is accepted for none.
///
/// # Safety
/// When `n > 0` and `p` is not NULL, `p` points to `n` initialised elements that live for `'a`.
pub(crate) unsafe fn slice_from_ptr<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], switchyard_result> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(null_argument(what)),
        // SAFETY: upheld by the caller.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(p, n) }),
    }
}

/// Room for `n` elements at `p` that the library fills; NULL is accepted for none.
///
/// # Safety
/// When `n > 0` and `p` is not NULL, `p` is writable for `n` elements, unaliased for `'a`.
pub(crate) unsafe fn mut_slice_from_ptr<'a, T>(
    p: *mut T,
    n: usize,
    what: &str,
) -> Result<&'a mut [T], switchyard_result> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&mut []),
        (true, _) => Err(null_argument(what)),
        // SAFETY: upheld by the caller.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts_mut(p, n) }),
    }
}

/// Records that argument `what` was NULL.
pub(crate) fn null_argument(what: &str) -> switchyard_result {
    set_last_error(format!("argument '{what}' is NULL"));
    switchyard_result::SWITCHYARD_RESULT_NULL_ARGUMENT
}

/// An out-pointer C passed, checked non-NULL. Writing through it is the only thing to do with
/// it, so a result is stored only where the code says so (on success) and is never read.
pub(crate) struct Out<'a, T> {
    p: *mut T,
    _lent: PhantomData<&'a mut T>,
}

impl<T> Out<'_, T> {
    /// `p` as an out-pointer, or None when it is NULL.
    ///
    /// # Safety
    /// `p` is NULL or writable (not necessarily initialised) for the caller's `'a`.
    pub(crate) unsafe fn new(p: *mut T) -> Option<Self> {
        (!p.is_null()).then_some(Out { p, _lent: PhantomData })
    }

    pub(crate) fn write(self, value: T) {
        // SAFETY: non-NULL and writable (Out::new's contract); ptr::write because what C left
        // there may be uninitialised and must not be dropped.
        unsafe { self.p.write(value) }
    }
}

/// `try_ref_from_ptr!(p)`: the Rust value behind handle `p` (`*const C` or `*mut C`,
/// `C: Castable`), or an early return when `p` is NULL.
macro_rules! try_ref_from_ptr {
    ($p:ident) => {
        // SAFETY: a handle C passes is NULL or live for the call (the ABI's contract).
        match unsafe { $crate::ptr::ref_from_ptr($p) } {
            Some(r) => r,
            None => return $crate::ptr::Failure::failure($crate::ptr::null_argument(stringify!($p))),
        }
    };
}
pub(crate) use try_ref_from_ptr;

/// `try_out!(p)`: out-pointer `p` as an [`Out`], or an early return when it is NULL.
macro_rules! try_out {
    ($p:ident) => {
        // SAFETY: an out-pointer C passes is NULL or writable for the call (the ABI's contract).
        match unsafe { $crate::ptr::Out::new($p) } {
            Some(o) => o,
            None => return $crate::ptr::Failure::failure($crate::ptr::null_argument(stringify!($p))),
        }
    };
}
pub(crate) use try_out;

/// `try_str!(p)`: the UTF-8 string at `p`, or an early return when it is NULL or not UTF-8.
macro_rules! try_str {
    ($p:ident) => {
        // SAFETY: a string C passes is NULL or NUL-terminated and live for the call.
        match unsafe { $crate::ptr::str_from_ptr($p, stringify!($p)) } {
            Ok(s) => s,
            Err(r) => return $crate::ptr::Failure::failure(r),
        }
    };
}
pub(crate) use try_str;

/// `try_slice!(p, n)`: the `n` elements at `p` (NULL accepted when `n` is 0), or an early
/// return when `p` is NULL and `n` is not 0.
macro_rules! try_slice {
    ($p:ident, $n:expr) => {
        // SAFETY: an array C passes is NULL or holds the number of elements it says, live
        // for the call.
        match unsafe { $crate::ptr::slice_from_ptr($p, $n, stringify!($p)) } {
            Ok(s) => s,
            Err(r) => return $crate::ptr::Failure::failure(r),
        }
    };
}
pub(crate) use try_slice;

/// `try_opt_slice!(p, n)`: None when `p` is NULL (the argument is optional), else the `n`
/// elements at `p`.
macro_rules! try_opt_slice {
    ($p:ident, $n:expr) => {
        if $p.is_null() {
            None
        } else {
            Some($crate::ptr::try_slice!($p, $n))
        }
    };
}
pub(crate) use try_opt_slice;

/// `try_mut_slice!(p, n)`: room for `n` elements at `p` (NULL accepted when `n` is 0), or an
/// early return when `p` is NULL and `n` is not 0.
macro_rules! try_mut_slice {
    ($p:ident, $n:expr) => {
        // SAFETY: an array C passes for output is NULL or writable for the number of
        // elements it says, unaliased for the call.
        match unsafe { $crate::ptr::mut_slice_from_ptr($p, $n, stringify!($p)) } {
            Ok(s) => s,
            Err(r) => return $crate::ptr::Failure::failure(r),
        }
    };
}
pub(crate) use try_mut_slice;
