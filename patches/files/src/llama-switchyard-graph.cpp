// A bundle's experts in the graph: every changed weight stays as the file holds it (mapped,
// in its own type) and each expert's delta is a second, compressed matrix next to it
// (llama-switchyard-deltas.cpp loads them); the graph adds the delta's product where
// llama.cpp multiplies by the weight (build_lora_mm, build_lora_mm_id), looks up token
// embeddings and applies a norm's weight. Each token gets the delta of its own sequence's
// expert, so one batch can mix experts.
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
        std::lock_guard<std::mutex> lock(sy->seq_experts_mutex);
        const auto it = sy->seq_experts.find(&lctx);
        params.switchyard_seq = it == sy->seq_experts.end() || it->second.empty() ? nullptr : &it->second;
    }
}

void llama_switchyard_forget_context(const llama_model & model, const llama_context * lctx) {
    if (llama_switchyard * sy = model.switchyard) {
        std::lock_guard<std::mutex> lock(sy->seq_experts_mutex);
        sy->seq_experts.erase(lctx);
    }
}

// Graph entries (nodes and leafs: ggml's scheduler checks both against llama.cpp's node budget)
// the builders below add for one weight at most; counted from their code, so keep the two in
// step. The budget is resident memory whether used or not: llama.cpp's kept graphs and the
// scheduler's allocator reserve room for every entry (about 1.3 KiB each, SmolLM2).
static uint32_t llama_switchyard_weight_nodes(const llama_switchyard_weight & weight, bool token_embd) {
    uint32_t n_deltas  = 0;
    uint32_t n_salient = 0;
    for (const llama_switchyard_delta & d : weight.experts) {
        n_deltas  += d.a != nullptr;
        n_salient += d.salient != nullptr;
    }
    // the delta tensors themselves: leafs, or views of the stacks (nodes)
    uint32_t n = 2 * n_deltas + 2 * n_salient + (weight.stack != nullptr) + (weight.stack_b != nullptr) + (weight.rows != nullptr);
    if (weight.rows) {
        n += 5; // build_norm: the per-column rows, two reshapes, get_rows, mul
    }
    if (n_deltas > 0) {
        // build_mm, at most: the input's cont and reshape, the final reshape and add (4); then
        // either the stacked products (per-column ids, reshape, A's and B's products, reshape,
        // masked: per-column mask, reshape, mul) (8) or each expert's own (A's and B's products,
        // masked (3), sum) (6); and each salient part: the gather (8), its product, masked (3),
        // sum (13)
        const uint32_t stacked = weight.stack ? 8 : 0;
        n += 4 + std::max(stacked, 6 * n_deltas) + 13 * n_salient;
    }
    if (token_embd) {
        // build_rows: get_rows, mask and add per expert (and build_mm too: a tied output weight
        // is the same tensor)
        n += 3 * n_deltas;
    }
    return n;
}

uint32_t llama_switchyard_graph_nodes(const llama_model & model) {
    const llama_switchyard * sy = model.switchyard;
    if (sy == nullptr) {
        return 0;
    }
    // The batch's inputs (ids, rows, has_expert, one mask per expert) and room to spare. Each
    // weight is multiplied once per graph in the architectures llama_switchyard_attach accepts
    // (the tied output aside); one that reuses weights needs its uses counted here.
    const uint32_t n_experts = (uint32_t) std::max<size_t>(1, switchyard_model_n_experts(sy->handle));
    const char * token_embd = model.tok_embd ? ggml_get_name(model.tok_embd) : "";
    uint32_t n = 3 + n_experts + 64;
    for (const auto & [name, weight] : sy->weights) {
        n += llama_switchyard_weight_nodes(weight, name == token_embd);
    }
    return n;
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
            LLAMA_LOG_DEBUG("%s: a batch of %lld tokens mixes %zu experts%s\n", __func__, (long long) n,
                inp->sig.experts.size(), inp->sig.has_base ? " and the base" : "");
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
    // (an architecture that selects rows some other way: refused at load, see llama_switchyard_attach)
    GGML_ABORT("switchyard: a product over %lld columns in a batch of %lld tokens", (long long) n_cols, (long long) t->ne[1]);
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
    // a dense weight's input as [n_in, n_cols] (most already are: no view node for those, as
    // every node costs graph metadata in each of the context's kept graphs)
    ggml_tensor * x = cur;
    if (!ids && !(ggml_is_contiguous(cur) && ggml_n_dims(cur) <= 2)) {
        x = ggml_reshape_2d(ctx0, ggml_is_contiguous(cur) ? cur : ggml_cont(ctx0, cur), cur->ne[0], n_cols);
    }
    // a batch of mixed experts: each column with its own expert's delta in one product (a
    // batch of one expert takes that expert's slice: ggml_mul_mat is the cheaper op)
    const bool stacked = weight->stack && ids == nullptr && sig.mixed();
    ggml_tensor * dx = nullptr;
    if (stacked) {
        ggml_tensor * col_ids = llama_switchyard_per_column(g, inp->ids, n_cols);
        ggml_tensor * t = ggml_mul_mat_id(ctx0, weight->stack, ggml_reshape_3d(ctx0, x, x->ne[0], 1, n_cols), col_ids);
        if (weight->stack_b) { // [rank, 1, n_cols] through each column's own B
            t = ggml_mul_mat_id(ctx0, weight->stack_b, t, col_ids);
        }
        dx = masked(ggml_reshape_2d(ctx0, t, t->ne[0], n_cols), inp->has_expert);
    }
    for (size_t k = 0; k < sig.experts.size(); k++) {
        const llama_switchyard_delta & d = weight->experts[sig.experts[k]];
        if (d.a == nullptr) {
            continue;
        }
        ggml_tensor * mask = sig.mixed() ? inp->masks[k] : nullptr;
        if (!stacked) {
            GGML_ASSERT((ids == nullptr || d.b == nullptr) && "low-rank deltas are of matrices only");
            ggml_tensor * t = ids ? ggml_mul_mat_id(ctx0, d.a, x, ids) : ggml_mul_mat(ctx0, d.a, x);
            if (d.b) {
                t = ggml_mul_mat(ctx0, d.b, t);
            }
            dx = llama_switchyard_sum(ctx0, dx, masked(t, mask));
        }
        if (d.salient) {
            ggml_tensor * xs = llama_switchyard_gather(ctx0, x, d.salient_idx);
            dx = llama_switchyard_sum(ctx0, dx, masked(ids ? ggml_mul_mat_id(ctx0, d.salient, xs, ids) : ggml_mul_mat(ctx0, d.salient, xs), mask));
        }
    }
    if (dx == nullptr) {
        return res;
    }
    if (!ids && !ggml_are_same_shape(dx, res)) {
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
        GGML_ASSERT(d.salient == nullptr && d.b == nullptr && "token embeddings take dense deltas only");
        ggml_tensor * rows = ggml_get_rows(g.ctx0, d.a, tokens);
        if (inp->sig.mixed()) {
            rows = ggml_mul(g.ctx0, rows, inp->masks[k]);
        }
        embd = ggml_add(g.ctx0, embd, rows);
    }
    return embd;
}
