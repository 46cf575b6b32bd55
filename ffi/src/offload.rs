//! Experts on disk with a budgeted cache in memory (`--moe-cache` in the patched llama.cpp; see
//! `plugin/src/moe/offload.rs`): the host binds each stacked expert tensor's memory, then
//! before a MoE layer runs hands over the router's picks, and the library reads the missing
//! experts in and evicts others; given the layer's gate input, it also starts reading what the
//! next layers' routers pick for it.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use switchyard::moe::cache::Policy;
use switchyard::moe::offload::{Budget, ExpertStore, MissRules};

use crate::error::{boundary, boundary_value, check_null, fail, set_last_error, slice_or_empty, switchyard_result};
use crate::model::utf8;
use switchyard_result::*;

/// An open expert store.
pub struct switchyard_moe_cache {
    store: Mutex<ExpertStore>,
}

/// What the cache did so far.
#[repr(C)]
pub struct switchyard_moe_cache_stats {
    /// Picks served from memory, read from the file (of them, from low-precision copies: t1),
    /// and skipped (t2 or beta).
    pub hits: u64,
    pub loads: u64,
    pub loads_low: u64,
    pub skipped: u64,
    pub bytes_read: u64,
    pub evictions: u64,
    /// The budget in bytes, and the most expert bytes resident at once.
    pub budget: u64,
    pub peak_resident: u64,
    /// Experts read ahead by `switchyard_moe_cache_prefetch`, and those of them a pick then used
    /// (also counted in `hits`).
    pub prefetched: u64,
    pub prefetch_hits: u64,
}

/// Open the mixture-of-experts GGUF at `path` for offloading. `budget` is bytes ("512M", "2G",
/// "1073741824") or a share of all expert bytes ("25%"); `policy` is "lru", "lfu", "hobbit" or
/// "hobbit:w_lru,w_lfu,w_lhu,w_fld". On a miss, a pick whose unimportance (the share of the
/// token's pick weight ranked above it) exceeds `t2` is not read, one above `t1` is read from
/// its low-precision copy (`switchyard moe-pack`); 1 and 1 read everything in high precision.
/// `skip_beta` also skips a later pick weighing less than the layer's beta (stored by
/// `moe-pack --trace`) times the first's.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_init(
    path: *const c_char,
    budget: *const c_char,
    policy: *const c_char,
    t1: f32,
    t2: f32,
    skip_beta: bool,
    out: *mut *mut switchyard_moe_cache,
) -> switchyard_result {
    boundary(|| {
        check_null!(path, budget, policy, out);
        // SAFETY: checked non-NULL, NUL-terminated by contract.
        let (path, budget_s, policy_s) =
            match unsafe { (utf8(path, "path"), utf8(budget, "budget"), utf8(policy, "policy")) } {
                (Ok(p), Ok(b), Ok(q)) => (p, b, q),
                (Err(r), ..) | (_, Err(r), _) | (.., Err(r)) => return r,
            };
        let Some(budget) = Budget::parse(budget_s) else {
            set_last_error(format!("moe cache budget '{budget_s}' is not bytes (512M, 2G) or a percentage (25%)"));
            return SWITCHYARD_RESULT_INVALID;
        };
        let Some(policy) = Policy::from_name(policy_s) else {
            set_last_error(format!(
                "moe cache policy '{policy_s}' is not lru, lfu, hobbit or hobbit:W (4 weights summing to 1)"
            ));
            return SWITCHYARD_RESULT_INVALID;
        };
        let rules = MissRules { t1: t1 as f64, t2: t2 as f64, beta: skip_beta };
        match ExpertStore::open(Path::new(path), budget, policy, rules) {
            Ok(store) => {
                let c = Box::new(switchyard_moe_cache { store: Mutex::new(store) });
                // SAFETY: out checked non-NULL.
                unsafe { *out = Box::into_raw(c) };
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// 1 when tensor `name` is an expert tensor the cache fills (the host allocates it in plain,
/// writable host memory and does not read it), 0 if not or NULL.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_manages(cache: *const switchyard_moe_cache, name: *const c_char) -> u32 {
    boundary_value(0, || {
        if cache.is_null() || name.is_null() {
            return 0;
        }
        // SAFETY: checked non-NULL; a live handle and a NUL-terminated name by contract.
        let (cache, name) = unsafe { (&*cache, std::ffi::CStr::from_ptr(name)) };
        let store = cache.store.lock().unwrap_or_else(|p| p.into_inner());
        name.to_str().is_ok_and(|n| store.manages(n)) as u32
    })
}

/// Hand over the host memory of expert tensor `name` (`len` bytes): from now on the cache fills
/// and empties it. It must stay valid until `switchyard_moe_cache_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_bind(
    cache: *const switchyard_moe_cache,
    name: *const c_char,
    data: *mut u8,
    len: usize,
) -> switchyard_result {
    boundary(|| {
        check_null!(cache, name, data);
        // SAFETY: checked non-NULL, NUL-terminated by contract.
        let name = match unsafe { utf8(name, "name") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        // SAFETY: a live handle by contract.
        let cache = unsafe { &*cache };
        let mut store = cache.store.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: data holds len bytes the host reserves for the cache, per this function's contract.
        match unsafe { store.bind(name, data, len) } {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Before layer `layer`'s experts run: `experts[t * n_used + i]` is token t's i-th pick
/// (`n_tokens` tokens), `probs[t * n_expert + e]` (NULL: equal weights) the router probability
/// of expert e for token t. Every pick not skipped is in memory when this returns;
/// `dropped[t * n_used + i]` (NULL: not wanted) is set to 1 for a pick that was skipped, whose
/// gate weight the host should zero, and 0 for the others.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn switchyard_moe_cache_prepare(
    cache: *const switchyard_moe_cache,
    layer: u32,
    n_used: u32,
    n_tokens: u32,
    experts: *const i32,
    probs: *const f32,
    n_expert: u32,
    dropped: *mut u8,
) -> switchyard_result {
    boundary(|| {
        check_null!(cache);
        let n = n_used as usize * n_tokens as usize;
        if n > 0 {
            check_null!(experts);
        }
        // SAFETY: the caller passes n_used * n_tokens picks, n_tokens * n_expert probabilities
        // (or NULL) and a live handle.
        let (cache, experts) = unsafe { (&*cache, slice_or_empty(experts, n)) };
        let probs = (!probs.is_null()).then(|| unsafe { slice_or_empty(probs, n_tokens as usize * n_expert as usize) });
        let mut store = cache.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.prepare(layer as usize, n_used as usize, experts, probs) {
            Ok(skipped) => {
                if !dropped.is_null() {
                    // SAFETY: the caller passes room for n_used * n_tokens flags, one per pick.
                    let out = unsafe { std::slice::from_raw_parts_mut(dropped, n) };
                    for (o, s) in out.iter_mut().zip(skipped) {
                        *o = s as u8;
                    }
                }
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// After `switchyard_moe_cache_prepare` for layer `layer`: `x` holds its `n_tokens` tokens'
/// gate input (the router's input, `n_embd` floats per token). Starts reading, in the
/// background, the experts that the routers of layers `layer + 1 ..= layer + depth` pick for
/// `x` (`n_used` per token), as far as the cache has room besides `layer`'s picks. Returns at
/// once; the preparation of a later layer waits for the reads meant for it. Batches of more
/// than a few tokens (a prompt) are not prefetched for.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_prefetch(
    cache: *const switchyard_moe_cache,
    layer: u32,
    depth: u32,
    n_used: u32,
    n_tokens: u32,
    x: *const f32,
    n_embd: u32,
) -> switchyard_result {
    boundary(|| {
        check_null!(cache);
        let n = n_tokens as usize * n_embd as usize;
        if n > 0 {
            check_null!(x);
        }
        // SAFETY: the caller passes n_tokens * n_embd floats and a live handle.
        let (cache, x) = unsafe { (&*cache, slice_or_empty(x, n)) };
        let mut store = cache.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.prefetch(layer as usize, depth as usize, n_used as usize, x) {
            Ok(()) => SWITCHYARD_RESULT_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Copy the cache's counters into `*out`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_get_stats(
    cache: *const switchyard_moe_cache,
    out: *mut switchyard_moe_cache_stats,
) -> switchyard_result {
    boundary(|| {
        check_null!(cache, out);
        // SAFETY: a live handle; out checked non-NULL.
        let s = unsafe { &*cache }.store.lock().unwrap_or_else(|p| p.into_inner()).stats();
        // SAFETY: out checked non-NULL.
        unsafe {
            *out = switchyard_moe_cache_stats {
                hits: s.hits,
                loads: s.loads,
                loads_low: s.loads_low,
                skipped: s.skipped,
                bytes_read: s.bytes_read,
                evictions: s.evictions,
                budget: s.budget,
                peak_resident: s.peak_resident,
                prefetched: s.prefetched,
                prefetch_hits: s.prefetch_hits,
            }
        };
        SWITCHYARD_RESULT_OK
    })
}

/// Release a cache from `switchyard_moe_cache_init`. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_free(cache: *mut switchyard_moe_cache) -> switchyard_result {
    boundary(|| {
        if !cache.is_null() {
            // SAFETY: from Box::into_raw in switchyard_moe_cache_init; the caller gives it up.
            drop(unsafe { Box::from_raw(cache) });
        }
        SWITCHYARD_RESULT_OK
    })
}
