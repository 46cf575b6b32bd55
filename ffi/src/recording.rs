//! What the trace and capture handles share: a writer the host feeds while a model runs, behind
//! a lock, dropped at its first failure (so a file with a hole is never written as if whole),
//! and finished when the host frees the handle.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{check_null, fail, set_last_error, switchyard_result};
use crate::model::utf8;
use switchyard_result::*;

/// A writer of a recording: `finish` writes what it holds, `abandon` is called instead after
/// a failed call.
pub(crate) trait Recorder {
    fn finish(self) -> switchyard::Result<()>;
    fn abandon(self);
}

impl Recorder for switchyard::moe::trace::TraceWriter {
    fn finish(self) -> switchyard::Result<()> {
        self.finish()
    }

    /// Keeps the batches written so far: every line of a trace is whole.
    fn abandon(self) {
        let _ = self.finish();
    }
}

impl Recorder for switchyard::moe::capture::CaptureWriter {
    fn finish(self) -> switchyard::Result<()> {
        self.finish()
    }

    /// Writes nothing: statistics over part of a run would mislead.
    fn abandon(self) {}
}

pub(crate) struct Recording<W>(Mutex<Option<W>>);

impl<W: Recorder> Recording<W> {
    pub(crate) fn new(writer: W) -> Self {
        Recording(Mutex::new(Some(writer)))
    }

    /// Runs `f` on the writer; when it fails, the writer is abandoned and later calls fail.
    pub(crate) fn update(&self, f: impl FnOnce(&mut W) -> switchyard::Result<()>) -> switchyard_result {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            set_last_error("the recording failed earlier and was stopped");
            return SWITCHYARD_RESULT_INVALID;
        };
        match f(w) {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => {
                if let Some(w) = guard.take() {
                    w.abandon();
                }
                fail(&e)
            }
        }
    }

    /// Finishes the writer unless a call failed.
    pub(crate) fn close(self) -> switchyard_result {
        let w = self.0.into_inner().unwrap_or_else(|p| p.into_inner());
        match w.map(Recorder::finish) {
            Some(Err(e)) => fail(&e),
            _ => SWITCHYARD_RESULT_OK,
        }
    }
}

/// The body of a recording's `_init`: opens the writer for `path` with `create` and gives
/// `*out` a new handle made by `handle`.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
pub(crate) unsafe fn open_recording<W: Recorder, H>(
    path: *const c_char,
    out: *mut *mut H,
    create: impl FnOnce(&Path) -> switchyard::Result<W>,
    handle: impl FnOnce(Recording<W>) -> H,
) -> switchyard_result {
    check_null!(path, out);
    // SAFETY: checked non-NULL, NUL-terminated by contract.
    let path = match unsafe { utf8(path, "path") } {
        Ok(s) => s,
        Err(r) => return r,
    };
    match create(Path::new(path)) {
        Ok(w) => {
            // SAFETY: out checked non-NULL.
            unsafe { *out = Box::into_raw(Box::new(handle(Recording::new(w)))) };
            SWITCHYARD_RESULT_OK
        }
        Err(e) => fail(&e),
    }
}
