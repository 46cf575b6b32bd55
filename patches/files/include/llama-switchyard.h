#pragma once

// switchyard bundles in llama.cpp (built with -DLLAMA_SWITCHYARD=ON).
//
// A bundle is one GGUF holding a base model plus compressed fine-tuned "experts". It loads like
// any model (llama_model_load_from_file) and runs as its base; these calls list its experts and
// switch the model's weights between them in place, in milliseconds, without reloading.

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

    // Number of experts of a model loaded from a bundle; 0 for any other model.
    LLAMA_API int32_t llama_switchyard_n_experts(const struct llama_model * model);

    // Name of expert i (0-based) into buf (buf_size bytes, NUL-terminated, truncated to fit).
    // Returns the name's length, or -1 when i is out of range or the model is not a bundle.
    LLAMA_API int32_t llama_switchyard_expert_name(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);

    // The expert whose weights the model holds ("base" for the base model), or NULL when the
    // model is not a bundle. Valid as long as the model.
    LLAMA_API const char * llama_switchyard_current_expert(const struct llama_model * model);

    // Switch the model behind ctx to expert `name` ("base" for the base model): the graph adds
    // that expert's deltas from the next batch on (tensors the graph cannot apply per token,
    // such as biases an expert replaces, are rewritten), ctx's per-sequence experts are
    // forgotten, and ctx's memory (KV cache) is cleared. The expert belongs to the model, so every context of the model
    // sees the switch: the caller must not decode on another context of the model while this
    // runs. Waits for ctx's pending work first. Switching to the expert already in place only
    // clears the memory.
    // Returns 0 on success, -1 for an unknown name (the log lists the valid ones), -2 when the
    // model is not a bundle, -3 on any other failure (logged; switch again before decoding).
    LLAMA_API int32_t llama_switchyard_set_expert(struct llama_context * ctx, const char * name);

    // Like llama_switchyard_set_expert, but leaves ctx's memory alone: for hosts that keep every
    // sequence's cache with the expert that computed it (llama-server gives each slot one
    // expert and drops a slot's cache when its expert changes).
    LLAMA_API int32_t llama_switchyard_set_expert_keep_memory(struct llama_context * ctx, const char * name);

    // The expert that serves sequence `seq_id` of ctx ("base" for the base model; NULL: the
    // model's expert, as set by llama_switchyard_set_expert). Sequences of one batch may use
    // different experts: each token's products add its own sequence's expert deltas. The
    // experts that replace a tensor the graph cannot apply per token (a bias) need the
    // model's expert to be theirs: llama_switchyard_seq_experts_ok tells whether a model can
    // mix experts in a batch. Leaves the memory alone (a host keeps each sequence's cache
    // with the expert that computed it). Call from the thread that decodes on ctx. Returns 0
    // on success, -1 for an unknown name, -2 when the model is not a bundle, -3 when it
    // cannot mix experts.
    LLAMA_API int32_t llama_switchyard_set_seq_expert(struct llama_context * ctx, llama_seq_id seq_id, const char * name);

    // Whether sequences of one batch can run different experts on this model (no expert
    // replaces a tensor whole, which is switched for the model, not per token).
    LLAMA_API bool llama_switchyard_seq_experts_ok(const struct llama_model * model);

    // Whether the bundle carries a router (`switchyard router train`), so "auto" can pick experts.
    LLAMA_API bool llama_switchyard_has_router(const struct llama_model * model);

    // Choose the expert for a prompt with the bundle's router, from the prompt's tokens (as
    // llama_tokenize gives them with add_special = false and parse_special = false: no BOS, no
    // chat template). Returns the expert's index (as in llama_switchyard_expert_name), or -1
    // when the base model should serve: the router's confidence is below `threshold` (negative:
    // the threshold stored in the bundle) or the prompt is empty. Returns -2 when the model is
    // not a bundle or has no router, -3 on any other failure (logged). `confidence` (may be
    // NULL) receives the router's probability of its top choice. Does not switch; costs one
    // embedding-row read per token and never waits for a switch in progress.
    LLAMA_API int32_t llama_switchyard_route(const struct llama_model * model, const llama_token * tokens, int32_t n_tokens, float threshold, float * confidence);

    // llama_switchyard_route on `text`, tokenized as above. Returns the chosen expert's name
    // ("base" included; valid as long as the model), or NULL when it cannot route (the model is
    // not a bundle, has no router, or the call failed: logged).
    LLAMA_API const char * llama_switchyard_route_text(const struct llama_model * model, const char * text, float threshold, float * confidence);

    // MoE routing traces for `switchyard sim` (the patched common library installs this when
    // SWITCHYARD_TRACE=FILE is set): a graph callback recording, per token and MoE layer, the
    // experts the router picked and their gate weights. Open returns NULL (logged) when the
    // model has no experts or the file cannot be created; close flushes the file.
    struct llama_switchyard_trace;
    LLAMA_API struct llama_switchyard_trace * llama_switchyard_trace_open(const struct llama_model * model, const char * path);
    LLAMA_API void llama_switchyard_trace_close(struct llama_switchyard_trace * trace);
    // a ggml_backend_sched_eval_callback; user_data is the trace
    LLAMA_API bool llama_switchyard_trace_eval(struct ggml_tensor * t, bool ask, void * user_data);

    // The MoE cache (--moe-cache SIZE, --moe-policy, --moe-t1, --moe-t2, --moe-skip-beta,
    // --moe-prefetch): the model's experts stay in its file and are read on demand into a cache
    // of SIZE bytes. Active tells whether the model was loaded so. Eval is the graph callback
    // (user_data: the model) that forwards each MoE layer's router probabilities and input, its
    // picks and their gate weights to the library, which reads the picks in before the layer
    // runs, zeroes the gate weights of the picks it skips, and reads ahead what the next
    // layers' routers pick; it must be installed for such a model to compute. One context per
    // model: contexts sharing it would evict each other's experts. A failed read aborts (the
    // layer cannot run without its experts).
    LLAMA_API bool llama_switchyard_moe_cache_active(const struct llama_model * model);
    LLAMA_API bool llama_switchyard_moe_cache_eval(struct ggml_tensor * t, bool ask, void * user_data);

    // FFN inputs for `switchyard moefy` (installed when SWITCHYARD_CAPTURE=FILE is set): a graph
    // callback recording every layer's normalised hidden state entering the feed-forward block
    // (ffn_norm), one row per token. Close writes the file; nothing is written after a failure.
    struct llama_switchyard_capture;
    LLAMA_API struct llama_switchyard_capture * llama_switchyard_capture_open(const struct llama_model * model, const char * path);
    LLAMA_API void llama_switchyard_capture_close(struct llama_switchyard_capture * capture);
    // a ggml_backend_sched_eval_callback; user_data is the capture
    LLAMA_API bool llama_switchyard_capture_eval(struct ggml_tensor * t, bool ask, void * user_data);

#ifdef __cplusplus
}
#endif
