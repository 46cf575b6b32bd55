#include "switchyard-common.h"

#include "common.h"
#include "log.h"

#include <cstdlib>

bool common_switchyard_init_graph_callback(const common_params & params, llama_model * model, llama_context_params & cparams,
                                           common_switchyard_recorders & recorders) {
    // SWITCHYARD_TRACE=FILE records a MoE model's routing (`switchyard trace`, `switchyard sim`);
    // tools with a graph callback of their own (llama-imatrix, llama-eval-callback) keep theirs
    if (const char * trace_path = getenv("SWITCHYARD_TRACE"); trace_path && *trace_path) {
        if (cparams.cb_eval) {
            COM_WRN("%s", "SWITCHYARD_TRACE ignored: this tool uses the graph callback itself\n");
        } else {
            recorders.trace.reset(llama_switchyard_trace_open(model, trace_path));
            if (!recorders.trace) {
                COM_ERR("SWITCHYARD_TRACE=%s: cannot trace '%s'\n", trace_path, params.model.path.c_str());
                return false;
            }
            cparams.cb_eval           = llama_switchyard_trace_eval;
            cparams.cb_eval_user_data = recorders.trace.get();
        }
    }
    // --moe-cache: each MoE layer's picks are read in before they run
    if (llama_switchyard_moe_cache_active(model)) {
        if (cparams.cb_eval) {
            COM_ERR("%s", "--moe-cache: the graph callback is taken (by SWITCHYARD_TRACE or this tool)\n");
            return false;
        }
        cparams.cb_eval           = llama_switchyard_moe_cache_eval;
        cparams.cb_eval_user_data = model;
    }
    // SWITCHYARD_CAPTURE=FILE records every layer's FFN input (`switchyard moefy`)
    if (const char * capture_path = getenv("SWITCHYARD_CAPTURE"); capture_path && *capture_path) {
        if (cparams.cb_eval) {
            COM_ERR("SWITCHYARD_CAPTURE=%s: the graph callback is taken (by SWITCHYARD_TRACE or this tool)\n", capture_path);
            return false;
        }
        recorders.capture.reset(llama_switchyard_capture_open(model, capture_path));
        if (!recorders.capture) {
            COM_ERR("SWITCHYARD_CAPTURE=%s: cannot capture '%s'\n", capture_path, params.model.path.c_str());
            return false;
        }
        cparams.cb_eval           = llama_switchyard_capture_eval;
        cparams.cb_eval_user_data = recorders.capture.get();
    }
    return true;
}

bool common_switchyard_apply_expert(const common_params & params, llama_model * model, llama_context * lctx) {
    // "auto": the tool routes each prompt (llama-completion, llama-server, llama-cli); the model
    // starts as base, and a bundle without a router cannot do what was asked
    if (params.expert == "auto" && !llama_switchyard_has_router(model)) {
        COM_ERR("--expert auto: '%s' has no router (add one with `switchyard router train`)\n", params.model.path.c_str());
        return false;
    }
    if (!params.expert.empty() && params.expert != "auto" && llama_switchyard_set_expert(lctx, params.expert.c_str()) != 0) {
        COM_ERR("cannot run expert '%s' of '%s'\n", params.expert.c_str(), params.model.path.c_str());
        return false;
    }
    return true;
}
