/* switchyard: the C ABI. Generated from ffi/src by cbindgen; do not edit.
 *
 * Every function returns a switchyard_result (or a value that cannot fail) and never lets a
 * Rust panic cross into C. Outputs are written only on success; switchyard_last_error() gives
 * the detail of the calling thread's last failure. Check
 * switchyard_abi_version() == SWITCHYARD_ABI_VERSION before any other call. */

#ifndef SWITCHYARD_H
#define SWITCHYARD_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>

/*
 The ABI this header describes. A host compares it with [`switchyard_abi_version`] before any
 other call, so a library and header from different releases are never mixed.
 */
#define SWITCHYARD_ABI_VERSION 6

/*
 Outcome of a call.
 */
enum switchyard_result
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
  SWITCHYARD_RESULT_OK = 0,
  /*
   A required pointer argument was NULL.
   */
  SWITCHYARD_RESULT_NULL_ARGUMENT = 1,
  /*
   A string argument was not valid UTF-8.
   */
  SWITCHYARD_RESULT_INVALID_UTF8 = 2,
  /*
   The operating system refused a file operation.
   */
  SWITCHYARD_RESULT_IO = 3,
  /*
   Malformed, truncated or mismatched input (a file, a tensor, a key).
   */
  SWITCHYARD_RESULT_INVALID = 4,
  /*
   Well-formed input this version does not handle.
   */
  SWITCHYARD_RESULT_UNSUPPORTED = 5,
  /*
   No expert or tensor of that name.
   */
  SWITCHYARD_RESULT_NOT_FOUND = 6,
  /*
   The caller's buffer is too small. No call of ABI 4 returns it (names are lent by the
   model, not copied); kept so that every other code keeps its number.
   */
  SWITCHYARD_RESULT_BUFFER_TOO_SMALL = 7,
  /*
   The host's callback reported a failure.
   */
  SWITCHYARD_RESULT_CALLBACK_FAILED = 8,
  /*
   A bug in switchyard: a panic was caught at the boundary.
   */
  SWITCHYARD_RESULT_PANIC = 9,
};
#ifndef __cplusplus
typedef uint32_t switchyard_result;
#endif // __cplusplus

/*
 Shape of a synthetic delta, relative to the RMS of the weight it is added to.
 */
typedef struct DeltaSpec DeltaSpec;

/*
 The sizes of a random llama-architecture model.
 */
typedef struct Dims Dims;

/*
 A capture being recorded.
 */
typedef struct switchyard_capture switchyard_capture;

/*
 One converted delta; release with `switchyard_graph_delta_free`.
 */
typedef struct switchyard_graph_delta switchyard_graph_delta;

/*
 A bundle opened for switching. Thread-safe: calls on one model are serialised.
 */
typedef struct switchyard_model switchyard_model;

/*
 An open MoE cache. Calls on one cache are serialised.
 */
typedef struct switchyard_moe_cache switchyard_moe_cache;

/*
 An open trace file.
 */
typedef struct switchyard_trace switchyard_trace;

/*
 What a converted delta holds, lent by the delta (valid until `switchyard_graph_delta_free`).
 With `rank` 0 the graph adds `data x` (a matrix of the base weight's shape in `ggml_type`, an
 `enum ggml_type` value) and, when `n_salient` > 0, `salient g` where g holds x's channels
 `salient_idx` (`n_salient` values, sorted) and `salient` is an F16 matrix of `n_salient`
 columns and the base's rows. With `rank` > 0 it adds `b (data x)`: `data` is `rank` rows of
 the base's row length and `b` the base's number of rows of `rank` values, both in `ggml_type`.
 */
typedef struct {
  int32_t ggml_type;
  const void *data;
  size_t data_size;
  uint32_t rank;
  const void *b;
  size_t b_size;
  uint32_t n_salient;
  const int32_t *salient_idx;
  /*
   IEEE half-precision bit patterns, row-major `[rows][n_salient]`.
   */
  const uint16_t *salient;
} switchyard_graph_delta_parts;

/*
 How `switchyard_model_set_expert` reaches the host's tensors (the handles given to
 `switchyard_model_bind`).
 */
typedef struct {
  /*
   Optional: the tensor's memory when it lives in host RAM (`size` writable bytes), so the
   weights are decoded in place; NULL (or a NULL return) to go through `write`.
   */
  void *(*memory)(void *user, void *tensor, size_t size);
  /*
   Required: copy `size` bytes at `data` into `tensor` from offset 0 (e.g. with
   `ggml_backend_tensor_set`). Returns 0 on success, anything else on failure.
   */
  int32_t (*write)(void *user, void *tensor, const void *data, size_t size);
  /*
   Passed back to the callbacks.
   */
  void *user;
  /*
   Optional: when `tensor` lives in CUDA device memory, store its device pointer in
   `*ptr` and the device ordinal in `*device` and return 0; any other return (or a NULL
   callback) means host memory. A library built with the `cuda` feature then decodes the
   weight on that GPU with its own kernels and stream (synchronised before returning)
   instead of calling `write`; otherwise this is never called.
   */
  int32_t (*device)(void *user, void *tensor, uint64_t *ptr, int32_t *device);
} switchyard_host;

/*
 How a MoE cache is set up. Start from `switchyard_moe_cache_default_params()` and change what
 the host's options set.
 */
typedef struct {
  /*
   The cache's size: bytes ("512M", "2G", "1073741824") or a share of all expert bytes
   ("25%"). Default "100%".
   */
  const char *budget;
  /*
   Which expert to evict: "lru" (default), "lfu", "hobbit" or
   "hobbit:w_lru,w_lfu,w_lhu,w_fld".
   */
  const char *policy;
  /*
   On a miss, a pick whose unimportance (the share of the token's pick weight ranked above
   it) exceeds `t1` is read from its low-precision copy (`switchyard moe-pack`), and one
   above `t2` is not read: it is skipped. 1 and 1 (default) read everything in full
   precision.
   */
  float t1;
  float t2;
  /*
   Also skip a later pick weighing less than the layer's beta (stored by
   `switchyard moe-pack --trace`) times the first pick's. Default false.
   */
  bool skip_beta;
  /*
   How many later layers to read ahead for while a layer computes (0, the default: none).
   */
  uint32_t prefetch;
} switchyard_moe_cache_params;

/*
 What the cache did so far (C reads it as `switchyard_moe_cache_stats`).
 */
typedef struct {
  /*
   Picks served from memory, read from the file (of them, from low-precision copies: t1),
   and skipped (t2 or beta; not read, their gate weight zeroed).
   */
  uint64_t hits;
  uint64_t loads;
  uint64_t loads_low;
  uint64_t skipped;
  uint64_t bytes_read;
  uint64_t evictions;
  /*
   The budget in bytes, and the most expert bytes resident at once.
   */
  uint64_t budget;
  uint64_t peak_resident;
  /*
   Experts read ahead by prefetching (their bytes are in `bytes_read`), and those of them a
   later pick used (also counted in `hits`).
   */
  uint64_t prefetched;
  uint64_t prefetch_hits;
} switchyard_moe_cache_stats;









#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/*
 The ABI version the library was built with.
 */
uint32_t switchyard_abi_version(void);

/*
 Version of the library as a NUL-terminated string, e.g. "0.1.0". Never NULL; static storage.
 */
const char *switchyard_version(void);

/*
 Start a capture of `n_layers` layers of `n_embd` values per token, written to `path` by
 `switchyard_capture_finish`. On success `*out` receives the handle.
 */
switchyard_result switchyard_capture_init(const char *path,
                                          uint32_t n_layers,
                                          uint32_t n_embd,
                                          switchyard_capture **out);

/*
 Append `n_rows` rows of `n_embd` floats (`data`, row after row) to layer `layer`. After a
 failed call the capture is stopped: later calls fail and nothing is written.
 */
switchyard_result switchyard_capture_layer(const switchyard_capture *capture,
                                           uint32_t layer,
                                           uint32_t n_rows,
                                           uint32_t n_embd,
                                           const float *data);

/*
 Write the capture to its file. Fails when writing fails, when a `switchyard_capture_layer`
 call failed before (then nothing is written) or when called twice. Call it before
 `switchyard_capture_free`.
 */
switchyard_result switchyard_capture_finish(const switchyard_capture *capture);

/*
 Release a capture from `switchyard_capture_init`. NULL is ignored. Without
 `switchyard_capture_finish` before, nothing is written.
 */
void switchyard_capture_free(switchyard_capture *capture);

/*
 A static, NUL-terminated description of result code `result` (a `switchyard_result` value
 read as the integer C holds, so any value is safe to pass). Never NULL: a code this
 library does not define gives "unknown result code".
 */
const char *switchyard_result_str(uint32_t result);

/*
 Copy the calling thread's last error detail (which file, tensor or key, and why) into
 `buf` of `len` bytes, NUL-terminated and truncated to fit; returns the detail's full length
 in bytes without the NUL (0 when there was none). `buf` may be NULL when `len` is 0.
 */
size_t switchyard_last_error(char *buf, size_t len);

/*
 Whether the host applies weight `name`'s deltas in its graph (1) or switches the weight in
 place (0: `switchyard_model_tensor_type` then gives its type; also 0 for NULL arguments or
 a weight no expert changes).
 */
uint32_t switchyard_model_in_graph(const switchyard_model *model, const char *name);

/*
 The ggml type (`*out_type`), rank (`*out_rank`, 0 unless low-rank) and number of salient
 channels (`*out_n_salient`) of expert `expert`'s delta of weight `name` as
 `switchyard_model_graph_delta` converts it with `type`, without converting it. `*out_type`
 is -1 when the expert leaves the weight unchanged or it is not applied in the graph.
 */
switchyard_result switchyard_model_graph_delta_shape(const switchyard_model *model,
                                                     uint32_t expert,
                                                     const char *name,
                                                     int32_t type_,
                                                     int32_t *out_type,
                                                     uint32_t *out_rank,
                                                     uint32_t *out_n_salient);

/*
 Convert expert `expert`'s delta of weight `name` for the graph, the codec's part in ggml
 type `type` (-1: the library's choice). `*out` receives a handle to release with
 `switchyard_graph_delta_free`, or NULL when the expert leaves the weight unchanged or it is
 not applied in the graph.
 */
switchyard_result switchyard_model_graph_delta(const switchyard_model *model,
                                               uint32_t expert,
                                               const char *name,
                                               int32_t type_,
                                               switchyard_graph_delta **out);

/*
 Drop the bundle file's pages from the process's resident memory, once the host has
 converted the deltas it needs: the host maps the base weights itself, and the library's
 reads of the file would otherwise stay counted in its RSS. Never fails (NULL is ignored).
 */
void switchyard_model_release_resident(const switchyard_model *model);

/*
 What `delta` holds, into `*out` (pointers lent by `delta`).
 */
switchyard_result switchyard_graph_delta_get_parts(const switchyard_graph_delta *delta,
                                                   switchyard_graph_delta_parts *out);

/*
 Release a delta from `switchyard_model_graph_delta`. NULL is ignored.
 */
void switchyard_graph_delta_free(switchyard_graph_delta *delta);

/*
 Open the bundle at `path`: validates every delta and the base fingerprint. On success
 `*out` receives a handle to release with `switchyard_model_free`.
 */
switchyard_result switchyard_model_init(const char *path, switchyard_model **out);

/*
 Release a model from `switchyard_model_init`. NULL is ignored.
 */
void switchyard_model_free(switchyard_model *model);

/*
 The ggml type (`enum ggml_type` value) weight `name` must be created in because the bundle
 manages it, or -1 when the host loads it from the file as usual (also for NULL arguments).
 */
int32_t switchyard_model_tensor_type(const switchyard_model *model, const char *name);

/*
 Number of weights the bundle manages (those `switchyard_model_tensor_type` gives a type).
 */
uint32_t switchyard_model_n_managed(const switchyard_model *model);

/*
 Register `tensor` (an opaque pointer handed back to the write callback) as created for
 managed weight `name`. A weight created several times (tied embeddings) is bound each time.
 */
switchyard_result switchyard_model_bind(switchyard_model *model, const char *name, void *tensor);

/*
 Write expert `name` ("base" for the base model) into every bound tensor through `host`.
 A no-op when that expert is already in place. The host must not run the model while this
 runs, and must clear its KV cache afterwards. On failure the tensors may hold a mix of
 experts: switch again before using them.
 */
switchyard_result switchyard_model_set_expert(switchyard_model *model,
                                              const char *name,
                                              const switchyard_host *host);

/*
 Number of experts in the bundle (not counting "base").
 */
uint32_t switchyard_model_n_experts(const switchyard_model *model);

/*
 Name of expert `index` (0-based, bundle order; -1 for "base"), NUL-terminated and owned by
 the model: valid until `switchyard_model_free`. NULL when `index` is out of range (or the
 model is NULL).
 */
const char *switchyard_model_expert_name(const switchyard_model *model, int32_t index);

/*
 Index of the expert the bound tensors hold (as in `switchyard_model_expert_name`: -1 for
 "base", before any switch or after switching back) into `*out_index`.
 */
switchyard_result switchyard_model_current_expert(const switchyard_model *model,
                                                  int32_t *out_index);

/*
 Whether the bundle carries a router (`switchyard router train`): 1 if so, 0 if not or NULL.
 */
uint32_t switchyard_model_has_router(const switchyard_model *model);

/*
 Choose the expert for a prompt from its `n_tokens` tokens (the model's vocabulary, without
 BOS or chat-template tokens). `*out_expert` receives the expert's index (as in
 `switchyard_model_expert_name`) or -1 for the base model, which serves when the router's
 confidence is below `threshold` (above 1: always) (a negative `threshold` uses the one stored in the bundle)
 or the prompt is empty; `*out_confidence` (when not NULL) the router's probability of its top
 class. Never waits for a switch in progress. NOT_FOUND when the bundle has no router.
 */
switchyard_result switchyard_model_route(const switchyard_model *model,
                                         const int32_t *tokens,
                                         size_t n_tokens,
                                         float threshold,
                                         int32_t *out_expert,
                                         float *out_confidence);

/*
 The default parameters: a cache of all experts (each read once, on first use), least
 recently used evicted first, everything in full precision, no reading ahead.
 */
switchyard_moe_cache_params switchyard_moe_cache_default_params(void);

/*
 Open the mixture-of-experts GGUF at `path` as a MoE cache set up by `params`; `*out`
 receives a handle to release with `switchyard_moe_cache_free`. A budget, policy or
 threshold that cannot be used is `SWITCHYARD_RESULT_INVALID`, as is a model without the
 low-precision copies (`t1` < 1) or skipping thresholds (`skip_beta`) it asks for.
 */
switchyard_result switchyard_moe_cache_init(const char *path,
                                            switchyard_moe_cache_params params,
                                            switchyard_moe_cache **out);

/*
 1 when tensor `name` is an expert tensor the cache fills (the host allocates it in plain,
 writable host memory and does not read it), 0 if not or NULL.
 */
uint32_t switchyard_moe_cache_manages(const switchyard_moe_cache *cache, const char *name);

/*
 Hand over the host memory of expert tensor `name` (`len` bytes, malloc'd): from now on the
 cache fills and empties it. It must stay valid until `switchyard_moe_cache_free`.
 */
switchyard_result switchyard_moe_cache_bind(const switchyard_moe_cache *cache,
                                            const char *name,
                                            uint8_t *data,
                                            size_t len);

/*
 Step 1 of MoE layer `layer` (build_moe_ffn's `ffn_moe_probs`): the router's probabilities
 for the batch, `n_probs` floats (n_expert per token), and the router's input, `n_gate_input`
 floats (n_embd per token; NULL and 0 when the host does not have it), from which the next
 layers' experts are guessed. Both are copied.
 */
switchyard_result switchyard_moe_cache_eval_probs(const switchyard_moe_cache *cache,
                                                  uint32_t layer,
                                                  const float *probs,
                                                  size_t n_probs,
                                                  const float *gate_input,
                                                  size_t n_gate_input);

/*
 Step 2 of MoE layer `layer` (`ffn_moe_topk`): the experts the router picked, `n_picks`
 values, `n_used` per token. When this returns, every pick that is not skipped is in memory,
 and the experts the next layers' routers pick for the layer's input are being read in the
 background. Without step 1, every pick weighs the same. A failure means the layer cannot
 run; a failure to read ahead does not fail the call (prefetching stops, and the reason is
 printed to stderr).
 */
switchyard_result switchyard_moe_cache_eval_topk(const switchyard_moe_cache *cache,
                                                 uint32_t layer,
                                                 uint32_t n_used,
                                                 const int32_t *experts,
                                                 size_t n_picks);

/*
 Step 3 of MoE layer `layer` (`ffn_moe_weights`): the picks' gate weights, `n_weights`
 floats in the order of step 2. The weights of skipped picks are set to zero in place;
 `*changed` says whether any was (the host then writes them back to its tensor).
 */
switchyard_result switchyard_moe_cache_eval_weights(const switchyard_moe_cache *cache,
                                                    uint32_t layer,
                                                    float *weights,
                                                    size_t n_weights,
                                                    bool *changed);

/*
 Copy the cache's counters into `*out`.
 */
switchyard_result switchyard_moe_cache_get_stats(const switchyard_moe_cache *cache,
                                                 switchyard_moe_cache_stats *out);

/*
 Release a cache from `switchyard_moe_cache_init` (waiting for its reads ahead). NULL is
 ignored.
 */
void switchyard_moe_cache_free(switchyard_moe_cache *cache);

/*
 Create (truncate) the trace at `path` for a model of `n_layers` MoE layers of `n_experts`
 experts. On success `*out` receives a handle to end with `switchyard_trace_finish` and
 release with `switchyard_trace_free`.
 */
switchyard_result switchyard_trace_init(const char *path,
                                        uint32_t n_layers,
                                        uint32_t n_experts,
                                        switchyard_trace **out);

/*
 Record layer `layer` of one batch: `n_tokens` tokens, `experts[t * n_used + i]` token t's i-th
 expert and `weights[...]` its gate weight. `rows` is NULL when the layer ran for every token
 of the batch, else `rows[t]` is token t's index in the batch (llama.cpp's last layer runs only
 for output tokens). A token's lines are written once every layer of its batch is in. After a
 failed call the trace is stopped: later calls fail.
 */
switchyard_result switchyard_trace_layer(const switchyard_trace *trace,
                                         uint32_t layer,
                                         uint32_t n_used,
                                         uint32_t n_tokens,
                                         const int32_t *experts,
                                         const float *weights,
                                         const int32_t *rows);

/*
 Flush and close the trace file. Fails when writing fails, when a `switchyard_trace_layer`
 call failed before (the file then holds the batches completed until then) or when called
 twice. Call it before `switchyard_trace_free`.
 */
switchyard_result switchyard_trace_finish(const switchyard_trace *trace);

/*
 Release a trace from `switchyard_trace_init`. NULL is ignored. Without
 `switchyard_trace_finish` before, the batches completed so far are flushed and any error
 doing so is dropped.
 */
void switchyard_trace_free(switchyard_trace *trace);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SWITCHYARD_H */
