#pragma once

// switchyard bundles in llama-server: "base", each expert and "auto" (with a router) are served
// as models of their own, and a request's "model" field picks the expert its slot runs. Compiled
// in every build of the patched tree; without LLAMA_SWITCHYARD no model is a bundle.

#include "server-common.h"

#include <map>
#include <set>
#include <string>
#include <vector>

struct common_preset;
struct common_preset_context;
struct llama_context;
struct llama_model;

// "base", every expert of a bundle, then "auto" when it carries a router; empty for any other
// model.
std::vector<std::string> server_switchyard_experts(const llama_model * model);

// The models a bundle lists in /v1/models: `info` (the model's own entry) once per expert.
json server_switchyard_model_list(const std::vector<std::string> & experts, const json & info);

// The expert that serves a request, from its "model" field: one of `experts` by name; the model's
// own name, an alias or nothing gets `default_expert`; "auto" asks the bundle's router (base
// serves below the bundle's threshold, or the request's "router_threshold"). Empty when
// `experts` is empty (not a bundle). Returns false with `error` (and its type) filled when the
// request names a model this server does not have or routing fails.
bool server_switchyard_request_expert(const llama_model * model, const std::vector<std::string> & experts,
                                      const std::string & default_expert, const std::string & model_name,
                                      const std::set<std::string> & model_aliases, const json & data,
                                      std::string & expert, std::string & error, error_type & error_kind);

// Whether one batch can hold slots of different experts: each token's products add its own
// sequence's expert deltas (llama_switchyard_seq_experts_ok). False for any other model.
bool server_switchyard_mixes_experts(const llama_model * model);

// /slots save and restore: the expert that computed a saved slot's KV is written beside its file
// (FILE.expert) and read back on restore, so a restored prompt is only reused by its own expert.
// A bundle's slot file without one (saved by another build) gets an expert no request names: its
// KV is never reused. Empty for any other model.
void        server_switchyard_save_slot_expert(const std::string & filepath, const std::string & expert);
std::string server_switchyard_restored_slot_expert(const llama_model * model, const std::string & filepath);

// Gives slot (sequence) `seq_id` its task's expert for every batch it joins, on a model that
// mixes experts; nothing to do otherwise. Returns false (logged) for an expert the model lacks.
bool server_switchyard_assign_slot(llama_context * ctx, int32_t seq_id, const std::string & expert);

// On a bundle that cannot mix experts in a batch: puts `expert` ("base" or a name) in place
// before a batch of its slots decodes; each slot keeps its own KV cache. Nothing to do for an
// empty expert (not a bundle) or a model that mixes experts. Returns false (logged) when the
// switch failed: the replaced tensors may then hold a mix of experts.
bool server_switchyard_prepare_batch(llama_context * ctx, const std::string & expert);

// Router mode (--models-dir, --models-preset): every bundle among `presets` is also reached by
// its experts' names (and "auto" when it carries a router), added to the model's aliases, so a
// request naming an expert reaches the bundle's server, which runs that expert. A name that is
// already a model's name or alias stays theirs (logged). Nothing without LLAMA_SWITCHYARD.
void server_switchyard_router_aliases(const common_preset_context & ctx, std::map<std::string, common_preset> & presets);

// The entries /v1/models lists for router model `name`: `info` (its own entry), then, for a
// bundle, a copy per expert named in server_switchyard_router_aliases.
json server_switchyard_router_list(const std::string & name, const json & info);
