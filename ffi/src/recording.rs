//! What the trace and capture handles share: a writer the host feeds while a model runs, behind
//! a lock, stopped at its first failure (so a file with a hole is never written as if whole),
//! written out by the host's `_finish` call and abandoned by a `_free` without one.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{fail, set_last_error, switchyard_result};
use crate::ptr::{boundary, free_box, to_boxed_ptr, try_out, try_ref_from_ptr, try_str, Castable, OwnershipBox};
use switchyard_result::*;

/// A writer of a recording: `finish` writes what it holds, `abandon` is called instead after
/// a failed call or when the handle is freed without finishing.
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

enum State<W> {
    Writing(W),
    /// A call failed; the writer was abandoned.
    Failed,
    Finished,
}

/// The Rust value behind a trace or capture handle.
pub(crate) struct Recording<W: Recorder>(Mutex<State<W>>);

impl<W: Recorder> Recording<W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<W>> {
        // a panic while locked left the state as it was before the call
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the writer; when it fails, the writer is abandoned and later calls fail.
    pub(crate) fn update(&self, f: impl FnOnce(&mut W) -> switchyard::Result<()>) -> switchyard_result {
        let mut state = self.lock();
        let w = match &mut *state {
            State::Writing(w) => w,
            stopped => return report_stopped(stopped),
        };
        match f(w) {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => {
                if let State::Writing(w) = std::mem::replace(&mut *state, State::Failed) {
                    w.abandon();
                }
                fail(&e)
            }
        }
    }

    /// Writes the recording out; fails when that fails or a call failed before.
    fn finish(&self) -> switchyard_result {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Finished) {
            State::Writing(w) => match w.finish() {
                Ok(()) => SWITCHYARD_RESULT_OK,
                Err(e) => fail(&e),
            },
            stopped => {
                let r = report_stopped(&stopped);
                *state = stopped;
                r
            }
        }
    }
}

fn report_stopped<W>(state: &State<W>) -> switchyard_result {
    set_last_error(match state {
        State::Failed => "the recording failed earlier and was stopped",
        _ => "the recording was already finished",
    });
    SWITCHYARD_RESULT_INVALID
}

/// A handle freed without `_finish` abandons its writer.
impl<W: Recorder> Drop for Recording<W> {
    fn drop(&mut self) {
        let state = std::mem::replace(self.0.get_mut().unwrap_or_else(|p| p.into_inner()), State::Finished);
        if let State::Writing(w) = state {
            w.abandon();
        }
    }
}

/// The body of a recording's `_init`: opens the writer for `path` with `create` and gives
/// `*out` a new handle.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
pub(crate) unsafe fn init<H, W>(
    path: *const c_char,
    out: *mut *mut H,
    create: impl FnOnce(&Path) -> switchyard::Result<W>,
) -> switchyard_result
where
    H: Castable<Ownership = OwnershipBox, RustType = Recording<W>>,
    W: Recorder,
{
    boundary(|| {
        let path = try_str!(path);
        let out = try_out!(out);
        match create(Path::new(path)) {
            Ok(w) => {
                out.write(to_boxed_ptr::<H>(Recording(Mutex::new(State::Writing(w)))));
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// The body of a recording's `_finish`.
///
/// # Safety
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn finish<H, W>(handle: *const H) -> switchyard_result
where
    H: Castable<RustType = Recording<W>>,
    W: Recorder,
{
    boundary(|| try_ref_from_ptr!(handle).finish())
}

/// The body of a recording's `_free`.
///
/// # Safety
/// `handle` is NULL or a handle from `init` that the caller gives up.
pub(crate) unsafe fn free<H, W>(handle: *mut H)
where
    H: Castable<Ownership = OwnershipBox, RustType = Recording<W>>,
    W: Recorder,
{
    // SAFETY: upheld by the caller.
    boundary(|| unsafe { free_box(handle) })
}
