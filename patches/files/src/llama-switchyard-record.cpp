// Recording what a model computes, for the switchyard command line: MoE routing traces
// (switchyard sim) and dense FFN inputs (switchyard moefy).
#include "llama-switchyard-impl.h"

#include "llama-impl.h"
#include "llama-model.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

struct llama_switchyard_trace {
    switchyard_trace * handle = nullptr;
    std::vector<int32_t> trace_layer;       // model layer -> trace layer; -1 for dense layers
    std::vector<std::vector<int32_t>> ids;  // per model layer: the batch's top-k until its weights arrive
    std::vector<std::vector<int32_t>> rows; // per model layer: which tokens of the batch, if not all
    std::vector<int32_t> out_ids;           // the batch's output rows, read when the graph used them
    bool failed = false;
};

llama_switchyard_trace * llama_switchyard_trace_open(const llama_model * model, const char * path) {
    if (!model || !path) {
        return nullptr;
    }
    if (const std::string mismatch = llama_switchyard_abi_mismatch(); !mismatch.empty()) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, mismatch.c_str());
        return nullptr;
    }
    const auto & hp = model->hparams;
    if (hp.n_expert == 0) {
        LLAMA_LOG_ERROR("%s: the model is not a mixture of experts: no routing to trace\n", __func__);
        return nullptr;
    }
    auto trace = std::make_unique<llama_switchyard_trace>();
    uint32_t n_moe = 0;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        trace->trace_layer.push_back(model->layers[il].ffn_gate_inp ? (int32_t) n_moe++ : -1);
    }
    trace->ids.resize(hp.n_layer());
    trace->rows.resize(hp.n_layer());
    const switchyard_result res = switchyard_trace_init(path, n_moe, hp.n_expert, &trace->handle);
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, llama_switchyard_error(res).c_str());
        return nullptr;
    }
    LLAMA_LOG_INFO("%s: recording the routing of %u MoE layers to %s\n", __func__, n_moe, path);
    return trace.release();
}

// Closes a recorder (a trace or a capture) and releases it. Finishing writes the file and says
// whether that worked; freeing without it, after a failure already logged, abandons the
// recording (a trace keeps the batches completed so far, a capture writes nothing).
template <typename Recorder, typename Handle>
static void llama_switchyard_recorder_close(Recorder * recorder, switchyard_result (*finish)(const Handle *),
                                            void (*release)(Handle *), const char * func) {
    if (!recorder) {
        return;
    }
    if (!recorder->failed) {
        const switchyard_result res = finish(recorder->handle);
        if (res != SWITCHYARD_RESULT_OK) {
            LLAMA_LOG_ERROR("%s: %s\n", func, llama_switchyard_error(res).c_str());
        }
    }
    release(recorder->handle);
    delete recorder;
}

void llama_switchyard_trace_close(llama_switchyard_trace * trace) {
    llama_switchyard_recorder_close(trace, switchyard_trace_finish, switchyard_trace_free, __func__);
}

// Whether `t` selects the batch's output rows: ggml_get_rows(cur, out_ids).
static bool switchyard_selects_out_ids(const ggml_tensor * t) {
    return t->op == GGML_OP_GET_ROWS && t->src[1] && t->src[1]->type == GGML_TYPE_I32 && strcmp(t->src[1]->name, "out_ids") == 0;
}

// Whether a layer's tensor covers only some rows of the batch (llama.cpp's last layer runs for
// output tokens only: ggml_get_rows(cur, out_ids) upstream of its FFN). Searches a few nodes
// upstream, which reach out_ids only in that layer. The rows themselves are read when the
// get_rows runs: by the time the FFN runs, the allocator may have reused out_ids' memory.
static bool switchyard_trace_selects_rows(const ggml_tensor * t) {
    std::vector<const ggml_tensor *> stack = {t};
    std::vector<const ggml_tensor *> seen;
    while (!stack.empty() && seen.size() < 64) {
        const ggml_tensor * n = stack.back();
        stack.pop_back();
        if (std::find(seen.begin(), seen.end(), n) != seen.end()) {
            continue;
        }
        seen.push_back(n);
        if (switchyard_selects_out_ids(n)) {
            return true;
        }
        for (const ggml_tensor * src : n->src) {
            if (src) {
                stack.push_back(src);
            }
        }
    }
    return false;
}

bool llama_switchyard_trace_eval(ggml_tensor * t, bool ask, void * user_data) {
    auto * trace = (llama_switchyard_trace *) user_data;
    // llama.cpp names them in build_moe_ffn: the experts picked, then their router probabilities
    const int32_t il_ids = llama_switchyard_layer_of(t->name, "ffn_moe_topk-");
    const int32_t il_w   = llama_switchyard_layer_of(t->name, "ffn_moe_weights-");
    if (ask) {
        return il_ids >= 0 || il_w >= 0 || switchyard_selects_out_ids(t);
    }
    if (switchyard_selects_out_ids(t)) {
        trace->out_ids = llama_switchyard_tensor_to_host<int32_t>(t->src[1]);
        return true;
    }
    const int32_t il = il_ids >= 0 ? il_ids : il_w;
    if (trace->failed || il < 0 || il >= (int32_t) trace->trace_layer.size() || trace->trace_layer[il] < 0) {
        return true;
    }
    if (il_ids >= 0) {
        if (t->type == GGML_TYPE_I32) {
            trace->ids[il]  = llama_switchyard_tensor_to_host<int32_t>(t);
            trace->rows[il] = switchyard_trace_selects_rows(t) ? trace->out_ids : std::vector<int32_t>();
        }
        return true;
    }
    if (t->type != GGML_TYPE_F32) {
        return true;
    }
    const std::vector<float> weights = llama_switchyard_tensor_to_host<float>(t);
    std::vector<int32_t> & ids  = trace->ids[il];
    std::vector<int32_t> & rows = trace->rows[il];
    const int64_t n_used = t->ne[1], n_tokens = t->ne[2];
    switchyard_result res = SWITCHYARD_RESULT_INVALID;
    if (ids.size() == weights.size() && (int64_t) weights.size() == n_used * n_tokens && (rows.empty() || (int64_t) rows.size() == n_tokens)) {
        res = switchyard_trace_layer(trace->handle, trace->trace_layer[il], n_used, n_tokens, ids.data(), weights.data(),
            rows.empty() ? nullptr : rows.data());
    }
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: layer %d: %s; tracing stops\n", __func__, il,
            res == SWITCHYARD_RESULT_INVALID && ids.size() != weights.size() ? "top-k and weights disagree" : llama_switchyard_error(res).c_str());
        trace->failed = true;
    }
    ids.clear();
    rows.clear();
    return true;
}

struct llama_switchyard_capture {
    switchyard_capture * handle = nullptr;
    uint32_t n_layer = 0;
    bool failed = false;
};

llama_switchyard_capture * llama_switchyard_capture_open(const llama_model * model, const char * path) {
    if (!model || !path) {
        return nullptr;
    }
    if (const std::string mismatch = llama_switchyard_abi_mismatch(); !mismatch.empty()) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, mismatch.c_str());
        return nullptr;
    }
    const auto & hp = model->hparams;
    auto capture = std::make_unique<llama_switchyard_capture>();
    capture->n_layer = hp.n_layer();
    const switchyard_result res = switchyard_capture_init(path, hp.n_layer(), hp.n_embd, &capture->handle);
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: %s\n", __func__, llama_switchyard_error(res).c_str());
        return nullptr;
    }
    LLAMA_LOG_INFO("%s: capturing the FFN inputs of %u layers to %s\n", __func__, hp.n_layer(), path);
    return capture.release();
}

void llama_switchyard_capture_close(llama_switchyard_capture * capture) {
    llama_switchyard_recorder_close(capture, switchyard_capture_finish, switchyard_capture_free, __func__);
}

bool llama_switchyard_capture_eval(ggml_tensor * t, bool ask, void * user_data) {
    auto * capture = (llama_switchyard_capture *) user_data;
    // llama.cpp's dense graphs name the FFN input ffn_norm-<il> (build_norm before build_ffn)
    const int32_t il = llama_switchyard_layer_of(t->name, "ffn_norm-");
    if (ask) {
        return il >= 0;
    }
    // the last layer of a batch asking for no outputs has no rows
    if (capture->failed || il < 0 || il >= (int32_t) capture->n_layer || t->type != GGML_TYPE_F32 || ggml_nelements(t) == 0) {
        return true;
    }
    const std::vector<float> rows = llama_switchyard_tensor_to_host<float>(t);
    const switchyard_result res = switchyard_capture_layer(capture->handle, il, (uint32_t) (rows.size() / t->ne[0]), (uint32_t) t->ne[0], rows.data());
    if (res != SWITCHYARD_RESULT_OK) {
        LLAMA_LOG_ERROR("%s: layer %d: %s; capturing stops\n", __func__, il, llama_switchyard_error(res).c_str());
        capture->failed = true;
    }
    return true;
}
