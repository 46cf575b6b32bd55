// The MoE cache (--moe-cache): a MoE model's experts read from its file on demand into a
// budgeted cache, before each layer runs. The library (switchyard_moe_cache_*, whose Rust side is
// plugin/src/moe/cache/) keeps each layer's routing state and makes every decision; this file
// sets the cache up from the command line's overrides, allocates the experts unread, and
// forwards the tensors build_moe_ffn computes.
#include "llama-switchyard-impl.h"

#include "llama-impl.h"
#include "llama-model-loader.h"
#include "llama-model.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

struct llama_switchyard_moe_cache {
    switchyard_moe_cache * handle = nullptr;
};

llama_switchyard_moe_cache * llama_switchyard_moe_cache_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits, bool is_bundle) {
    const std::string budget = llama_switchyard_override_str(ml, "switchyard.moe_cache", "");
    if (budget.empty()) {
        return nullptr;
    }
    if (is_bundle || n_splits > 1) {
        throw std::runtime_error("--moe-cache: not for switchyard bundles or split models: " + fname);
    }
    if (const std::string mismatch = llama_switchyard_abi_mismatch(); !mismatch.empty()) {
        throw std::runtime_error(mismatch);
    }
    switchyard_moe_cache_params params = switchyard_moe_cache_default_params();
    const std::string policy = llama_switchyard_override_str(ml, "switchyard.moe_policy", params.policy);
    params.budget = budget.c_str();
    params.policy = policy.c_str();
    const auto threshold = [&ml](const char * key, float fallback) {
        const auto it = ml.kv_overrides.find(key);
        if (it == ml.kv_overrides.end()) {
            return fallback;
        }
        if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_FLOAT) {
            throw std::runtime_error(format("switchyard: override %s must be a number", key));
        }
        return (float) it->second.val_f64;
    };
    params.t1 = threshold("switchyard.moe_t1", params.t1);
    params.t2 = threshold("switchyard.moe_t2", params.t2);
    if (const auto it = ml.kv_overrides.find("switchyard.moe_skip_beta"); it != ml.kv_overrides.end()) {
        if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_BOOL) {
            throw std::runtime_error("switchyard: override switchyard.moe_skip_beta must be a boolean");
        }
        params.skip_beta = it->second.val_bool;
    }
    if (const auto it = ml.kv_overrides.find("switchyard.moe_prefetch"); it != ml.kv_overrides.end()) {
        if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_INT || it->second.val_i64 < 0 || it->second.val_i64 > UINT32_MAX) {
            throw std::runtime_error("--moe-prefetch: a number of layers (0 or more)");
        }
        params.prefetch = (uint32_t) it->second.val_i64;
    }
    auto cache = std::make_unique<llama_switchyard_moe_cache>();
    const switchyard_result res = switchyard_moe_cache_init(fname.c_str(), params, &cache->handle);
    if (res != SWITCHYARD_RESULT_OK) {
        throw std::runtime_error("--moe-cache: " + llama_switchyard_error(res));
    }
    switchyard_moe_cache * handle = cache->handle;
    // the dense weights are read into memory rather than mapped: llama.cpp maps the whole file
    // with MAP_POPULATE, which would read every expert at load and keep them as page cache
    ml.use_mmap = false;
    // the experts are created in the file's type, in plain host memory, and not read at load
    ml.type_override = [handle, &ml](const std::string & name, ggml_type & type) {
        if (!switchyard_moe_cache_manages(handle, name.c_str())) {
            return false;
        }
        type = ml.get_tensor_meta(name.c_str())->type;
        return true;
    };
    switchyard_moe_cache_stats stats;
    switchyard_moe_cache_get_stats(handle, &stats);
    LLAMA_LOG_INFO("%s: experts read on demand into a cache of %.1f MiB (policy %s, t1 %.2f, t2 %.2f, beta %s, prefetch %u layers)\n",
        __func__, stats.budget / 1048576.0, policy.c_str(), params.t1, params.t2, params.skip_beta ? "on" : "off", params.prefetch);
    return cache.release();
}

void llama_switchyard_moe_cache_bind(llama_switchyard_moe_cache * cache, llama_model & model) {
    for (auto & [name, tensor] : model.tensors_by_name) {
        if (!switchyard_moe_cache_manages(cache->handle, name.c_str())) {
            continue;
        }
        // plain malloc'd memory: the cache returns evicted pages with madvise (pinned host
        // buffers of GPU builds would neither shrink nor be safe to rewrite under async copies)
        if (tensor->buffer == nullptr || ggml_backend_buffer_get_type(tensor->buffer) != ggml_backend_cpu_buffer_type()) {
            throw std::runtime_error("--moe-cache: expert tensor " + name + " is not in plain CPU memory (GPU builds are not supported yet)");
        }
        const switchyard_result res = switchyard_moe_cache_bind(cache->handle, name.c_str(), (uint8_t *) tensor->data, ggml_nbytes(tensor));
        if (res != SWITCHYARD_RESULT_OK) {
            throw std::runtime_error("--moe-cache: " + llama_switchyard_error(res));
        }
    }
}

void llama_switchyard_moe_cache_free(llama_switchyard_moe_cache * cache) {
    if (!cache) {
        return;
    }
    switchyard_moe_cache_stats s;
    if (switchyard_moe_cache_get_stats(cache->handle, &s) == SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_INFO("%s: moe cache: budget %.1f MiB, %llu hits, %llu loads (%llu low precision, %.1f MiB read), %llu skipped, "
            "%llu evictions, %llu prefetched (%llu used), peak %.1f MiB resident\n",
            __func__, s.budget / 1048576.0, (unsigned long long) s.hits, (unsigned long long) s.loads,
            (unsigned long long) s.loads_low, s.bytes_read / 1048576.0, (unsigned long long) s.skipped, (unsigned long long) s.evictions, (unsigned long long) s.prefetched,
            (unsigned long long) s.prefetch_hits, s.peak_resident / 1048576.0);
    }
    switchyard_moe_cache_free(cache->handle);
    delete cache;
}

bool llama_switchyard_moe_cache_active(const llama_model * model) {
    return model && model->switchyard_moe_cache;
}

// The elements of F32 tensor t, first dimension fastest, where the host can use them: t's own
// memory when it is contiguous in host memory (no copy), else a copy in `copy`.
static float * switchyard_moe_cache_floats(ggml_tensor * t, std::vector<float> & copy) {
    if (t->buffer && ggml_backend_buffer_is_host(t->buffer) && ggml_is_contiguous(t)) {
        return (float *) t->data;
    }
    copy = llama_switchyard_tensor_to_host<float>(t);
    return copy.data();
}

bool llama_switchyard_moe_cache_eval(ggml_tensor * t, bool ask, void * user_data) {
    auto * model = (const llama_model *) user_data;
    llama_switchyard_moe_cache * cache = model ? model->switchyard_moe_cache : nullptr;
    // build_moe_ffn computes, per MoE layer: the router's probabilities, the experts it picks
    // from them, then their gate weights (before it normalises them)
    const int32_t il_p = llama_switchyard_layer_of(t->name, "ffn_moe_probs-");
    const int32_t il_k = llama_switchyard_layer_of(t->name, "ffn_moe_topk-");
    const int32_t il_w = llama_switchyard_layer_of(t->name, "ffn_moe_weights-");
    if (ask) {
        return cache && (il_p >= 0 || il_k >= 0 || il_w >= 0);
    }
    if (!cache) {
        return false;
    }
    switchyard_result res = SWITCHYARD_RESULT_OK;
    int32_t il = -1;
    if (il_p >= 0 && t->type == GGML_TYPE_F32) {
        il = il_p;
        std::vector<float> probs_copy, x_copy;
        const float * probs = switchyard_moe_cache_floats(t, probs_copy);
        // the router's input, for the next layers' routers: probs = gating(logits = gate_inp x cur)
        ggml_tensor * logits = t->src[0];
        ggml_tensor * cur = logits && logits->op == GGML_OP_MUL_MAT ? logits->src[1] : nullptr;
        const bool has_x = cur && cur->type == GGML_TYPE_F32 && cur->ne[1] == t->ne[1] && ggml_is_contiguous(cur);
        const float * x = has_x ? switchyard_moe_cache_floats(cur, x_copy) : nullptr;
        res = switchyard_moe_cache_eval_probs(cache->handle, il, probs, ggml_nelements(t), x, has_x ? ggml_nelements(cur) : 0);
    } else if (il_k >= 0 && t->type == GGML_TYPE_I32) {
        il = il_k;
        // a strided view of the argsort: copied row by row
        const std::vector<int32_t> ids = llama_switchyard_tensor_to_host<int32_t>(t);
        res = switchyard_moe_cache_eval_topk(cache->handle, il, (uint32_t) t->ne[0], ids.data(), ids.size());
    } else if (il_w >= 0 && t->type == GGML_TYPE_F32 && ggml_is_contiguous(t)) {
        il = il_w;
        // the weights of skipped picks become zero, in place or in the copy written back
        std::vector<float> copy;
        float * w = switchyard_moe_cache_floats(t, copy);
        bool changed = false;
        res = switchyard_moe_cache_eval_weights(cache->handle, il, w, ggml_nelements(t), &changed);
        if (res == SWITCHYARD_RESULT_OK && changed && !copy.empty()) {
            ggml_backend_tensor_set(t, copy.data(), 0, copy.size() * sizeof(float));
        }
    }
    if (res != SWITCHYARD_RESULT_OK) {
        // the layer would run with experts missing, and a callback returning false only skips
        // the rest of the graph (llama_decode still succeeds): wrong tokens are worse than none
        GGML_ABORT("--moe-cache: layer %d: %s", il, llama_switchyard_error(res).c_str());
    }
    return true;
}
