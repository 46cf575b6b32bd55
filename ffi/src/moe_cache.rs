//! `switchyard_moe_cache`: a MoE model's experts read from its file on demand into a budgeted
//! cache (`--moe-cache` in the patched llama.cpp; the library side is
//! `plugin/src/moe/cache/`). The host binds each stacked expert tensor's memory, then forwards,
//! per MoE layer and in the order llama.cpp's build_moe_ffn computes them, the router's
//! probabilities (with the router's input), the top-k picks and the picks' gate weights; the
//! library keeps each layer's routing state between them and makes every decision: what is read
//! in, read ahead, evicted or skipped, and which gate weights become zero.

use std::ffi::c_char;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use switchyard::moe::cache::{parse_policy, Budget, MoeCache, MoeCacheConfig, MoeCacheStats};

use crate::error::{fail, result_of, switchyard_result};
use crate::ptr::{
    boundary, free_box, null_argument, to_boxed_ptr, try_mut_slice, try_out, try_ref_from_ptr, try_slice, try_str,
    Castable, OwnershipBox,
};
use switchyard_result::*;

/// An open MoE cache. Calls on one cache are serialised.
pub struct switchyard_moe_cache {
    inner: Mutex<MoeCache>,
}

impl Castable for switchyard_moe_cache {
    type Ownership = OwnershipBox;
    type RustType = switchyard_moe_cache;
}

impl switchyard_moe_cache {
    fn lock(&self) -> MutexGuard<'_, MoeCache> {
        // a panic while locked was already reported; the counters and residency stay usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a MoE cache is set up. Start from `switchyard_moe_cache_default_params()` and change what
/// the host's options set.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct switchyard_moe_cache_params {
    /// The cache's size: bytes ("512M", "2G", "1073741824") or a share of all expert bytes
    /// ("25%"). Default "100%".
    pub budget: *const c_char,
    /// Which expert to evict: "lru" (default), "lfu", "hobbit" or
    /// "hobbit:w_lru,w_lfu,w_lhu,w_fld".
    pub policy: *const c_char,
    /// On a miss, a pick whose unimportance (the share of the token's pick weight ranked above
    /// it) exceeds `t1` is read from its low-precision copy (`switchyard moe-pack`), and one
    /// above `t2` is not read: it is skipped. 1 and 1 (default) read everything in full
    /// precision.
    pub t1: f32,
    pub t2: f32,
    /// Also skip a later pick weighing less than the layer's beta (stored by
    /// `switchyard moe-pack --trace`) times the first pick's. Default false.
    pub skip_beta: bool,
    /// How many later layers to read ahead for while a layer computes (0, the default: none).
    pub prefetch: u32,
}

/// The default parameters: a cache of all experts (each read once, on first use), least
/// recently used evicted first, everything in full precision, no reading ahead.
#[no_mangle]
pub extern "C" fn switchyard_moe_cache_default_params() -> switchyard_moe_cache_params {
    let MoeCacheConfig { policy, t1, t2, skip_beta, prefetch, .. } = MoeCacheConfig::new(Budget::Percent(100.0));
    debug_assert_eq!(policy.name(), "lru");
    switchyard_moe_cache_params {
        budget: c"100%".as_ptr(),
        policy: c"lru".as_ptr(),
        t1: t1 as f32,
        t2: t2 as f32,
        skip_beta,
        prefetch: prefetch as u32,
    }
}

/// Open the mixture-of-experts GGUF at `path` as a MoE cache set up by `params`; `*out`
/// receives a handle to release with `switchyard_moe_cache_free`. A budget, policy or
/// threshold that cannot be used is `SWITCHYARD_RESULT_INVALID`, as is a model without the
/// low-precision copies (`t1` < 1) or skipping thresholds (`skip_beta`) it asks for.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_init(
    path: *const c_char,
    params: switchyard_moe_cache_params,
    out: *mut *mut switchyard_moe_cache,
) -> switchyard_result {
    boundary(|| {
        let path = try_str!(path);
        let switchyard_moe_cache_params { budget, policy, t1, t2, skip_beta, prefetch } = params;
        let budget = try_str!(budget);
        let policy = try_str!(policy);
        let out = try_out!(out);
        let opened = Budget::parse(budget).and_then(|budget| {
            let policy = parse_policy(policy)?;
            let config =
                MoeCacheConfig { budget, policy, t1: t1 as f64, t2: t2 as f64, skip_beta, prefetch: prefetch as usize };
            MoeCache::open(Path::new(path), &config)
        });
        match opened {
            Ok(cache) => {
                out.write(to_boxed_ptr(switchyard_moe_cache { inner: Mutex::new(cache) }));
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
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let name = try_str!(name);
        cache.lock().manages(name) as u32
    })
}

/// Hand over the host memory of expert tensor `name` (`len` bytes, malloc'd): from now on the
/// cache fills and empties it. It must stay valid until `switchyard_moe_cache_free`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_bind(
    cache: *const switchyard_moe_cache,
    name: *const c_char,
    data: *mut u8,
    len: usize,
) -> switchyard_result {
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let name = try_str!(name);
        if data.is_null() {
            return null_argument("data");
        }
        // SAFETY: data holds len bytes the host gives over, per this function's contract.
        result_of(unsafe { cache.lock().bind(name, data, len) })
    })
}

/// Step 1 of MoE layer `layer` (build_moe_ffn's `ffn_moe_probs`): the router's probabilities
/// for the batch, `n_probs` floats (n_expert per token), and the router's input, `n_gate_input`
/// floats (n_embd per token; NULL and 0 when the host does not have it), from which the next
/// layers' experts are guessed. Both are copied.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_eval_probs(
    cache: *const switchyard_moe_cache,
    layer: u32,
    probs: *const f32,
    n_probs: usize,
    gate_input: *const f32,
    n_gate_input: usize,
) -> switchyard_result {
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let probs = try_slice!(probs, n_probs);
        let gate_input = try_slice!(gate_input, n_gate_input);
        result_of(cache.lock().eval_probs(layer as usize, probs, gate_input))
    })
}

/// Step 2 of MoE layer `layer` (`ffn_moe_topk`): the experts the router picked, `n_picks`
/// values, `n_used` per token. When this returns, every pick that is not skipped is in memory,
/// and the experts the next layers' routers pick for the layer's input are being read in the
/// background. Without step 1, every pick weighs the same. A failure means the layer cannot
/// run; a failure to read ahead does not fail the call (prefetching stops, and the reason is
/// printed to stderr).
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_eval_topk(
    cache: *const switchyard_moe_cache,
    layer: u32,
    n_used: u32,
    experts: *const i32,
    n_picks: usize,
) -> switchyard_result {
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let experts = try_slice!(experts, n_picks);
        let mut cache = cache.lock();
        let res = cache.eval_topk(layer as usize, n_used as usize, experts);
        if let Some(e) = cache.take_prefetch_failure() {
            eprintln!("switchyard: moe cache: {e}; prefetching stops");
        }
        result_of(res)
    })
}

/// Step 3 of MoE layer `layer` (`ffn_moe_weights`): the picks' gate weights, `n_weights`
/// floats in the order of step 2. The weights of skipped picks are set to zero in place;
/// `*changed` says whether any was (the host then writes them back to its tensor).
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_eval_weights(
    cache: *const switchyard_moe_cache,
    layer: u32,
    weights: *mut f32,
    n_weights: usize,
    changed: *mut bool,
) -> switchyard_result {
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let weights = try_mut_slice!(weights, n_weights);
        let changed = try_out!(changed);
        match cache.lock().eval_weights(layer as usize, weights) {
            Ok(c) => {
                changed.write(c);
                SWITCHYARD_RESULT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Copy the cache's counters into `*out`.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_get_stats(
    cache: *const switchyard_moe_cache,
    out: *mut MoeCacheStats,
) -> switchyard_result {
    boundary(|| {
        let cache = try_ref_from_ptr!(cache);
        let out = try_out!(out);
        out.write(cache.lock().stats());
        SWITCHYARD_RESULT_OK
    })
}

/// Release a cache from `switchyard_moe_cache_init` (waiting for its reads ahead). NULL is
/// ignored.
#[no_mangle]
pub unsafe extern "C" fn switchyard_moe_cache_free(cache: *mut switchyard_moe_cache) {
    // SAFETY: NULL or a handle from switchyard_moe_cache_init, which the caller gives up here.
    boundary(|| unsafe { free_box(cache) })
}
