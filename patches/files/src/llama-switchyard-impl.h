#pragma once

// Internal glue between llama.cpp and the switchyard library (ffi/include/switchyard.h): the
// loader's hooks, and the helpers the bundle, recording and MoE-cache files share.
//
//   llama-switchyard-bundle.cpp     bundles: attach at load, bind the weights, switch, route
//   llama-switchyard-deltas.cpp     bundles: the experts' deltas, loaded next to their weights
//   llama-switchyard-graph.cpp      bundles: the deltas applied in the graph, per token
//   llama-switchyard-record.cpp     routing traces and FFN-input captures (graph callbacks)
//   llama-switchyard-moe-cache.cpp  --moe-cache: experts read on demand (graph callback)

#include "llama-switchyard.h" // the public API (include/)

#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "ggml.h"
#include "switchyard.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

struct llama_context;
struct llama_model;
struct llama_model_loader;
struct llm_graph_context;
struct llm_graph_params;
struct llama_switchyard_graph_input;

// One expert's delta of one weight, as the graph applies it: y = W x + a x + salient x[salient_idx],
// or y = W x + b (a x) for a low-rank delta (switchyard_graph_delta_parts in switchyard.h).
struct llama_switchyard_delta {
    ggml_tensor * a           = nullptr; // the weight's shape, in a ggml type, or factor A [ne0, rank] (a view of `stack` when there is one)
    ggml_tensor * b           = nullptr; // factor B [rank, ne1] of a low-rank delta (a view of `stack_b`), or nullptr
    ggml_tensor * salient_idx = nullptr; // I32 [n_salient], or nullptr
    ggml_tensor * salient     = nullptr; // F16 [n_salient, the weight's rows...]
};

// Every expert's deltas of one weight.
struct llama_switchyard_weight {
    std::vector<llama_switchyard_delta> experts; // one per expert (a == nullptr: unchanged)
    // a 2-D weight whose experts' deltas share one type and rank: all of them stacked,
    // [ne0, ne1, n_experts], or factor A's [ne0, rank, n_experts] (zeros for an expert that
    // leaves it unchanged), so that one ggml_mul_mat_id applies each token's own expert in a
    // batch of mixed experts
    ggml_tensor * stack = nullptr;
    // low-rank deltas of one rank: `stack` holds the A factors, [ne0, rank, n_experts], and this the
    // B factors, [rank, ne1, n_experts]
    ggml_tensor * stack_b = nullptr;
    // a norm's weight: F32 [ne0, 1 + n_experts], the base's row then each expert's
    ggml_tensor * rows = nullptr;
};

// Which expert serves each sequence of a context (llama_switchyard_set_seq_expert).
using llama_switchyard_seq_experts = std::unordered_map<int32_t, int32_t>;

// A bundle loaded into a model. Its state (names, the expert in place, the router) lives in
// the library; the deltas the graph applies live in ggml buffers here.
struct llama_switchyard {
    switchyard_model * handle = nullptr;

    std::unordered_map<std::string, llama_switchyard_weight> weights; // by weight name
    std::vector<ggml_context_ptr>        delta_ctxs;
    std::vector<ggml_backend_buffer_ptr> delta_bufs;

    // the codec deltas' ggml type (--override-kv switchyard.delta_type=str:TYPE), -1: the library's choice
    int32_t delta_type = -1;

    // per context: the sequences given an expert of their own. Written by
    // llama_switchyard_set_seq_expert and read when a graph is built, both from the thread
    // that drives that context; the lock is for contexts of one model on different threads.
    std::unordered_map<const llama_context *, llama_switchyard_seq_experts> seq_experts;
    std::mutex seq_experts_mutex;

    ~llama_switchyard() { switchyard_model_free(handle); }
};

// If the file being loaded is a switchyard bundle, open it and install the loader hook that
// creates the weights it manages in the plugin's type; nullptr for any other model. Throws on
// a bundle that cannot be used (the message names the file, tensor or key).
llama_switchyard * llama_switchyard_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits);

// After the weights are created: hand them to the library and fill them with the base model.
void llama_switchyard_bind(llama_switchyard * sy, llama_model & model);

void llama_switchyard_free(llama_switchyard * sy);

// Convert every expert's deltas of the weights applied in the graph and load them next to
// their weights (on the weight's device). Throws naming the tensor on failure.
void llama_switchyard_load_deltas(llama_switchyard * sy, llama_model & model);

// The bundle, the context's per-sequence experts and the expert in place, into a graph's
// parameters (llama_context::graph_params). Which experts a batch's tokens use is the graph's
// structure: a graph is reused only for a batch with the same experts.
void llama_switchyard_graph_params(const llama_context & lctx, const llama_model & model, llm_graph_params & params);

// Drops a context's per-sequence experts (~llama_context).
void llama_switchyard_forget_context(const llama_model & model, const llama_context * lctx);

// Graph nodes the deltas add at most (llama_context::graph_max_nodes).
uint32_t llama_switchyard_graph_nodes(const llama_model & model);

// res = W cur (ids: W is a MoE weight and res = mul_mat_id(W, cur, ids)) plus, for each token,
// the delta of W of the token's expert times cur; res unchanged where no token has an expert
// that changes W.
ggml_tensor * llama_switchyard_build_mm(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * cur,
        ggml_tensor * ids, ggml_tensor * res);

// cur times the norm weight W, each token's expert's where the bundle's experts replace W.
ggml_tensor * llama_switchyard_build_norm(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * cur);

// embd = rows `tokens` of W plus the same rows of each token's expert's delta of W (the token
// embeddings).
ggml_tensor * llama_switchyard_build_rows(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * tokens,
        ggml_tensor * embd);

struct llama_switchyard_moe_cache;

// When the loader's overrides ask for it (switchyard.moe_cache, set by --moe-cache): open the
// MoE file as a MoE cache and install the loader hook that allocates the expert tensors unread;
// nullptr otherwise. Throws on a model or setting that cannot be used.
llama_switchyard_moe_cache * llama_switchyard_moe_cache_attach(llama_model_loader & ml, const std::string & fname, size_t n_splits, bool is_bundle);

// After the weights are created: hand the expert tensors' memory to the cache.
void llama_switchyard_moe_cache_bind(llama_switchyard_moe_cache * cache, llama_model & model);

// Logs what the cache did and releases it.
void llama_switchyard_moe_cache_free(llama_switchyard_moe_cache * cache);

// The string the command line's --override-kv gives `key` (the --moe-* options and
// switchyard.delta_type are such overrides), else `fallback`. Throws when it is not a string.
std::string llama_switchyard_override_str(const llama_model_loader & ml, const char * key, const char * fallback);

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
