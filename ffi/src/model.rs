//! `switchyard_model`: a bundle opened for switching experts in a host's tensors.

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;
use std::sync::Mutex;

use switchyard::router::PromptRouter;
use switchyard::switch::{DeviceJob, Switcher, BASE};

use crate::gpu::DeviceDecoder;

use crate::error::{boundary, boundary_value, check_null, fail, set_last_error, switchyard_result, write_str};
use switchyard_result::*;

/// A bundle opened for switching. Thread-safe: calls on one model are serialised.
pub struct switchyard_model {
    inner: Mutex<Switcher>,
    /// GPU state for hosts whose weights live on a GPU; locked after `inner`.
    gpu: Mutex<DeviceDecoder>,
    /// The bundle's router, if it has one; immutable, so routing never waits for a switch.
    router: Option<PromptRouter>,
    /// The experts' names in bundle order, for routing without taking the lock.
    experts: Vec<String>,
}

impl switchyard_model {
    fn lock(&self) -> std::sync::MutexGuard<'_, Switcher> {
        // A panic while locked was already reported; the switcher's state stays usable
        // (a failed switch is redone by the next one).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How `switchyard_model_set_expert` reaches the host's tensors (the handles given to
/// `switchyard_model_bind`).
#[repr(C)]
pub struct switchyard_host {
    /// Optional: the tensor's memory when it lives in host RAM (`size` writable bytes), so the
    /// weights are decoded in place; NULL (or a NULL return) to go through `write`.
    pub memory: Option<unsafe extern "C" fn(user: *mut c_void, tensor: *mut c_void, size: usize) -> *mut c_void>,
    /// Required: copy `size` bytes at `data` into `tensor` from offset 0 (e.g. with
    /// `ggml_backend_tensor_set`). Returns 0 on success, anything else on failure.
    pub write:
        Option<unsafe extern "C" fn(user: *mut c_void, tensor: *mut c_void, data: *const c_void, size: usize) -> i32>,
    /// Passed back to the callbacks.
    pub user: *mut c_void,
    /// Optional: when `tensor` lives in CUDA device memory, store its device pointer in
    /// `*ptr` and the device ordinal in `*device` and return 0; any other return (or a NULL
    /// callback) means host memory. A library built with the `cuda` feature then decodes the
    /// weight on that GPU with its own kernels and stream (synchronised before returning)
    /// instead of calling `write`; otherwise this is never called.
    pub device:
        Option<unsafe extern "C" fn(user: *mut c_void, tensor: *mut c_void, ptr: *mut u64, device: *mut i32) -> i32>,
}

/// Adapts the host's callbacks to the switcher; remembers a failed callback for the result code.
struct CallbackHost<'a> {
    host: &'a switchyard_host,
    failed: bool,
    gpu: &'a mut DeviceDecoder,
}

impl switchyard::switch::TensorHost for CallbackHost<'_> {
    fn decode_on_device(&mut self, handle: usize, job: &DeviceJob<'_>) -> switchyard::Result<bool> {
        let Some(f) = self.host.device else { return Ok(false) };
        let (mut ptr, mut device) = (0u64, -1i32);
        // SAFETY: the host's callback with the handle it bound and two live out-pointers.
        if unsafe { f(self.host.user, handle as *mut c_void, &mut ptr, &mut device) } != 0 || ptr == 0 {
            return Ok(false);
        }
        self.gpu.decode(ptr, device, job)
    }

    fn memory(&mut self, handle: usize, len: usize) -> Option<&mut [u8]> {
        let f = self.host.memory?;
        // SAFETY: the host's callback with the handle it bound.
        let p = unsafe { f(self.host.user, handle as *mut c_void, len) };
        // SAFETY: the host lends `len` writable bytes at p for the duration of the switch.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
    }

    fn write(&mut self, handle: usize, bytes: &[u8]) -> switchyard::Result<()> {
        let f = self.host.write.expect("checked before the switch");
        // SAFETY: the host's callback, given the handle it bound and a live buffer.
        let rc = unsafe { f(self.host.user, handle as *mut c_void, bytes.as_ptr().cast(), bytes.len()) };
        if rc != 0 {
            self.failed = true;
            return Err(switchyard::Error::Invalid(format!("the host's write callback returned {rc}")));
        }
        Ok(())
    }
}

/// # Safety
/// `s` non-NULL and NUL-terminated.
pub(crate) unsafe fn utf8<'a>(s: *const c_char, what: &str) -> Result<&'a str, switchyard_result> {
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(s) }.to_str().map_err(|_| {
        set_last_error(format!("argument '{what}' is not valid UTF-8"));
        SWITCHYARD_RESULT_INVALID_UTF8
    })
}

macro_rules! try_utf8 {
    ($p:ident) => {
        // SAFETY: checked non-NULL by the caller's check_null!, NUL-terminated by contract.
        match unsafe { utf8($p, stringify!($p)) } {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

/// Open the bundle at `path`: validates every delta and the base fingerprint. On success
/// `*out` receives a handle to release with `switchyard_model_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_init(
    path: *const c_char,
    out: *mut *mut switchyard_model,
) -> switchyard_result {
    boundary(|| {
        check_null!(path, out);
        let path = try_utf8!(path);
        let opened = Switcher::open(Path::new(path)).and_then(|s| {
            let router = PromptRouter::open(Path::new(path))?;
            // opened twice: a router rewritten in between must still name this bundle's experts
            if let Some(r) = &router {
                if let Some(c) = r.head.classes.iter().find(|c| *c != BASE && !s.expert_names().any(|e| e == *c)) {
                    return Err(switchyard::Error::Invalid(format!(
                        "{path}: the router names expert '{c}', which the bundle lacks"
                    )));
                }
            }
            Ok((s, router))
        });
        match opened {
            Ok((s, router)) => {
                let experts = s.expert_names().map(String::from).collect();
                let gpu = Mutex::new(DeviceDecoder::default());
                let b = Box::new(switchyard_model { inner: Mutex::new(s), gpu, router, experts });
                // SAFETY: out checked non-NULL.
                unsafe { *out = Box::into_raw(b) };
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Release a model from `switchyard_model_init`. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_free(model: *mut switchyard_model) {
    boundary_value((), || {
        if !model.is_null() {
            // SAFETY: the pointer came from Box::into_raw in switchyard_model_init, and the
            // caller gives up its handle here.
            drop(unsafe { Box::from_raw(model) });
        }
    })
}

/// The ggml type (`enum ggml_type` value) weight `name` must be created in because the bundle
/// manages it, or -1 when the host loads it from the file as usual (also for NULL arguments).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_tensor_type(model: *const switchyard_model, name: *const c_char) -> i32 {
    boundary_value(-1, || {
        if model.is_null() || name.is_null() {
            return -1;
        }
        // SAFETY: non-NULL, a live handle and a NUL-terminated string by contract.
        let (m, name) = unsafe { (&*model, CStr::from_ptr(name)) };
        let Ok(name) = name.to_str() else { return -1 };
        m.lock().managed_type(name).map_or(-1, |t| t as i32)
    })
}

/// Number of weights the bundle manages (those `switchyard_model_tensor_type` gives a type).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_n_managed(model: *const switchyard_model) -> u32 {
    boundary_value(0, || {
        if model.is_null() {
            return 0;
        }
        // SAFETY: a live handle by contract.
        unsafe { &*model }.lock().managed_count() as u32
    })
}

/// Register `tensor` (an opaque pointer handed back to the write callback) as created for
/// managed weight `name`. A weight created several times (tied embeddings) is bound each time.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_bind(
    model: *mut switchyard_model,
    name: *const c_char,
    tensor: *mut c_void,
) -> switchyard_result {
    boundary(|| {
        check_null!(model, name, tensor);
        let name = try_utf8!(name);
        // SAFETY: a live handle by contract.
        let m = unsafe { &*model };
        match m.lock().bind(name, tensor as usize) {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Write expert `name` ("base" for the base model) into every bound tensor through `host`.
/// A no-op when that expert is already in place. The host must not run the model while this
/// runs, and must clear its KV cache afterwards. On failure the tensors may hold a mix of
/// experts: switch again before using them.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_set_expert(
    model: *mut switchyard_model,
    name: *const c_char,
    host: *const switchyard_host,
) -> switchyard_result {
    boundary(|| {
        check_null!(model, name, host);
        // SAFETY: non-NULL; a live struct by contract.
        let host = unsafe { &*host };
        if host.write.is_none() {
            set_last_error("argument 'host' has no write callback");
            return SWITCHYARD_RESULT_NULL_ARGUMENT;
        }
        let name = try_utf8!(name);
        // SAFETY: a live handle by contract.
        let m = unsafe { &*model };
        let mut switcher = m.lock();
        let mut gpu = m.gpu.lock().unwrap_or_else(|p| p.into_inner());
        let mut adapter = CallbackHost { host, failed: false, gpu: &mut gpu };
        let res = switcher.set_expert(name, &mut adapter);
        match res {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) if adapter.failed => {
                set_last_error(e.to_string());
                SWITCHYARD_RESULT_CALLBACK_FAILED
            }
            Err(e) => fail(&e),
        }
    })
}

/// Number of experts in the bundle (not counting "base").
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_n_experts(model: *const switchyard_model) -> u32 {
    boundary_value(0, || {
        if model.is_null() {
            return 0;
        }
        // SAFETY: a live handle by contract.
        unsafe { &*model }.lock().expert_names().count() as u32
    })
}

/// Name of expert `index` (0-based) into `buf` (`len` bytes, NUL-terminated); its length
/// without the NUL goes to `*out_len` when `out_len` is not NULL, also when `buf` is too small.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_expert_name(
    model: *const switchyard_model,
    index: u32,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> switchyard_result {
    boundary(|| {
        check_null!(model);
        // SAFETY: a live handle by contract.
        let m = unsafe { &*model }.lock();
        let Some(name) = m.expert_names().nth(index as usize) else {
            set_last_error(format!("no expert {index}: the bundle has {}", m.expert_names().count()));
            return SWITCHYARD_RESULT_NOT_FOUND;
        };
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { write_str(name, buf, len, out_len) }
    })
}

/// Name of the expert the bound tensors hold ("base" before any switch or after switching
/// back), same buffer rules as `switchyard_model_expert_name`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_current_expert(
    model: *const switchyard_model,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> switchyard_result {
    boundary(|| {
        check_null!(model);
        // SAFETY: a live handle by contract.
        let m = unsafe { &*model }.lock();
        // SAFETY: buffer contract forwarded from the caller.
        unsafe { write_str(m.current(), buf, len, out_len) }
    })
}

/// Whether the bundle carries a router (`switchyard router train`): 1 if so, 0 if not or NULL.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_has_router(model: *const switchyard_model) -> u32 {
    boundary_value(0, || {
        // SAFETY: NULL or a live handle by contract.
        (!model.is_null() && unsafe { &*model }.router.is_some()) as u32
    })
}

/// Choose the expert for a prompt from its `n_tokens` tokens (the model's vocabulary, without
/// BOS or chat-template tokens). `*out_expert` receives the expert's index (as in
/// `switchyard_model_expert_name`) or -1 for the base model, which serves when the router's
/// confidence is below `threshold` (above 1: always) (a negative `threshold` uses the one stored in the bundle)
/// or the prompt is empty; `*out_confidence` (when not NULL) the router's probability of its top
/// class. Never waits for a switch in progress. NOT_FOUND when the bundle has no router.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_route(
    model: *const switchyard_model,
    tokens: *const i32,
    n_tokens: usize,
    threshold: f32,
    out_expert: *mut i32,
    out_confidence: *mut f32,
) -> switchyard_result {
    boundary(|| {
        check_null!(model, out_expert);
        if tokens.is_null() && n_tokens > 0 {
            set_last_error("argument 'tokens' is NULL but n_tokens is not 0");
            return SWITCHYARD_RESULT_NULL_ARGUMENT;
        }
        // SAFETY: a live handle by contract.
        let m = unsafe { &*model };
        let Some(router) = &m.router else {
            set_last_error("the bundle has no router (add one with `switchyard router train`)");
            return SWITCHYARD_RESULT_NOT_FOUND;
        };
        // SAFETY: n_tokens readable tokens by contract (checked non-NULL when there are any).
        let tokens = if n_tokens == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(tokens, n_tokens) } };
        let threshold = (threshold >= 0.0).then_some(threshold);
        match router.route(tokens, threshold) {
            Ok(route) => {
                // classes were checked against the experts when the model was opened
                let expert = m.experts.iter().position(|e| e == route.expert).map_or(-1, |i| i as i32);
                // SAFETY: out pointers checked non-NULL (confidence is optional).
                unsafe {
                    *out_expert = expert;
                    if !out_confidence.is_null() {
                        *out_confidence = route.confidence;
                    }
                }
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}
