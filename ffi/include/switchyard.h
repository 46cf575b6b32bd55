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
#define SWITCHYARD_ABI_VERSION 3

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
   The caller's buffer is too small; the needed length was reported.
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
 A capture being recorded.
 */
typedef struct switchyard_capture switchyard_capture;

/*
 A bundle opened for switching. Thread-safe: calls on one model are serialised.
 */
typedef struct switchyard_model switchyard_model;

/*
 An open expert store.
 */
typedef struct switchyard_moe_cache switchyard_moe_cache;

/*
 An open trace file.
 */
typedef struct switchyard_trace switchyard_trace;

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
 What the cache did so far.
 */
typedef struct {
  /*
   Picks served from memory, read from the file (of them, from low-precision copies: t1),
   and skipped (t2 or beta).
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
   Experts read ahead by `switchyard_moe_cache_prefetch`, and those of them a pick then used
   (also counted in `hits`).
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
 `switchyard_capture_free`. On success `*out` receives the handle.
 */
switchyard_result switchyard_capture_init(const char *path,
                                          uint32_t n_layers,
                                          uint32_t n_embd,
                                          switchyard_capture **out);

/*
 Append `n_rows` rows of `n_embd` floats (`data`, row after row) to layer `layer`.
 */
switchyard_result switchyard_capture_layer(const switchyard_capture *capture,
                                           uint32_t layer,
                                           uint32_t n_rows,
                                           uint32_t n_embd,
                                           const float *data);

/*
 Write the capture to its file (nothing is written if a layer call failed) and release the
 handle. NULL is ignored.
 */
switchyard_result switchyard_capture_free(switchyard_capture *capture);

/*
 A static, NUL-terminated description of `result`. Never NULL.
 */
const char *switchyard_result_str(switchyard_result result);

/*
 Copy the calling thread's last error detail (which file, tensor or key, and why) into
 `buf` of `len` bytes, NUL-terminated and truncated to fit; returns the detail's full length
 in bytes without the NUL (0 when there was none). `buf` may be NULL when `len` is 0.
 */
size_t switchyard_last_error(char *buf, size_t len);

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
 Name of expert `index` (0-based) into `buf` (`len` bytes, NUL-terminated); its length
 without the NUL goes to `*out_len` when `out_len` is not NULL, also when `buf` is too small.
 */
switchyard_result switchyard_model_expert_name(const switchyard_model *model,
                                               uint32_t index,
                                               char *buf,
                                               size_t len,
                                               size_t *out_len);

/*
 Name of the expert the bound tensors hold ("base" before any switch or after switching
 back), same buffer rules as `switchyard_model_expert_name`.
 */
switchyard_result switchyard_model_current_expert(const switchyard_model *model,
                                                  char *buf,
                                                  size_t len,
                                                  size_t *out_len);

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
 Open the mixture-of-experts GGUF at `path` for offloading. `budget` is bytes ("512M", "2G",
 "1073741824") or a share of all expert bytes ("25%"); `policy` is "lru", "lfu", "hobbit" or
 "hobbit:w_lru,w_lfu,w_lhu,w_fld". On a miss, a pick whose unimportance (the share of the
 token's pick weight ranked above it) exceeds `t2` is not read, one above `t1` is read from
 its low-precision copy (`switchyard moe-pack`); 1 and 1 read everything in high precision.
 `skip_beta` also skips a later pick weighing less than the layer's beta (stored by
 `moe-pack --trace`) times the first's.
 */
switchyard_result switchyard_moe_cache_init(const char *path,
                                            const char *budget,
                                            const char *policy,
                                            float t1,
                                            float t2,
                                            bool skip_beta,
                                            switchyard_moe_cache **out);

/*
 1 when tensor `name` is an expert tensor the cache fills (the host allocates it in plain,
 writable host memory and does not read it), 0 if not or NULL.
 */
uint32_t switchyard_moe_cache_manages(const switchyard_moe_cache *cache, const char *name);

/*
 Hand over the host memory of expert tensor `name` (`len` bytes): from now on the cache fills
 and empties it. It must stay valid until `switchyard_moe_cache_free`.
 */
switchyard_result switchyard_moe_cache_bind(const switchyard_moe_cache *cache,
                                            const char *name,
                                            uint8_t *data,
                                            size_t len);

/*
 Before layer `layer`'s experts run: `experts[t * n_used + i]` is token t's i-th pick
 (`n_tokens` tokens), `probs[t * n_expert + e]` (NULL: equal weights) the router probability
 of expert e for token t. Every pick not skipped is in memory when this returns;
 `dropped[t * n_used + i]` (NULL: not wanted) is set to 1 for a pick that was skipped, whose
 gate weight the host should zero, and 0 for the others.
 */
switchyard_result switchyard_moe_cache_prepare(const switchyard_moe_cache *cache,
                                               uint32_t layer,
                                               uint32_t n_used,
                                               uint32_t n_tokens,
                                               const int32_t *experts,
                                               const float *probs,
                                               uint32_t n_expert,
                                               uint8_t *dropped);

/*
 After `switchyard_moe_cache_prepare` for layer `layer`: `x` holds its `n_tokens` tokens'
 gate input (the router's input, `n_embd` floats per token). Starts reading, in the
 background, the experts that the routers of layers `layer + 1 ..= layer + depth` pick for
 `x` (`n_used` per token), as far as the cache has room besides `layer`'s picks. Returns at
 once; the preparation of a later layer waits for the reads meant for it. Batches of more
 than a few tokens (a prompt) are not prefetched for.
 */
switchyard_result switchyard_moe_cache_prefetch(const switchyard_moe_cache *cache,
                                                uint32_t layer,
                                                uint32_t depth,
                                                uint32_t n_used,
                                                uint32_t n_tokens,
                                                const float *x,
                                                uint32_t n_embd);

/*
 Copy the cache's counters into `*out`.
 */
switchyard_result switchyard_moe_cache_get_stats(const switchyard_moe_cache *cache,
                                                 switchyard_moe_cache_stats *out);

/*
 Release a cache from `switchyard_moe_cache_init`. NULL is ignored.
 */
switchyard_result switchyard_moe_cache_free(switchyard_moe_cache *cache);

/*
 Create (truncate) the trace at `path` for a model of `n_layers` MoE layers of `n_experts`
 experts. On success `*out` receives a handle to release with `switchyard_trace_free`.
 */
switchyard_result switchyard_trace_init(const char *path,
                                        uint32_t n_layers,
                                        uint32_t n_experts,
                                        switchyard_trace **out);

/*
 Record layer `layer` of one batch: `n_tokens` tokens, `experts[t * n_used + i]` token t's i-th
 expert and `weights[...]` its gate weight. `rows` is NULL when the layer ran for every token
 of the batch, else `rows[t]` is token t's index in the batch (llama.cpp's last layer runs only
 for output tokens). A token's lines are written once every layer of its batch is in.
 */
switchyard_result switchyard_trace_layer(const switchyard_trace *trace,
                                         uint32_t layer,
                                         uint32_t n_used,
                                         uint32_t n_tokens,
                                         const int32_t *experts,
                                         const float *weights,
                                         const int32_t *rows);

/*
 Flush and close a trace from `switchyard_trace_init`. NULL is ignored.
 */
switchyard_result switchyard_trace_free(switchyard_trace *trace);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SWITCHYARD_H */
