//! `switchyard_model`: a bundle opened for switching experts in a host's tensors.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Mutex;

use switchyard::router::PromptRouter;
use switchyard::switch::{DeviceJob, Switcher};

use crate::error::{fail, result_of, set_last_error, switchyard_result};
use crate::gpu::DeviceDecoder;
use crate::ptr::{
    boundary, free_box, null_argument, to_boxed_ptr, try_out, try_ref_from_ptr, try_slice, try_str, Castable, Out,
    OwnershipBox, OwnershipRef,
};
use switchyard_result::*;

/// A bundle opened for switching. Thread-safe: calls on one model are serialised.
pub struct switchyard_model {
    inner: Mutex<Switcher>,
    /// GPU state for hosts whose weights live on a GPU; locked after `inner`.
    gpu: Mutex<DeviceDecoder>,
    /// The bundle's router, if it has one; immutable, so routing never waits for a switch.
    router: Option<PromptRouter>,
    /// "base", then the experts' names in bundle order (index i + 1 for expert i), for routing
    /// without taking the lock and for hosts that hand names out: they live as long as the model.
    names: Vec<CString>,
}

impl Castable for switchyard_model {
    type Ownership = OwnershipBox;
    type RustType = switchyard_model;
}

impl switchyard_model {
    /// Expert `index` ("base" for -1) as its place in `names`.
    fn name_slot(&self, index: i32) -> Option<usize> {
        usize::try_from(index.checked_add(1)?).ok().filter(|&i| i < self.names.len())
    }

    /// The index of expert `name` as `switchyard_model_expert_name` takes it; -1 for "base".
    fn index_of(&self, name: &str) -> i32 {
        self.names.iter().skip(1).position(|n| n.to_bytes() == name.as_bytes()).map_or(-1, |i| i as i32)
    }

    fn n_experts(&self) -> usize {
        self.names.len() - 1
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Switcher> {
        // A panic while locked was already reported; the switcher's state stays usable
        // (a failed switch is redone by the next one).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The type of `switchyard_host::write` (spelled out there too, for cbindgen).
type WriteFn = unsafe extern "C" fn(user: *mut c_void, tensor: *mut c_void, data: *const c_void, size: usize) -> i32;

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

impl Castable for switchyard_host {
    type Ownership = OwnershipRef;
    type RustType = switchyard_host;
}

/// Adapts the host's callbacks to the switcher; remembers a failed callback for the result code.
struct CallbackHost<'a> {
    host: &'a switchyard_host,
    write: WriteFn,
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
        // SAFETY: the host says ptr is its tensor on that GPU, idle during the switch.
        Ok(unsafe { self.gpu.decode(ptr, device, job) })
    }

    fn memory(&mut self, handle: usize, len: usize) -> Option<&mut [u8]> {
        let f = self.host.memory?;
        // SAFETY: the host's callback with the handle it bound.
        let p = unsafe { f(self.host.user, handle as *mut c_void, len) };
        // SAFETY: the host lends `len` writable bytes at p for the duration of the switch.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
    }

    fn write(&mut self, handle: usize, bytes: &[u8]) -> switchyard::Result<()> {
        // SAFETY: the host's callback, given the handle it bound and a live buffer.
        let rc = unsafe { (self.write)(self.host.user, handle as *mut c_void, bytes.as_ptr().cast(), bytes.len()) };
        if rc != 0 {
            self.failed = true;
            return Err(switchyard::Error::Invalid(format!("the host's write callback returned {rc}")));
        }
        Ok(())
    }
}

/// Open the bundle at `path`: validates every delta and the base fingerprint. On success
/// `*out` receives a handle to release with `switchyard_model_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_init(
    path: *const c_char,
    out: *mut *mut switchyard_model,
) -> switchyard_result {
    boundary(|| {
        let path = try_str!(path);
        let out = try_out!(out);
        let opened = Switcher::open(Path::new(path)).and_then(|s| Ok((PromptRouter::from_bundle(s.bundle())?, s)));
        match opened {
            Ok((router, s)) => {
                // names come from GGUF strings: a NUL inside one is refused by name
                let names = std::iter::once("base")
                    .chain(s.expert_names())
                    .map(|n| CString::new(n).map_err(|_| format!("expert name {n:?} contains a NUL byte")))
                    .collect::<Result<Vec<_>, _>>();
                let names = match names {
                    Ok(names) => names,
                    Err(msg) => return fail(&switchyard::Error::Invalid(format!("{path}: {msg}"))),
                };
                let gpu = Mutex::new(DeviceDecoder::default());
                out.write(to_boxed_ptr(switchyard_model { inner: Mutex::new(s), gpu, router, names }));
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Release a model from `switchyard_model_init`. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_free(model: *mut switchyard_model) {
    // SAFETY: NULL or a handle from switchyard_model_init, which the caller gives up here.
    boundary(|| unsafe { free_box(model) })
}

/// The ggml type (`enum ggml_type` value) weight `name` must be created in because the bundle
/// manages it, or -1 when the host loads it from the file as usual (also for NULL arguments).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_tensor_type(model: *const switchyard_model, name: *const c_char) -> i32 {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        m.lock().managed_type(name).map_or(-1, |t| t as i32)
    })
}

/// Number of weights the bundle manages (those `switchyard_model_tensor_type` gives a type).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_n_managed(model: *const switchyard_model) -> u32 {
    boundary(|| try_ref_from_ptr!(model).lock().managed_count() as u32)
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
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        if tensor.is_null() {
            return null_argument("tensor");
        }
        result_of(m.lock().bind(name, tensor as usize))
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
        let m = try_ref_from_ptr!(model);
        let name = try_str!(name);
        let host = try_ref_from_ptr!(host);
        let Some(write) = host.write else {
            set_last_error("argument 'host' has no write callback");
            return SWITCHYARD_RESULT_NULL_ARGUMENT;
        };
        let mut switcher = m.lock();
        let mut gpu = m.gpu.lock().unwrap_or_else(|p| p.into_inner());
        let mut adapter = CallbackHost { host, write, failed: false, gpu: &mut gpu };
        match switcher.set_expert(name, &mut adapter) {
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
    boundary(|| try_ref_from_ptr!(model).n_experts() as u32)
}

/// Name of expert `index` (0-based, bundle order; -1 for "base"), NUL-terminated and owned by
/// the model: valid until `switchyard_model_free`. NULL when `index` is out of range (or the
/// model is NULL).
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_expert_name(model: *const switchyard_model, index: i32) -> *const c_char {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        match m.name_slot(index) {
            Some(i) => m.names[i].as_ptr(),
            None => {
                set_last_error(format!("no expert {index}: the bundle has {}", m.n_experts()));
                std::ptr::null()
            }
        }
    })
}

/// Index of the expert the bound tensors hold (as in `switchyard_model_expert_name`: -1 for
/// "base", before any switch or after switching back) into `*out_index`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_current_expert(
    model: *const switchyard_model,
    out_index: *mut i32,
) -> switchyard_result {
    boundary(|| {
        let m = try_ref_from_ptr!(model);
        let out_index = try_out!(out_index);
        out_index.write(m.index_of(m.lock().current()));
        SWITCHYARD_RESULT_OK
    })
}

/// Whether the bundle carries a router (`switchyard router train`): 1 if so, 0 if not or NULL.
#[no_mangle]
pub unsafe extern "C" fn switchyard_model_has_router(model: *const switchyard_model) -> u32 {
    boundary(|| try_ref_from_ptr!(model).router.is_some() as u32)
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
        let m = try_ref_from_ptr!(model);
        let tokens = try_slice!(tokens, n_tokens);
        let out_expert = try_out!(out_expert);
        let Some(router) = &m.router else {
            set_last_error("the bundle has no router (add one with `switchyard router train`)");
            return SWITCHYARD_RESULT_NOT_FOUND;
        };
        let threshold = (threshold >= 0.0).then_some(threshold);
        match router.route(tokens, threshold) {
            Ok(route) => {
                // the router's classes are the bundle's experts (checked when it was opened)
                let expert = m.index_of(route.expert);
                out_expert.write(expert);
                // SAFETY: NULL (not wanted) or writable (contract).
                if let Some(c) = unsafe { Out::new(out_confidence) } {
                    c.write(route.confidence);
                }
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}
