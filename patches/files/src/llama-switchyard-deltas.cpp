// A bundle's experts' deltas, loaded next to the weights they change: what each holds and in
// which ggml type is decided by the library (switchyard_model_graph_delta,
// plugin/src/bundle/in_graph.rs); this file sizes, allocates and fills the ggml tensors, on the
// device of each weight. llama-switchyard-graph.cpp applies them.
#include "llama-switchyard-impl.h"

#include "llama-impl.h"
#include "llama-model.h"

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
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

// One expert's delta of one weight as the library converts it (`parts`, all zero when the
// expert leaves the weight unchanged), released with this holder.
struct llama_switchyard_converted {
    switchyard_graph_delta * delta = nullptr;
    switchyard_graph_delta_parts parts = {};

    llama_switchyard_converted(switchyard_model * handle, uint32_t expert, const std::string & name, int32_t type) {
        switchyard_result res = switchyard_model_graph_delta(handle, expert, name.c_str(), type, &delta);
        if (res == SWITCHYARD_RESULT_OK && delta) {
            res = switchyard_graph_delta_get_parts(delta, &parts);
        }
        if (res != SWITCHYARD_RESULT_OK) {
            switchyard_graph_delta_free(delta);
            throw llama_switchyard_failure(res);
        }
    }
    ~llama_switchyard_converted() { switchyard_graph_delta_free(delta); }
    llama_switchyard_converted(const llama_switchyard_converted &) = delete;
    llama_switchyard_converted & operator=(const llama_switchyard_converted &) = delete;
};

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
            // per weight, two stacks and four tensors per expert at most
            ggml_init_params params = { (2 + 4 * n_experts) * model.tensors_by_name.size() * ggml_tensor_overhead(), nullptr, true };
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
        std::vector<uint32_t> ranks(n_experts, 0), n_salient(n_experts, 0);
        for (uint32_t e = 0; e < n_experts; e++) {
            const switchyard_result res = switchyard_model_graph_delta_shape(sy->handle, e, name.c_str(), sy->delta_type, &types[e], &ranks[e], &n_salient[e]);
            if (res != SWITCHYARD_RESULT_OK) {
                throw llama_switchyard_failure(res);
            }
            if (ranks[e] > 0 && ggml_n_dims(w) > 2) {
                throw std::runtime_error("switchyard: a low-rank delta of " + name + ", which is not a matrix");
            }
        }
        // Stacked when two or more experts change the weight in one type and rank (experts
        // packed with the same settings usually do; pack keeps the codec for a matrix whose
        // factors would keep too little, which can differ between experts): one
        // ggml_mul_mat_id (two for low-rank factors) then serves a batch of mixed experts.
        // Otherwise each expert's delta is its own tensor, applied to its tokens by a mask.
        int32_t stack_type = -1, n_changing = 0;
        uint32_t stack_rank = 0;
        for (uint32_t e = 0; e < n_experts; e++) {
            if (types[e] < 0) {
                continue;
            }
            const bool same = n_changing == 0 || (stack_type == types[e] && stack_rank == ranks[e]);
            stack_type = same ? types[e] : -2;
            stack_rank = ranks[e];
            n_changing++;
        }
        // a delta's first matrix: the weight's shape, or factor A's [ne0, rank]
        const int64_t rows_a = stack_rank > 0 ? stack_rank : w->ne[1];
        if (stack_type >= 0 && n_changing >= 2 && ggml_n_dims(w) <= 2) {
            weight.stack = ggml_new_tensor_3d(ctx, (ggml_type) stack_type, w->ne[0], rows_a, n_experts);
            ggml_format_name(weight.stack, "switchyard.%s", name.c_str());
            if (stack_rank > 0) {
                weight.stack_b = ggml_new_tensor_3d(ctx, (ggml_type) stack_type, stack_rank, w->ne[1], n_experts);
                ggml_format_name(weight.stack_b, "switchyard.%s.b", name.c_str());
            }
        }
        for (uint32_t e = 0; e < n_experts; e++) {
            if (types[e] < 0) {
                continue;
            }
            llama_switchyard_delta & d = weight.experts[e];
            if (weight.stack) {
                d.a = ggml_view_2d(ctx, weight.stack, w->ne[0], rows_a, weight.stack->nb[1], e * weight.stack->nb[2]);
                if (weight.stack_b) {
                    d.b = ggml_view_2d(ctx, weight.stack_b, stack_rank, w->ne[1], weight.stack_b->nb[1], e * weight.stack_b->nb[2]);
                }
            } else if (ranks[e] > 0) {
                d.a = ggml_new_tensor_2d(ctx, (ggml_type) types[e], w->ne[0], ranks[e]);
                d.b = ggml_new_tensor_2d(ctx, (ggml_type) types[e], ranks[e], w->ne[1]);
            } else {
                d.a = ggml_new_tensor(ctx, (ggml_type) types[e], GGML_MAX_DIMS, w->ne);
            }
            ggml_format_name(d.a, "switchyard.%u.%s", e, name.c_str());
            if (d.b) {
                ggml_format_name(d.b, "switchyard.%u.%s.b", e, name.c_str());
            }
            if (n_salient[e] > 0) {
                d.salient_idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_salient[e]);
                d.salient = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n_salient[e], w->ne[1], w->ne[2], w->ne[3]);
            }
            todo.push_back({ name, e, types[e], &d });
        }
    }
    std::string where; // the buffer types holding deltas, for the log
    for (auto & [buft, ctx] : ctx_of) {
        if (ggml_get_first_tensor(ctx) == nullptr) {
            continue;
        }
        where += (where.empty() ? "" : ", ") + std::string(ggml_backend_buft_name(buft));
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
        const llama_switchyard_converted converted(sy->handle, p.expert, p.name, p.type);
        const switchyard_graph_delta_parts & parts = converted.parts;
        if (converted.delta == nullptr || parts.ggml_type != p.d->a->type || parts.data_size != ggml_nbytes(p.d->a) ||
                (p.d->salient_idx ? ggml_nelements(p.d->salient_idx) : 0) != parts.n_salient ||
                (p.d->b ? p.d->b->ne[0] : 0) != parts.rank || (p.d->b ? ggml_nbytes(p.d->b) : 0) != parts.b_size) {
            throw std::runtime_error("switchyard: the delta of " + p.name + " does not have the shape announced for it");
        }
        ggml_backend_tensor_set(p.d->a, parts.data, 0, parts.data_size);
        n_bytes += parts.data_size;
        if (p.d->b) {
            ggml_backend_tensor_set(p.d->b, parts.b, 0, parts.b_size);
            n_bytes += parts.b_size;
        }
        if (p.d->salient_idx) {
            ggml_backend_tensor_set(p.d->salient_idx, parts.salient_idx, 0, ggml_nbytes(p.d->salient_idx));
            ggml_backend_tensor_set(p.d->salient, parts.salient, 0, ggml_nbytes(p.d->salient));
            n_bytes += ggml_nbytes(p.d->salient_idx) + ggml_nbytes(p.d->salient);
        }
    }
    for (const pending_norm & p : norms) {
        std::vector<float> base(p.w->ne[0]);
        ggml_backend_tensor_get(p.w, base.data(), 0, ggml_nbytes(p.w));
        ggml_backend_tensor_set(p.rows, base.data(), 0, ggml_nbytes(p.w));
        for (uint32_t e = 0; e < n_experts; e++) {
            const llama_switchyard_converted converted(sy->handle, e, p.name, -1);
            const switchyard_graph_delta_parts & parts = converted.parts;
            if (converted.delta && (parts.ggml_type != GGML_TYPE_F32 || parts.data_size != ggml_nbytes(p.w))) {
                throw std::runtime_error("switchyard: expert " + std::to_string(e) + "'s " + p.name + " is not an f32 vector of its size");
            }
            ggml_backend_tensor_set(p.rows, converted.delta ? parts.data : base.data(), (1 + e) * ggml_nbytes(p.w), ggml_nbytes(p.w));
        }
    }
    switchyard_model_release_resident(sy->handle);
    LLAMA_LOG_INFO("%s: %zu expert deltas of %zu weights applied in the graph, %.1f MiB in %s, converted in %.2f s\n", __func__,
        todo.size(), sy->weights.size(), n_bytes / 1048576.0, where.empty() ? "no buffer" : where.c_str(), (ggml_time_us() - t_start) / 1e6);
}

