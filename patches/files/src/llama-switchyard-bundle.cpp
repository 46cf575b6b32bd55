// Bundles: a base model plus compressed fine-tuned experts, switched in place (llama-switchyard.h).
#include "llama-switchyard-impl.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-model-loader.h"
#include "llama-model.h"

#include "gguf.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

std::string llama_switchyard_override_str(const llama_model_loader & ml, const char * key, const char * fallback) {
    const auto it = ml.kv_overrides.find(key);
    if (it == ml.kv_overrides.end()) {
        return fallback;
    }
    if (it->second.tag != LLAMA_KV_OVERRIDE_TYPE_STR) {
        throw std::runtime_error(format("switchyard: override %s must be a string", key));
    }
    return it->second.val_str;
}

// The ggml type named `name` (as ggml_type_name spells it, any case), or -1 for "".
static int32_t llama_switchyard_type_by_name(const std::string & name) {
    if (name.empty()) {
        return -1;
    }
    std::string known;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * tn = ggml_type_name((ggml_type) t);
        if (tn == nullptr || ggml_type_size((ggml_type) t) == 0) {
            continue; // removed types
        }
        const bool same = strlen(tn) == name.size() && std::equal(name.begin(), name.end(), tn,
            [](char a, char b) { return tolower((unsigned char) a) == tolower((unsigned char) b); });
        if (same) {
            return t;
        }
        known += std::string(known.empty() ? "" : ", ") + tn;
    }
    throw std::runtime_error("switchyard: switchyard.delta_type: unknown ggml type '" + name + "' (types: " + known + ")");
}

llama_switchyard * llama_switchyard_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits) {
    if (gguf_find_key(ml.metadata, "switchyard.format_version") < 0) {
        return nullptr;
    }
    if (const std::string mismatch = llama_switchyard_abi_mismatch(); !mismatch.empty()) {
        throw std::runtime_error(mismatch);
    }
    if (n_splits > 1) {
        throw std::runtime_error("switchyard: split bundles are not supported: " + fname);
    }
    // The deltas are applied where llama.cpp multiplies by a weight through build_lora_mm and
    // friends; these architectures do so for every weight a bundle changes (others multiply by
    // some, e.g. the output, directly, and would silently run without that delta), each weight
    // once per graph (llama_switchyard_graph_nodes counts on that).
    static const char * const in_graph_archs[] = { "llama", "qwen2" };
    const std::string arch = ml.get_arch_name();
    if (std::find(std::begin(in_graph_archs), std::end(in_graph_archs), arch) == std::end(in_graph_archs)) {
        throw std::runtime_error("switchyard: " + fname + ": bundles of architecture '" + arch + "' are not supported (supported: llama, qwen2)");
    }
    auto sy = std::make_unique<llama_switchyard>();
    const switchyard_result res = switchyard_model_init(fname.c_str(), &sy->handle);
    if (res != SWITCHYARD_RESULT_OK) {
        throw std::runtime_error("switchyard: " + llama_switchyard_error(res));
    }
    sy->delta_type = llama_switchyard_type_by_name(llama_switchyard_override_str(ml, "switchyard.delta_type", ""));
    switchyard_model * handle = sy->handle;
    ml.type_override = [handle](const std::string & name, ggml_type & type) {
        const int32_t t = switchyard_model_tensor_type(handle, name.c_str());
        if (t < 0) {
            return false;
        }
        type = (ggml_type) t;
        return true;
    };
    const int32_t n_experts = (int32_t) switchyard_model_n_experts(handle);
    std::string names;
    for (int32_t i = 0; i < n_experts; i++) {
        names += std::string(names.empty() ? "" : ", ") + switchyard_model_expert_name(handle, i);
    }
    LLAMA_LOG_INFO("%s: switchyard bundle, %d experts (%s), %u weights switched in place, the rest applied in the graph\n", __func__,
        n_experts, names.c_str(), switchyard_model_n_managed(handle));
    return sy.release();
}

// Weights in host memory are decoded in place; others (GPU) are written with tensor_set.
static void * switchyard_tensor_memory(void * /*user*/, void * tensor, size_t size) {
    ggml_tensor * t = (ggml_tensor *) tensor;
    if (t->buffer == nullptr || !ggml_backend_buffer_is_host(t->buffer) || size != ggml_nbytes(t)) {
        return nullptr;
    }
    return t->data;
}

static int32_t switchyard_write_tensor(void * /*user*/, void * tensor, const void * data, size_t size) {
    ggml_tensor * t = (ggml_tensor *) tensor;
    if (size != ggml_nbytes(t)) {
        LLAMA_LOG_ERROR("%s: %s: %zu bytes for a tensor of %zu\n", __func__, ggml_get_name(t), size, ggml_nbytes(t));
        return 1;
    }
    ggml_backend_tensor_set(t, data, 0, size);
    return 0;
}

// Weights in CUDA memory: their device pointer and device, so that a library built with the
// cuda feature (GGML_CUDA builds) decodes them there with its own kernels and stream; ggml-cuda
// names its device buffers "CUDA<n>" (split and host buffers do not match).
static int32_t switchyard_tensor_device(void * /*user*/, void * tensor, uint64_t * ptr, int32_t * device) {
    ggml_tensor * t = (ggml_tensor *) tensor;
    if (t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer) || !ggml_is_contiguous(t)) {
        return 1;
    }
    const char * name = ggml_backend_buffer_name(t->buffer);
    if (strncmp(name, "CUDA", 4) != 0 || name[4] < '0' || name[4] > '9') {
        return 1;
    }
    *device = atoi(name + 4);
    *ptr = (uint64_t) (uintptr_t) t->data;
    return 0;
}

static const switchyard_host switchyard_llama_host = {
    switchyard_tensor_memory, switchyard_write_tensor, nullptr, switchyard_tensor_device,
};

void llama_switchyard_bind(llama_switchyard * sy, llama_model & model) {
    for (auto & [name, tensor] : model.tensors_by_name) {
        if (switchyard_model_tensor_type(sy->handle, name.c_str()) < 0) {
            continue;
        }
        const switchyard_result res = switchyard_model_bind(sy->handle, name.c_str(), tensor);
        if (res != SWITCHYARD_RESULT_OK) {
            throw std::runtime_error("switchyard: " + llama_switchyard_error(res));
        }
    }
    const switchyard_result res = switchyard_model_set_expert(sy->handle, "base", &switchyard_llama_host);
    if (res != SWITCHYARD_RESULT_OK) {
        throw std::runtime_error("switchyard: " + llama_switchyard_error(res));
    }
    llama_switchyard_load_deltas(sy, model);
}

void llama_switchyard_free(llama_switchyard * sy) {
    delete sy;
}

int32_t llama_switchyard_n_experts(const llama_model * model) {
    return model && model->switchyard ? (int32_t) switchyard_model_n_experts(model->switchyard->handle) : 0;
}

int32_t llama_switchyard_expert_name(const llama_model * model, int32_t i, char * buf, size_t buf_size) {
    const char * name = model && model->switchyard && i >= 0 ? switchyard_model_expert_name(model->switchyard->handle, i) : nullptr;
    if (!name) {
        return -1;
    }
    if (buf && buf_size > 0) {
        snprintf(buf, buf_size, "%s", name);
    }
    return (int32_t) strlen(name);
}

// The name of the expert the weights hold (lent by the library; "base" is index -1).
static const char * llama_switchyard_current_name(const llama_switchyard * sy) {
    int32_t current = -1;
    return switchyard_model_current_expert(sy->handle, &current) == SWITCHYARD_RESULT_OK
        ? switchyard_model_expert_name(sy->handle, current) : nullptr;
}

const char * llama_switchyard_current_expert(const llama_model * model) {
    return model && model->switchyard ? llama_switchyard_current_name(model->switchyard) : nullptr;
}

static int32_t llama_switchyard_switch(llama_context * ctx, const char * name, bool clear_memory) {
    const llama_model * model = ctx ? llama_get_model(ctx) : nullptr;
    if (!model || !model->switchyard) {
        LLAMA_LOG_ERROR("%s: the model was not loaded from a switchyard bundle\n", __func__);
        return -2;
    }
    if (!name) {
        return -1;
    }
    llama_switchyard * sy = model->switchyard;
    llama_synchronize(ctx);
    const char * current = llama_switchyard_current_name(sy);
    const std::string before = current ? current : "";
    const int64_t t_start = ggml_time_us();
    const switchyard_result res = switchyard_model_set_expert(sy->handle, name, &switchyard_llama_host);
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, llama_switchyard_error(res).c_str());
        return res == SWITCHYARD_RESULT_NOT_FOUND ? -1 : -3;
    }
    if (clear_memory) {
        // every sequence starts over with the model's expert
        llama_switchyard_forget_context(*model, ctx);
        llama_memory_clear(llama_get_memory(ctx), true);
    }
    if (before != name) {
        LLAMA_LOG_INFO("%s: switched from '%s' to '%s' in %.2f ms\n", __func__, before.c_str(), name,
            (ggml_time_us() - t_start) / 1000.0);
    }
    return 0;
}

int32_t llama_switchyard_set_expert(llama_context * ctx, const char * name) {
    return llama_switchyard_switch(ctx, name, true);
}

int32_t llama_switchyard_set_expert_keep_memory(llama_context * ctx, const char * name) {
    return llama_switchyard_switch(ctx, name, false);
}

int32_t llama_switchyard_set_seq_expert(llama_context * ctx, llama_seq_id seq_id, const char * name) {
    const llama_model * model = ctx ? llama_get_model(ctx) : nullptr;
    if (!model || !model->switchyard) {
        LLAMA_LOG_ERROR("%s: the model was not loaded from a switchyard bundle\n", __func__);
        return -2;
    }
    llama_switchyard * sy = model->switchyard;
    if (!llama_switchyard_seq_experts_ok(model)) {
        LLAMA_LOG_ERROR("%s: this bundle's experts replace tensors switched for the whole model: one expert per batch\n", __func__);
        return -3;
    }
    std::lock_guard<std::mutex> lock(sy->seq_experts_mutex);
    if (name == nullptr) {
        sy->seq_experts[ctx].erase(seq_id);
        return 0;
    }
    int32_t index = -1;
    if (strcmp(name, "base") != 0) {
        const uint32_t n = switchyard_model_n_experts(sy->handle);
        for (index = 0; index < (int32_t) n && strcmp(switchyard_model_expert_name(sy->handle, index), name) != 0; index++) {
        }
        if (index == (int32_t) n) {
            LLAMA_LOG_ERROR("%s: no expert '%s'\n", __func__, name);
            return -1;
        }
    }
    sy->seq_experts[ctx][seq_id] = index;
    return 0;
}

bool llama_switchyard_seq_experts_ok(const llama_model * model) {
    return model && model->switchyard && switchyard_model_n_managed(model->switchyard->handle) == 0;
}

bool llama_switchyard_has_router(const llama_model * model) {
    return model && model->switchyard && switchyard_model_has_router(model->switchyard->handle) != 0;
}

int32_t llama_switchyard_route(const llama_model * model, const llama_token * tokens, int32_t n_tokens, float threshold, float * confidence) {
    if (!llama_switchyard_has_router(model)) {
        return -2;
    }
    static_assert(sizeof(llama_token) == sizeof(int32_t), "tokens are passed as int32_t");
    int32_t expert = -1;
    const switchyard_result res = switchyard_model_route(model->switchyard->handle, tokens, n_tokens < 0 ? 0 : (size_t) n_tokens,
        threshold, &expert, confidence);
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, llama_switchyard_error(res).c_str());
        return -3;
    }
    return expert;
}

const char * llama_switchyard_route_text(const llama_model * model, const char * text, float threshold, float * confidence) {
    if (!llama_switchyard_has_router(model) || !text) {
        return nullptr;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t len = (int32_t) strlen(text);
    std::vector<llama_token> tokens(len + 1);
    int32_t n = llama_tokenize(vocab, text, len, tokens.data(), (int32_t) tokens.size(), false, false);
    if (n < 0) { // -n is the number of tokens needed
        tokens.resize(-n);
        n = llama_tokenize(vocab, text, len, tokens.data(), (int32_t) tokens.size(), false, false);
    }
    if (n < 0) {
        LLAMA_LOG_ERROR("%s: cannot tokenize the prompt\n", __func__);
        return nullptr;
    }
    const int32_t expert = llama_switchyard_route(model, tokens.data(), n, threshold, confidence);
    if (expert < -1) {
        return nullptr;
    }
    return switchyard_model_expert_name(model->switchyard->handle, expert);
}
