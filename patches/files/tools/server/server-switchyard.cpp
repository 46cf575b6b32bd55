#include "server-switchyard.h"

#include "preset.h"

#ifdef LLAMA_SWITCHYARD
#include "gguf.h"
#include "llama-switchyard.h"
#endif

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>

std::vector<std::string> server_switchyard_experts(const llama_model * model) {
    std::vector<std::string> names;
#ifdef LLAMA_SWITCHYARD
    const int32_t n = llama_switchyard_n_experts(model);
    if (n > 0) {
        names.push_back("base");
    }
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        llama_switchyard_expert_name(model, i, name, sizeof(name));
        names.push_back(name);
    }
    if (llama_switchyard_has_router(model)) {
        names.push_back("auto"); // the bundle's router picks the expert per request
    }
#else
    GGML_UNUSED(model);
#endif
    return names;
}

json server_switchyard_model_list(const std::vector<std::string> & experts, const json & info) {
    json list = json::array();
    for (const auto & e : experts) {
        json entry = info;
        entry["id"] = e;
        list.push_back(entry);
    }
    return list;
}

#ifdef LLAMA_SWITCHYARD
// The text a router reads: the last user message of a chat request (without the chat
// template), else the prompt when it is text; empty otherwise (the base model serves).
static std::string server_switchyard_route_text(const json & data) {
    const json messages = json_value(data, "messages", json());
    if (messages.is_array()) {
        for (size_t i = messages.size(); i-- > 0;) {
            const json & message = messages.at(i);
            if (!message.is_object() || json_value(message, "role", std::string()) != "user") {
                continue;
            }
            const json content = json_value(message, "content", json());
            if (content.is_string()) {
                return content.get<std::string>();
            }
            std::string text;
            if (content.is_array()) {
                for (const auto & part : content) {
                    if (part.is_object() && json_value(part, "type", std::string()) == "text") {
                        text += (text.empty() ? "" : "\n") + json_value(part, "text", std::string());
                    }
                }
            }
            return text;
        }
    }
    const json prompt = json_value(data, "prompt", json());
    return prompt.is_string() ? prompt.get<std::string>() : std::string();
}
#endif

bool server_switchyard_request_expert(const llama_model * model, const std::vector<std::string> & experts,
                                      const std::string & default_expert, const std::string & model_name,
                                      const std::set<std::string> & model_aliases, const json & data,
                                      std::string & expert, std::string & error, error_type & error_kind) {
    expert.clear();
    if (experts.empty()) {
        return true;
    }
    const std::string requested = json_value(data, "model", std::string());
    if (requested.empty() || requested == model_name || model_aliases.count(requested)) {
        expert = default_expert;
    } else if (std::find(experts.begin(), experts.end(), requested) != experts.end()) {
        expert = requested;
    } else {
        std::string valid;
        for (const auto & e : experts) {
            valid += (valid.empty() ? "" : ", ") + e;
        }
        // 400, not 404: the HTTP layer replaces the body of every 404 with its file page
        error      = string_format("model '%s' not found; this server has: %s", requested.c_str(), valid.c_str());
        error_kind = ERROR_TYPE_INVALID_REQUEST;
        return false;
    }
#ifdef LLAMA_SWITCHYARD
    if (expert == "auto") {
        const float threshold = json_value(data, "router_threshold", -1.0f);
        float confidence = 0.0f;
        const char * routed = llama_switchyard_route_text(model, server_switchyard_route_text(data).c_str(), threshold, &confidence);
        if (!routed) {
            error      = "cannot route the request (see the server log)";
            error_kind = ERROR_TYPE_SERVER;
            return false;
        }
        SRV_INF("routed request to '%s' (confidence %.3f)\n", routed, confidence);
        expert = routed;
    }
#else
    GGML_UNUSED(model);
#endif
    return true;
}

bool server_switchyard_mixes_experts(const llama_model * model) {
#ifdef LLAMA_SWITCHYARD
    return llama_switchyard_seq_experts_ok(model);
#else
    GGML_UNUSED(model);
    return false;
#endif
}

void server_switchyard_save_slot_expert(const std::string & filepath, const std::string & expert) {
    const std::string path = filepath + ".expert";
    if (expert.empty()) {
        std::remove(path.c_str()); // a stale one from a bundle's slot saved under the same name
        return;
    }
    std::ofstream(path) << expert;
}

std::string server_switchyard_restored_slot_expert(const llama_model * model, const std::string & filepath) {
    if (server_switchyard_experts(model).empty()) {
        return "";
    }
    std::string expert;
    std::ifstream(filepath + ".expert") >> expert;
    return expert.empty() ? std::string("\x01unknown") : expert; // never a request's expert name
}

bool server_switchyard_assign_slot(llama_context * ctx, int32_t seq_id, const std::string & expert) {
#ifdef LLAMA_SWITCHYARD
    if (expert.empty() || !llama_switchyard_seq_experts_ok(llama_get_model(ctx))) {
        return true;
    }
    if (llama_switchyard_set_seq_expert(ctx, seq_id, expert.c_str()) == 0) {
        return true;
    }
    SRV_ERR("cannot give slot %d expert '%s'\n", seq_id, expert.c_str());
    return false;
#else
    GGML_UNUSED(ctx);
    GGML_UNUSED(seq_id);
    return expert.empty();
#endif
}

bool server_switchyard_prepare_batch(llama_context * ctx, const std::string & expert) {
    if (expert.empty() || server_switchyard_mixes_experts(llama_get_model(ctx))) {
        return true;
    }
#ifdef LLAMA_SWITCHYARD
    if (llama_switchyard_set_expert_keep_memory(ctx, expert.c_str()) == 0) {
        return true;
    }
    SRV_ERR("cannot switch to expert '%s'\n", expert.c_str());
#else
    GGML_UNUSED(ctx);
#endif
    return false;
}

// The expert names router model `name` answers to, as server_switchyard_router_aliases last set
// them; /v1/models lists them beside the bundle.
static std::mutex                                      router_experts_mutex;
static std::map<std::string, std::vector<std::string>> router_experts;

#ifdef LLAMA_SWITCHYARD
// A bundle's expert names from its GGUF header (then "auto" when it carries a router); empty for
// any other file or one that cannot be read (the child server reports why when it loads it).
static std::vector<std::string> server_switchyard_file_experts(const std::string & path) {
    std::vector<std::string> names;
    gguf_init_params params = { /*.no_alloc =*/ true, /*.ctx =*/ nullptr };
    gguf_context * gguf = gguf_init_from_file(path.c_str(), params);
    if (!gguf) {
        return names;
    }
    const int64_t key = gguf_find_key(gguf, "switchyard.expert_names");
    if (key >= 0 && gguf_get_kv_type(gguf, key) == GGUF_TYPE_ARRAY && gguf_get_arr_type(gguf, key) == GGUF_TYPE_STRING) {
        for (size_t i = 0; i < gguf_get_arr_n(gguf, key); i++) {
            names.push_back(gguf_get_arr_str(gguf, key, i));
        }
        if (gguf_find_key(gguf, "switchyard.router.classes") >= 0) {
            names.push_back("auto");
        }
    }
    gguf_free(gguf);
    return names;
}
#endif

void server_switchyard_router_aliases(const common_preset_context & ctx, std::map<std::string, common_preset> & presets) {
    std::map<std::string, std::vector<std::string>> experts_of;
#ifdef LLAMA_SWITCHYARD
    // names already taken: every model's name and its own aliases
    auto split_aliases = [](const common_preset & preset) {
        std::vector<std::string> out;
        std::string list;
        if (preset.get_option("LLAMA_ARG_ALIAS", list)) {
            for (auto & a : string_split<std::string>(list, ',')) {
                a = string_strip(a);
                if (!a.empty()) {
                    out.push_back(a);
                }
            }
        }
        return out;
    };
    std::set<std::string> taken;
    for (const auto & [name, preset] : presets) {
        taken.insert(name);
        for (const auto & a : split_aliases(preset)) {
            taken.insert(a);
        }
    }
    for (auto & [name, preset] : presets) {
        std::string path;
        if (!preset.get_option("LLAMA_ARG_MODEL", path) || path.empty()) {
            continue;
        }
        std::vector<std::string> aliases = split_aliases(preset);
        for (const auto & e : server_switchyard_file_experts(path)) {
            if (!taken.insert(e).second) {
                SRV_WRN("bundle '%s': expert '%s' is not reachable by name in router mode: another model or alias is called so\n",
                    name.c_str(), e.c_str());
                continue;
            }
            aliases.push_back(e);
            experts_of[name].push_back(e);
        }
        if (experts_of.count(name)) {
            preset.set_option(ctx, "LLAMA_ARG_ALIAS", string_join(aliases, ","));
        }
    }
#else
    GGML_UNUSED(ctx);
    GGML_UNUSED(presets);
#endif
    std::lock_guard<std::mutex> lock(router_experts_mutex);
    router_experts = std::move(experts_of);
}

json server_switchyard_router_list(const std::string & name, const json & info) {
    json list = json::array({ info });
    std::lock_guard<std::mutex> lock(router_experts_mutex);
    const auto it = router_experts.find(name);
    if (it == router_experts.end()) {
        return list;
    }
    for (json entry : server_switchyard_model_list(it->second, info)) {
        entry["aliases"] = json::array();
        entry["bundle"]  = name; // the model whose server runs this expert
        list.push_back(entry);
    }
    return list;
}
