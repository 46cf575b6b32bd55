#pragma once

// Internal glue between llama.cpp and the switchyard library (ffi/include/switchyard.h): the
// loader's hooks, and the helpers the bundle, recording and MoE-cache files share.
//
//   llama-switchyard-bundle.cpp     bundles: attach at load, bind the weights, switch, route
//   llama-switchyard-record.cpp     routing traces and FFN-input captures (graph callbacks)
//   llama-switchyard-moe-cache.cpp  --moe-cache: experts read on demand (graph callback)

#include "llama-switchyard.h" // the public API (include/)

#include "ggml-backend.h"
#include "ggml.h"
#include "switchyard.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct llama_model;
struct llama_model_loader;
struct llama_switchyard;

// If the file being loaded is a switchyard bundle, open it and install the loader hook that
// creates the weights it manages in the plugin's type; nullptr for any other model. Throws on
// a bundle that cannot be used (the message names the file, tensor or key).
llama_switchyard * llama_switchyard_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits);

// After the weights are created: hand them to the library and fill them with the base model.
void llama_switchyard_bind(llama_switchyard * sy, llama_model & model);

void llama_switchyard_free(llama_switchyard * sy);

struct llama_switchyard_moe_cache;

// When the loader's overrides ask for it (switchyard.moe_cache, set by --moe-cache): open the
// MoE file as a MoE cache and install the loader hook that allocates the expert tensors unread;
// nullptr otherwise. Throws on a model or setting that cannot be used.
llama_switchyard_moe_cache * llama_switchyard_moe_cache_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits, bool is_bundle);

// After the weights are created: hand the expert tensors' memory to the cache.
void llama_switchyard_moe_cache_bind(llama_switchyard_moe_cache * cache, llama_model & model);

// Logs what the cache did and releases it.
void llama_switchyard_moe_cache_free(llama_switchyard_moe_cache * cache);

// Empty when the library linked in implements the ABI of the header this was compiled with,
// else what is wrong. Checked before the first call that opens a library object (a bundle, a
// MoE cache, a trace or a capture): a mismatch is undefined behaviour, not an error code.
inline std::string llama_switchyard_abi_mismatch() {
    if (switchyard_abi_version() == SWITCHYARD_ABI_VERSION) {
        return "";
    }
    return "switchyard: library ABI " + std::to_string(switchyard_abi_version()) + ", header ABI " +
        std::to_string(SWITCHYARD_ABI_VERSION) + ": rebuild llama.cpp";
}

// "<what the code means>: <which file, tensor or key>", for a failed library call.
inline std::string llama_switchyard_error(switchyard_result res) {
    char detail[2048];
    switchyard_last_error(detail, sizeof(detail));
    return std::string(switchyard_result_str(res)) + ": " + detail;
}

// The layer number of a graph tensor named PREFIX-<il> (llama.cpp's cb(cur, name, il)), or -1.
inline int32_t llama_switchyard_layer_of(const char * name, const char * prefix) {
    const size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] == '\0') {
        return -1;
    }
    char * end = nullptr;
    const long il = strtol(name + n, &end, 10);
    return *end == '\0' && il >= 0 && il < INT32_MAX ? (int32_t) il : -1;
}

// A tensor's elements copied to the host, first dimension fastest: the top-k is a strided view
// of the argsort, and the tensor may live on a device.
template <typename T>
std::vector<T> llama_switchyard_tensor_to_host(const ggml_tensor * t) {
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    std::vector<T> out;
    out.reserve(ggml_nelements(t));
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2) {
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) {
                    T v;
                    memcpy(&v, raw.data() + i0*t->nb[0] + i1*t->nb[1] + i2*t->nb[2] + i3*t->nb[3], sizeof(T));
                    out.push_back(v);
                }
            }
        }
    }
    return out;
}
