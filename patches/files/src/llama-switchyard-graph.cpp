// A bundle's experts in the graph: every changed weight stays as the file holds it (mapped,
// in its own type) and each expert's delta is a second, compressed matrix next to it; the
// graph adds the delta's product where llama.cpp multiplies by the weight (build_lora_mm,
// build_lora_mm_id) and looks up token embeddings. Each token gets the delta of its own
// sequence's expert, so one batch can mix experts. What a delta holds and in which type is
// decided by the library (switchyard_model_graph_delta, plugin/src/bundle/in_graph.rs).
#include "llama-switchyard-impl.h"

#include "llama-batch.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-model.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

// Deltas go to the default buffer type of the device their weight lives on: never to a CPU
// "extra" type (repacked layouts), which only takes the types it repacks.
static ggml_backend_buffer_type_t llama_switchyard_delta_buft(const ggml_tensor * w) {
    ggml_backend_dev_t dev = w->buffer ? ggml_backend_buft_get_device(ggml_backend_buffer_get_type(w->buffer)) : nullptr;
    if (dev == nullptr) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    return ggml_backend_dev_buffer_type(dev);
}

static std::runtime_error llama_switchyard_failure(switchyard_result res) {
    return std::runtime_error("switchyard: " + llama_switchyard_error(res));
}

void llama_switchyard_load_deltas(llama_switchyard * sy, llama_model & model) {
    const uint32_t n_experts = switchyard_model_n_experts(sy->handle);
    std::map<ggml_backend_buffer_type_t, ggml_context *> ctx_of;
    struct pending { std::string name; uint32_t expert; int32_t type; llama_switchyard_delta * d; };
    std::vector<pending> todo;
    struct pending_norm { std::string name; const ggml_tensor * w; ggml_tensor * rows; };
    std::vector<pending_norm> norms;

    // First the tensors' shapes, so that every buffer is allocated once.
    for (auto & [name, w] : model.tensors_by_name) {
        if (!switchyard_model_in_graph(sy->handle, name.c_str()) || sy->weights.count(name)) {
            continue;
        }
        llama_switchyard_weight & weight = sy->weights[name];
        weight.experts.resize(n_experts);
        ggml_backend_buffer_type_t buft = llama_switchyard_delta_buft(w);
        ggml_context *& ctx = ctx_of[buft];
        if (ctx == nullptr) {
            // per weight, a stack and three tensors per expert at most
            ggml_init_params params = { (1 + 3 * n_experts) * model.tensors_by_name.size() * ggml_tensor_overhead(), nullptr, true };
            sy->delta_ctxs.emplace_back(ggml_init(params));
            ctx = sy->delta_ctxs.back().get();
        }
        if (ggml_n_dims(w) == 1) {
            // a norm's weight: the experts replace it whole
            if (w->type != GGML_TYPE_F32) {
                throw std::runtime_error("switchyard: norm weight " + name + " is " + ggml_type_name(w->type) + ", not f32");
            }
            weight.rows = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], 1 + n_experts);
            ggml_format_name(weight.rows, "switchyard.%s", name.c_str());
            norms.push_back({ name, w, weight.rows });
            continue;
        }
        std::vector<int32_t> types(n_experts, -1);
        std::vector<uint32_t> n_salient(n_experts, 0);
        for (uint32_t e = 0; e < n_experts; e++) {
            // every expert in the first one's type where the library can, so that they stack
            const int32_t want = e > 0 && types[0] >= 0 && sy->delta_type < 0 ? types[0] : sy->delta_type;
            switchyard_result res = switchyard_model_graph_delta_shape(sy->handle, e, name.c_str(), want, &types[e], &n_salient[e]);
            if (res == SWITCHYARD_RESULT_UNSUPPORTED && want != sy->delta_type) {
                res = switchyard_model_graph_delta_shape(sy->handle, e, name.c_str(), sy->delta_type, &types[e], &n_salient[e]);
            }
            if (res != SWITCHYARD_RESULT_OK) {
                throw llama_switchyard_failure(res);
            }
        }
        int32_t stack_type = -1;
        for (int32_t t : types) {
            stack_type = t < 0 ? stack_type : stack_type < 0 || stack_type == t ? t : -2;
        }
        if (stack_type >= 0 && ggml_n_dims(w) <= 2) {
            weight.stack = ggml_new_tensor_3d(ctx, (ggml_type) stack_type, w->ne[0], w->ne[1], n_experts);
            ggml_format_name(weight.stack, "switchyard.%s", name.c_str());
        }
        for (uint32_t e = 0; e < n_experts; e++) {
            if (types[e] < 0) {
                continue;
            }
            llama_switchyard_delta & d = weight.experts[e];
            if (weight.stack) {
                d.a = ggml_view_2d(ctx, weight.stack, w->ne[0], w->ne[1], weight.stack->nb[1], e * weight.stack->nb[2]);
            } else {
                d.a = ggml_new_tensor(ctx, (ggml_type) types[e], GGML_MAX_DIMS, w->ne);
            }
            ggml_format_name(d.a, "switchyard.%u.%s", e, name.c_str());
            if (n_salient[e] > 0) {
                d.salient_idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_salient[e]);
                d.salient = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_salient[e], w->ne[1], w->ne[2], w->ne[3]);
            }
            todo.push_back({ name, e, types[e], &d });
        }
    }
    for (auto & [buft, ctx] : ctx_of) {
        if (ggml_get_first_tensor(ctx) == nullptr) {
            continue;
        }
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);
        if (buf == nullptr) {
            throw std::runtime_error(format("switchyard: cannot allocate the experts' deltas in %s", ggml_backend_buft_name(buft)));
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        ggml_backend_buffer_clear(buf, 0); // a stack's slice of an expert that leaves its weight unchanged
        sy->delta_bufs.emplace_back(buf);
    }

    // Then each delta converted by the library and copied in, one at a time.
    size_t n_bytes = 0;
    const int64_t t_start = ggml_time_us();
    for (const pending & p : todo) {
        switchyard_graph_delta * delta = nullptr;
        switchyard_result res = switchyard_model_graph_delta(sy->handle, p.expert, p.name.c_str(), p.type, &delta);
        if (res != SWITCHYARD_RESULT_OK) {
            throw llama_switchyard_failure(res);
        }
        switchyard_graph_delta_parts parts;
        res = switchyard_graph_delta_get_parts(delta, &parts);
        if (res != SWITCHYARD_RESULT_OK) {
            switchyard_graph_delta_free(delta);
            throw llama_switchyard_failure(res);
        }
        if (parts.ggml_type != p.d->a->type || parts.data_size != ggml_nbytes(p.d->a) ||
                (p.d->salient_idx ? ggml_nelements(p.d->salient_idx) : 0) != parts.n_salient) {
            switchyard_graph_delta_free(delta);
            throw std::runtime_error("switchyard: the delta of " + p.name + " does not have the shape announced for it");
        }
        ggml_backend_tensor_set(p.d->a, parts.data, 0, parts.data_size);
        n_bytes += parts.data_size;
        if (p.d->salient_idx) {
            ggml_backend_tensor_set(p.d->salient_idx, parts.salient_idx, 0, ggml_nbytes(p.d->salient_idx));
            ggml_backend_tensor_set(p.d->salient, parts.salient, 0, ggml_nbytes(p.d->salient));
            n_bytes += ggml_nbytes(p.d->salient_idx) + ggml_nbytes(p.d->salient);
        }
        switchyard_graph_delta_free(delta);
    }
    for (const pending_norm & p : norms) {
        std::vector<float> base(p.w->ne[0]);
        ggml_backend_tensor_get(p.w, base.data(), 0, ggml_nbytes(p.w));
        ggml_backend_tensor_set(p.rows, base.data(), 0, ggml_nbytes(p.w));
        for (uint32_t e = 0; e < n_experts; e++) {
            switchyard_graph_delta * delta = nullptr;
            switchyard_result res = switchyard_model_graph_delta(sy->handle, e, p.name.c_str(), -1, &delta);
            switchyard_graph_delta_parts parts = {};
            if (res == SWITCHYARD_RESULT_OK && delta) {
                res = switchyard_graph_delta_get_parts(delta, &parts);
            }
            if (res != SWITCHYARD_RESULT_OK) {
                switchyard_graph_delta_free(delta);
                throw llama_switchyard_failure(res);
            }
            if (delta && (parts.ggml_type != GGML_TYPE_F32 || parts.data_size != ggml_nbytes(p.w))) {
                switchyard_graph_delta_free(delta);
                throw std::runtime_error("switchyard: expert " + std::to_string(e) + "'s " + p.name + " is not an f32 vector of its size");
            }
            ggml_backend_tensor_set(p.rows, delta ? parts.data : base.data(), (1 + e) * ggml_nbytes(p.w), ggml_nbytes(p.w));
            switchyard_graph_delta_free(delta);
        }
    }
    switchyard_model_release_resident(sy->handle);
    LLAMA_LOG_INFO("%s: %zu expert deltas of %zu weights applied in the graph, %.1f MiB, converted in %.2f s\n", __func__,
        todo.size(), sy->weights.size(), n_bytes / 1048576.0, (ggml_time_us() - t_start) / 1e6);
}

// The expert of each token of a batch: its (first) sequence's, else the model's.
static std::vector<int32_t> llama_switchyard_token_experts(const llama_ubatch & ub, const llama_switchyard_seq_experts * seq, int32_t dflt) {
    std::vector<int32_t> out(ub.n_tokens, dflt);
    for (uint32_t i = 0; seq && ub.seq_id && i < ub.n_tokens; i++) {
        if (ub.n_seq_id[i] > 0) {
            const auto it = seq->find(ub.seq_id[i][0]);
            out[i] = it == seq->end() ? dflt : it->second;
        }
    }
    return out;
}

// The experts a batch uses (sorted, base excluded) and whether some token runs the base: the
// graph's structure, which a reused graph must share.
struct llama_switchyard_signature {
    std::vector<int32_t> experts;
    bool has_base = false;

    explicit llama_switchyard_signature(const std::vector<int32_t> & tokens) {
        for (int32_t e : tokens) {
            if (e < 0) {
                has_base = true;
            } else if (std::find(experts.begin(), experts.end(), e) == experts.end()) {
                experts.push_back(e);
            }
        }
        std::sort(experts.begin(), experts.end());
    }
    bool mixed() const { return experts.size() + (has_base ? 1 : 0) > 1; }
    bool operator==(const llama_switchyard_signature & o) const { return experts == o.experts && has_base == o.has_base; }
};

// The per-token inputs of a batch: each token's expert (for ggml_mul_mat_id over a stack) and,
// in a batch of mixed experts, a 0/1 mask per expert and one for "has an expert".
struct llama_switchyard_graph_input : public llm_graph_input_i {
    llama_switchyard_graph_input(const llama_switchyard_seq_experts * seq, int32_t dflt, const std::vector<int32_t> & tokens)
        : seq(seq), dflt(dflt), sig(tokens) {}

    // An input no product of this graph reads was never allocated.
    static bool used(const ggml_tensor * t) { return t && t->buffer; }

    void set_input(const llama_ubatch * ub) override {
        const std::vector<int32_t> tokens = llama_switchyard_token_experts(*ub, seq, dflt);
        const size_t n = tokens.size();
        if (used(ids)) {
            std::vector<int32_t> v(n);
            for (size_t i = 0; i < n; i++) {
                v[i] = tokens[i] < 0 ? sig.experts[0] : tokens[i]; // masked off below
            }
            ggml_backend_tensor_set(ids, v.data(), 0, n * sizeof(int32_t));
        }
        if (used(rows)) {
            std::vector<int32_t> v(n);
            for (size_t i = 0; i < n; i++) {
                v[i] = 1 + tokens[i];
            }
            ggml_backend_tensor_set(rows, v.data(), 0, n * sizeof(int32_t));
        }
        auto fill = [&](ggml_tensor * t, auto pick) {
            if (used(t)) {
                std::vector<float> v(n);
                for (size_t i = 0; i < n; i++) {
                    v[i] = pick(tokens[i]) ? 1.0f : 0.0f;
                }
                ggml_backend_tensor_set(t, v.data(), 0, n * sizeof(float));
            }
        };
        fill(has_expert, [](int32_t e) { return e >= 0; });
        for (size_t k = 0; k < masks.size(); k++) {
            fill(masks[k], [&](int32_t e) { return e == sig.experts[k]; });
        }
    }

    bool can_reuse(const llm_graph_params & params) override {
        return params.switchyard_seq == seq && params.switchyard_expert == dflt &&
            llama_switchyard_signature(llama_switchyard_token_experts(params.ubatch, seq, dflt)) == sig;
    }

    const llama_switchyard_seq_experts * seq;
    const int32_t dflt;
    const llama_switchyard_signature sig;

    ggml_tensor * ids        = nullptr; // I32 [1, n_tokens]
    ggml_tensor * rows       = nullptr; // I32 [1, n_tokens]: 1 + the token's expert, 0 for the base (norms)
    ggml_tensor * has_expert = nullptr; // F32 [1, n_tokens], when some token runs the base
    std::vector<ggml_tensor *> masks;   // F32 [1, n_tokens] per sig.experts, when mixed
};

void llama_switchyard_graph_params(const llama_context & lctx, const llama_model & model, llm_graph_params & params) {
    llama_switchyard * sy = model.switchyard;
    params.switchyard = sy;
    params.switchyard_expert = -1;
    params.switchyard_seq = nullptr;
    if (sy) {
        int32_t current = -1;
        if (switchyard_model_current_expert(sy->handle, &current) == SWITCHYARD_RESULT_OK) {
            params.switchyard_expert = current;
        }
        const auto it = sy->seq_experts.find(&lctx);
        params.switchyard_seq = it == sy->seq_experts.end() || it->second.empty() ? nullptr : &it->second;
    }
}

uint32_t llama_switchyard_graph_nodes(const llama_model & model) {
    // per weight and expert: the delta's product, its mask and sum, the salient channels'
    // gather (reshape, transpose, cont, get_rows, transpose, cont, reshape), product, mask and sum
    const llama_switchyard * sy = model.switchyard;
    return sy ? 16u * (uint32_t) (sy->weights.size() * std::max<size_t>(1, switchyard_model_n_experts(sy->handle))) + 64u : 0u;
}

// The batch's per-token inputs, created with the graph's first use.
static llama_switchyard_graph_input * llama_switchyard_input(const llm_graph_context & g) {
    if (g.switchyard_inp) {
        return g.switchyard_inp;
    }
    auto inp = std::make_unique<llama_switchyard_graph_input>(g.switchyard_seq, g.switchyard_expert,
        llama_switchyard_token_experts(g.ubatch, g.switchyard_seq, g.switchyard_expert));
    const int64_t n = g.ubatch.n_tokens;
    if (!inp->sig.experts.empty()) {
        inp->ids = ggml_new_tensor_2d(g.ctx0, GGML_TYPE_I32, 1, n);
        ggml_set_input(inp->ids);
        inp->rows = ggml_new_tensor_2d(g.ctx0, GGML_TYPE_I32, 1, n);
        ggml_set_input(inp->rows);
        if (inp->sig.has_base) {
            inp->has_expert = ggml_new_tensor_2d(g.ctx0, GGML_TYPE_F32, 1, n);
            ggml_set_input(inp->has_expert);
        }
        if (inp->sig.mixed()) {
            for (size_t k = 0; k < inp->sig.experts.size(); k++) {
                inp->masks.push_back(ggml_new_tensor_2d(g.ctx0, GGML_TYPE_F32, 1, n));
                ggml_set_input(inp->masks.back());
            }
        }
    }
    g.switchyard_inp = inp.get();
    g.res->add_input(std::move(inp));
    return g.switchyard_inp;
}

// A per-token input ([1, n_tokens]) for a product over `n_cols` columns: the tokens themselves,
// or only the batch's outputs (llama.cpp keeps only those before the output weight).
static ggml_tensor * llama_switchyard_per_column(const llm_graph_context & g, ggml_tensor * t, int64_t n_cols) {
    if (t == nullptr || n_cols == t->ne[1]) {
        return t;
    }
    for (const auto & input : g.res->inputs) {
        if (auto * out = dynamic_cast<llm_graph_input_out_ids *>(input.get()); out && out->out_ids && out->out_ids->ne[0] == n_cols) {
            return ggml_get_rows(g.ctx0, t, out->out_ids);
        }
    }
    throw std::runtime_error(format("switchyard: a product over %lld columns in a batch of %lld tokens", (long long) n_cols, (long long) t->ne[1]));
}

// x's salient channels (rows salient_idx of x's transpose), shaped like x with n_salient rows.
static ggml_tensor * llama_switchyard_gather(ggml_context * ctx0, ggml_tensor * cur, ggml_tensor * salient_idx) {
    const int64_t n_in = cur->ne[0];
    ggml_tensor * x = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur);
    x = ggml_reshape_2d(ctx0, x, n_in, ggml_nelements(x) / n_in);
    ggml_tensor * g = ggml_get_rows(ctx0, ggml_cont(ctx0, ggml_transpose(ctx0, x)), salient_idx);
    g = ggml_cont(ctx0, ggml_transpose(ctx0, g));
    return ggml_reshape_4d(ctx0, g, salient_idx->ne[0], cur->ne[1], cur->ne[2], cur->ne[3]);
}

static ggml_tensor * llama_switchyard_sum(ggml_context * ctx0, ggml_tensor * acc, ggml_tensor * t) {
    return acc ? ggml_add(ctx0, acc, t) : t;
}

static const llama_switchyard_weight * llama_switchyard_weight_of(const llama_switchyard * sy, const ggml_tensor * w) {
    if (sy == nullptr || w == nullptr) {
        return nullptr;
    }
    const auto it = sy->weights.find(ggml_get_name(w));
    return it == sy->weights.end() ? nullptr : &it->second;
}

ggml_tensor * llama_switchyard_build_mm(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * cur,
        ggml_tensor * ids, ggml_tensor * res) {
    const llama_switchyard_weight * weight = llama_switchyard_weight_of(g.switchyard, w);
    if (weight == nullptr) {
        return res;
    }
    llama_switchyard_graph_input * inp = llama_switchyard_input(g);
    const llama_switchyard_signature & sig = inp->sig;
    if (sig.experts.empty()) {
        return res;
    }
    ggml_context * ctx0 = g.ctx0;
    // tokens are columns: cur's second dimension, or its third for a MoE weight's [n_in, n_used, n_tokens]
    const int64_t n_cols = ids ? cur->ne[2] : ggml_nelements(cur) / cur->ne[0];
    // a column's term, masked to the columns whose token has expert k (or any expert) when the batch mixes
    auto masked = [&](ggml_tensor * term, ggml_tensor * mask) {
        mask = llama_switchyard_per_column(g, mask, n_cols);
        if (mask == nullptr) {
            return term;
        }
        if (ids) { // [n_out, n_used, n_tokens]: the mask along the tokens
            mask = ggml_reshape_3d(ctx0, mask, 1, 1, n_cols);
        }
        return ggml_mul(ctx0, term, mask);
    };
    // a dense weight's input as [n_in, n_cols]
    ggml_tensor * x = cur;
    if (!ids) {
        x = ggml_reshape_2d(ctx0, ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur), cur->ne[0], n_cols);
    }
    // a batch of mixed experts: each column with its own expert's delta in one product (a
    // batch of one expert takes that expert's slice: ggml_mul_mat is the cheaper op)
    const bool stacked = weight->stack && ids == nullptr && sig.mixed();
    ggml_tensor * dx = nullptr;
    if (stacked) {
        ggml_tensor * t = ggml_mul_mat_id(ctx0, weight->stack, ggml_reshape_3d(ctx0, x, x->ne[0], 1, n_cols),
            llama_switchyard_per_column(g, inp->ids, n_cols));
        dx = masked(ggml_reshape_2d(ctx0, t, t->ne[0], n_cols), inp->has_expert);
    }
    for (size_t k = 0; k < sig.experts.size(); k++) {
        const llama_switchyard_delta & d = weight->experts[sig.experts[k]];
        if (d.a == nullptr) {
            continue;
        }
        ggml_tensor * mask = sig.mixed() ? inp->masks[k] : nullptr;
        if (!stacked) {
            dx = llama_switchyard_sum(ctx0, dx, masked(ids ? ggml_mul_mat_id(ctx0, d.a, x, ids) : ggml_mul_mat(ctx0, d.a, x), mask));
        }
        if (d.salient) {
            ggml_tensor * xs = llama_switchyard_gather(ctx0, x, d.salient_idx);
            dx = llama_switchyard_sum(ctx0, dx, masked(ids ? ggml_mul_mat_id(ctx0, d.salient, xs, ids) : ggml_mul_mat(ctx0, d.salient, xs), mask));
        }
    }
    if (dx == nullptr) {
        return res;
    }
    if (!ids) {
        dx = ggml_reshape(ctx0, dx, res);
    }
    return ggml_add(ctx0, res, dx);
}

ggml_tensor * llama_switchyard_build_norm(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * cur) {
    const llama_switchyard_weight * weight = llama_switchyard_weight_of(g.switchyard, w);
    llama_switchyard_graph_input * inp = weight && weight->rows ? llama_switchyard_input(g) : nullptr;
    if (inp == nullptr || inp->sig.experts.empty()) {
        return ggml_mul(g.ctx0, cur, w);
    }
    // each token's row of the stack (0 for the base, 1 + e for expert e); tokens are cur's
    // columns ([n, tokens]) or its third dimension ([n, heads, tokens], per-head norms)
    const int64_t n_tokens = g.ubatch.n_tokens;
    const bool per_head = ggml_n_dims(cur) >= 3 || (cur->ne[1] != n_tokens && cur->ne[1] != (int64_t) g.n_outputs);
    const int64_t n_cols = per_head ? cur->ne[2] : cur->ne[1];
    ggml_tensor * idx = ggml_reshape_1d(g.ctx0, llama_switchyard_per_column(g, inp->rows, n_cols), n_cols);
    ggml_tensor * rows = ggml_get_rows(g.ctx0, weight->rows, idx);
    if (per_head) {
        rows = ggml_reshape_3d(g.ctx0, rows, w->ne[0], 1, n_cols);
    }
    return ggml_mul(g.ctx0, cur, rows);
}

ggml_tensor * llama_switchyard_build_rows(const llm_graph_context & g, ggml_tensor * w, ggml_tensor * tokens,
        ggml_tensor * embd) {
    llama_switchyard_graph_input * inp = g.switchyard ? llama_switchyard_input(g) : nullptr;
    const llama_switchyard_weight * weight = llama_switchyard_weight_of(g.switchyard, w);
    if (weight == nullptr || inp->sig.experts.empty()) {
        return embd;
    }
    for (size_t k = 0; k < inp->sig.experts.size(); k++) {
        const llama_switchyard_delta & d = weight->experts[inp->sig.experts[k]];
        if (d.a == nullptr) {
            continue;
        }
        GGML_ASSERT(d.salient == nullptr && "token embeddings take dense deltas only");
        ggml_tensor * rows = ggml_get_rows(g.ctx0, d.a, tokens);
        if (inp->sig.mixed()) {
            rows = ggml_mul(g.ctx0, rows, inp->masks[k]);
        }
        embd = ggml_add(g.ctx0, embd, rows);
    }
    return embd;
}
