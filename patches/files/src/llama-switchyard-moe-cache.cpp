// The MoE cache (--moe-cache): a MoE model's experts read from its file on demand into a
// budgeted cache, before each layer runs.
#include "llama-switchyard-impl.h"

#include "llama-impl.h"
#include "llama-model-loader.h"
#include "llama-model.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

struct llama_switchyard_moe {
    switchyard_moe_cache * handle = nullptr;
    uint32_t n_expert = 0;
    uint32_t prefetch = 0; // layers to read ahead for (--moe-prefetch)
    std::vector<std::vector<float>> probs; // per layer: the batch's router probabilities until its picks arrive
    std::vector<std::vector<float>> gate_input; // per layer: the router's input, for prefetching
    std::vector<std::vector<uint8_t>> dropped; // per layer: the picks skipped, until their gate weights arrive
};

static std::string switchyard_override_str(const llama_model_loader & ml, const char * key, const char * fallback) {
    const auto it = ml.kv_overrides.find(key);
    if (it == ml.kv_overrides.end()) {
        return fallback;
    }
    if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_STR) {
        throw std::runtime_error(format("switchyard: override %s must be a string", key));
    }
    return it->second.val_str;
}

llama_switchyard_moe * llama_switchyard_moe_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits, bool is_bundle) {
    const std::string budget = switchyard_override_str(ml, "switchyard.moe_cache", "");
    if (budget.empty()) {
        return nullptr;
    }
    if (is_bundle || n_splits > 1) {
        throw std::runtime_error("--moe-cache: not for switchyard bundles or split models: " + fname);
    }
    const std::string policy = switchyard_override_str(ml, "switchyard.moe_policy", "lru");
    const auto threshold = [&ml](const char * key) {
        const auto it = ml.kv_overrides.find(key);
        if (it == ml.kv_overrides.end()) {
            return 1.0f;
        }
        return it->second.tag == LLAMA_KV_OVERRIDE_TYPE_FLOAT ? (float) it->second.val_f64 : -1.0f;
    };
    const float t1 = threshold("switchyard.moe_t1");
    const float t2 = threshold("switchyard.moe_t2");
    bool skip_beta = false;
    if (const auto it = ml.kv_overrides.find("switchyard.moe_skip_beta"); it != ml.kv_overrides.end()) {
        skip_beta = it->second.tag == LLAMA_KV_OVERRIDE_TYPE_BOOL && it->second.val_bool;
    }
    auto moe = std::make_unique<llama_switchyard_moe>();
    if (const auto it = ml.kv_overrides.find("switchyard.moe_prefetch"); it != ml.kv_overrides.end()) {
        if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_INT || it->second.val_i64 < 0) {
            throw std::runtime_error("--moe-prefetch: a number of layers (0 or more)");
        }
        moe->prefetch = (uint32_t) it->second.val_i64;
    }
    const switchyard_result res = switchyard_moe_cache_init(fname.c_str(), budget.c_str(), policy.c_str(), t1, t2, skip_beta, &moe->handle);
    if (res != SWITCHYARD_RESULT_OK) {
        throw std::runtime_error("--moe-cache: " + llama_switchyard_error(res));
    }
    switchyard_moe_cache * handle = moe->handle;
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
        __func__, stats.budget / 1048576.0, policy.c_str(), t1, t2, skip_beta ? "on" : "off", moe->prefetch);
    return moe.release();
}

void llama_switchyard_moe_bind(llama_switchyard_moe * moe, llama_model & model) {
    moe->n_expert = model.hparams.n_expert;
    moe->probs.resize(model.hparams.n_layer());
    moe->gate_input.resize(model.hparams.n_layer());
    moe->dropped.resize(model.hparams.n_layer());
    for (auto & [name, tensor] : model.tensors_by_name) {
        if (!switchyard_moe_cache_manages(moe->handle, name.c_str())) {
            continue;
        }
        // plain malloc'd memory: the cache returns evicted pages with madvise (pinned host
        // buffers of GPU builds would neither shrink nor be safe to rewrite under async copies)
        if (tensor->buffer == nullptr || ggml_backend_buffer_get_type(tensor->buffer) != ggml_backend_cpu_buffer_type()) {
            throw std::runtime_error("--moe-cache: expert tensor " + name + " is not in plain CPU memory (GPU builds are not supported yet)");
        }
        const switchyard_result res = switchyard_moe_cache_bind(moe->handle, name.c_str(), (uint8_t *) tensor->data, ggml_nbytes(tensor));
        if (res != SWITCHYARD_RESULT_OK) {
            throw std::runtime_error("--moe-cache: " + llama_switchyard_error(res));
        }
    }
}

void llama_switchyard_moe_free(llama_switchyard_moe * moe) {
    if (!moe) {
        return;
    }
    switchyard_moe_cache_stats s;
    if (switchyard_moe_cache_get_stats(moe->handle, &s) == SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_INFO("%s: moe cache: budget %.1f MiB, %llu hits, %llu loads (%llu low precision, %.1f MiB read), %llu skipped, "
            "%llu evictions, %llu prefetched (%llu used), peak %.1f MiB resident\n",
            __func__, s.budget / 1048576.0, (unsigned long long) s.hits, (unsigned long long) s.loads,
            (unsigned long long) s.loads_low, s.bytes_read / 1048576.0, (unsigned long long) s.skipped, (unsigned long long) s.evictions, (unsigned long long) s.prefetched,
            (unsigned long long) s.prefetch_hits, s.peak_resident / 1048576.0);
    }
    switchyard_moe_cache_free(moe->handle);
    delete moe;
}

bool llama_switchyard_moe_active(const llama_model * model) {
    return model && model->switchyard_moe;
}

bool llama_switchyard_moe_eval(ggml_tensor * t, bool ask, void * user_data) {
    auto * model = (const llama_model *) user_data;
    llama_switchyard_moe * moe = model ? model->switchyard_moe : nullptr;
    // build_moe_ffn names the router's probabilities, the experts it picks from them, then
    // their gate weights (before it normalises them)
    const int32_t il_p = llama_switchyard_layer_of(t->name, "ffn_moe_probs-");
    const int32_t il_k = llama_switchyard_layer_of(t->name, "ffn_moe_topk-");
    const int32_t il_w = llama_switchyard_layer_of(t->name, "ffn_moe_weights-");
    if (ask) {
        return moe && (il_p >= 0 || il_k >= 0 || il_w >= 0);
    }
    if (!moe) {
        return false;
    }
    if (il_w >= 0 && il_w < (int32_t) moe->dropped.size()) {
        // a skipped pick adds nothing: its weight goes to zero, and llama.cpp's normalisation
        // (where the model has one) shares its weight among the rest, as seed 001 does
        std::vector<uint8_t> & dropped = moe->dropped[il_w];
        if (!dropped.empty() && t->type == GGML_TYPE_F32 && ggml_nelements(t) == (int64_t) dropped.size() && ggml_is_contiguous(t)) {
            std::vector<float> w = llama_switchyard_tensor_to_host<float>(t);
            for (size_t i = 0; i < w.size(); i++) {
                w[i] = dropped[i] ? 0.0f : w[i];
            }
            ggml_backend_tensor_set(t, w.data(), 0, w.size() * sizeof(float));
        }
        dropped.clear();
        return true;
    }
    if (il_p >= 0 && il_p < (int32_t) moe->probs.size() && t->type == GGML_TYPE_F32) {
        moe->probs[il_p] = llama_switchyard_tensor_to_host<float>(t);
        // the router's input, for the next layers' routers: probs = gating(logits = gate_inp x cur)
        const ggml_tensor * logits = t->src[0];
        const ggml_tensor * cur = logits && logits->op == GGML_OP_MUL_MAT ? logits->src[1] : nullptr;
        if (moe->prefetch > 0 && cur && cur->type == GGML_TYPE_F32 && cur->ne[1] == t->ne[1] && ggml_is_contiguous(cur)) {
            moe->gate_input[il_p] = llama_switchyard_tensor_to_host<float>(cur);
        }
        return true;
    }
    if (il_k < 0 || il_k >= (int32_t) moe->probs.size() || t->type != GGML_TYPE_I32) {
        return true;
    }
    const std::vector<int32_t> ids = llama_switchyard_tensor_to_host<int32_t>(t);
    const int64_t n_used = t->ne[0], n_tokens = t->ne[1];
    std::vector<float> & probs = moe->probs[il_k];
    const bool have_probs = (int64_t) probs.size() == n_tokens * (int64_t) moe->n_expert;
    std::vector<uint8_t> & dropped = moe->dropped[il_k];
    dropped.assign(ids.size(), 0);
    const switchyard_result res = switchyard_moe_cache_prepare(moe->handle, il_k, (uint32_t) n_used, (uint32_t) n_tokens,
        ids.data(), have_probs ? probs.data() : nullptr, moe->n_expert, dropped.data());
    probs.clear();
    if (std::find(dropped.begin(), dropped.end(), 1) == dropped.end()) {
        dropped.clear();
    }
    if (res != SWITCHYARD_RESULT_OK) {
        // the layer would run with experts missing, and a callback returning false only skips
        // the rest of the graph (llama_decode still succeeds): wrong tokens are worse than none
        GGML_ABORT("--moe-cache: layer %d: %s", il_k, llama_switchyard_error(res).c_str());
    }
    std::vector<float> & x = moe->gate_input[il_k];
    if (moe->prefetch > 0 && !x.empty() && n_tokens > 0) {
        const uint32_t n_embd = (uint32_t) (x.size() / n_tokens);
        const switchyard_result pres = switchyard_moe_cache_prefetch(moe->handle, il_k, moe->prefetch, (uint32_t) n_used,
            (uint32_t) n_tokens, x.data(), n_embd);
        if (pres != SWITCHYARD_RESULT_OK) {
            // a guess is only a guess: the layers still read what they pick
            LLAMA_LOG_WARN("%s: layer %d: %s; prefetching stops\n", __func__, il_k, llama_switchyard_error(pres).c_str());
            moe->prefetch = 0;
        }
    }
    x.clear();
    return true;
}
