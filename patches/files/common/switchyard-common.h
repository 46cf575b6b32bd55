#pragma once

// switchyard's part of llama.cpp's common library (built with -DLLAMA_SWITCHYARD=ON): what every
// tool that creates its context through common_init_from_params gets.
//   - a graph callback, chosen from the environment and the model: SWITCHYARD_TRACE=FILE (record
//     a MoE model's routing), --moe-cache (read each MoE layer's experts before it runs),
//     SWITCHYARD_CAPTURE=FILE (record every layer's FFN input); one at a time, and never over a
//     tool's own callback (llama-imatrix);
//   - --expert NAME|auto on a bundle.

#include "llama-switchyard.h"
#include "llama.h"

#include <memory>

struct common_params;

// What the graph callback writes to; it must outlive the context that calls it.
struct common_switchyard_recorders {
    std::unique_ptr<llama_switchyard_trace, void (*)(llama_switchyard_trace *)> trace{nullptr, llama_switchyard_trace_close};
    std::unique_ptr<llama_switchyard_capture, void (*)(llama_switchyard_capture *)> capture{nullptr, llama_switchyard_capture_close};
};

// Before the context is created: install the graph callback asked for into cparams. Returns
// false (logged) when it cannot be had: the context must not be created.
bool common_switchyard_init_graph_callback(const common_params & params, llama_model * model, llama_context_params & cparams,
                                           common_switchyard_recorders & recorders);

// After the context is created: run --expert (a name or "base"; "auto" is left to the tool, which
// routes each prompt). Returns false (logged) when the context cannot run what was asked.
bool common_switchyard_apply_expert(const common_params & params, llama_model * model, llama_context * lctx);
