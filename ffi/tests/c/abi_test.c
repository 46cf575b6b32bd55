/* Exercises the switchyard C ABI from C: version check, result codes, expert listing, binding
 * host tensors, switching, the error paths, and a trace's finish and free. Usage: abi_test
 * BUNDLE TENSOR...
 * Prints "TENSOR EXPERT CHECKSUM" lines for the Rust side to compare. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "switchyard.h"

#define MAX_TENSORS 64

struct host_tensor {
    unsigned char * data;
    size_t size;
};

static int write_tensor(void * user, void * tensor, const void * data, size_t size) {
    int * writes = user;
    struct host_tensor * t = tensor;
    free(t->data);
    t->data = malloc(size);
    if (t->data == NULL) {
        return 1;
    }
    memcpy(t->data, data, size);
    t->size = size;
    (*writes)++;
    return 0;
}

static int refuse_write(void * user, void * tensor, const void * data, size_t size) {
    (void) user; (void) tensor; (void) data; (void) size;
    return 7;
}

/* Lends the tensor's memory, as a host with CPU tensors does: decoded in place. */
static void * lend_memory(void * user, void * tensor, size_t size) {
    struct host_tensor * t = tensor;
    (void) user;
    if (t->size != size) {
        free(t->data);
        t->data = malloc(size);
        t->size = size;
    }
    return t->data;
}

/* FNV-1a over the tensor's bytes. */
static unsigned long long checksum(const struct host_tensor * t) {
    unsigned long long h = 1469598103934665603ULL;
    for (size_t i = 0; i < t->size; i++) {
        h = (h ^ t->data[i]) * 1099511628211ULL;
    }
    return h;
}

int main(int argc, char ** argv) {
    CHECK(argc >= 3 && argc - 2 <= MAX_TENSORS);
    CHECK(switchyard_abi_version() == SWITCHYARD_ABI_VERSION);
    CHECK(strlen(switchyard_version()) > 0);
    /* result codes are plain integers: any value has a description, unknown ones say so */
    CHECK(strcmp(switchyard_result_str(SWITCHYARD_RESULT_OK), "ok") == 0);
    for (uint32_t code = SWITCHYARD_RESULT_OK; code <= SWITCHYARD_RESULT_PANIC; code++) {
        CHECK(strcmp(switchyard_result_str(code), "unknown result code") != 0);
    }
    CHECK(strcmp(switchyard_result_str(SWITCHYARD_RESULT_PANIC + 1), "unknown result code") == 0);
    CHECK(strcmp(switchyard_result_str(UINT32_MAX), "unknown result code") == 0);

    switchyard_model * model = NULL;
    CHECK(switchyard_model_init(NULL, &model) == SWITCHYARD_RESULT_NULL_ARGUMENT && model == NULL);
    CHECK(switchyard_model_init("/nonexistent/bundle.gguf", &model) == SWITCHYARD_RESULT_IO && model == NULL);
    char detail[512];
    CHECK(switchyard_last_error(detail, sizeof detail) > 0 && strstr(detail, "/nonexistent/bundle.gguf") != NULL);
    CHECK(switchyard_model_init(argv[1], &model) == SWITCHYARD_RESULT_OK && model != NULL);

    uint32_t n_experts = switchyard_model_n_experts(model);
    CHECK(n_experts == 2);
    /* Names are lent by the model: -1 is "base", then the experts in bundle order. */
    const char * math = switchyard_model_expert_name(model, 0);
    CHECK(math != NULL && strcmp(math, "math") == 0);
    CHECK(strcmp(switchyard_model_expert_name(model, 1), "code") == 0);
    CHECK(strcmp(switchyard_model_expert_name(model, -1), "base") == 0);
    CHECK(switchyard_model_expert_name(model, 2) == NULL && switchyard_model_expert_name(model, -2) == NULL);
    CHECK(switchyard_model_expert_name(NULL, 0) == NULL);
    int32_t current = 7;
    CHECK(switchyard_model_current_expert(model, &current) == SWITCHYARD_RESULT_OK && current == -1);
    CHECK(switchyard_model_current_expert(model, NULL) == SWITCHYARD_RESULT_NULL_ARGUMENT);

    int n = argc - 2;
    CHECK(switchyard_model_n_managed(model) == (uint32_t) n);
    struct host_tensor tensors[MAX_TENSORS];
    memset(tensors, 0, sizeof tensors);
    int writes = 0;
    const switchyard_host by_write = {NULL, write_tensor, &writes, NULL};
    const switchyard_host by_memory = {lend_memory, write_tensor, &writes, NULL};
    const switchyard_host refusing = {NULL, refuse_write, NULL, NULL};
    const switchyard_host no_write = {lend_memory, NULL, NULL, NULL};
    /* Switching before every managed weight is bound is refused. */
    CHECK(switchyard_model_set_expert(model, "math", &by_write) == SWITCHYARD_RESULT_INVALID);
    for (int i = 0; i < n; i++) {
        CHECK(switchyard_model_tensor_type(model, argv[i + 2]) >= 0);
        CHECK(switchyard_model_bind(model, argv[i + 2], &tensors[i]) == SWITCHYARD_RESULT_OK);
    }
    CHECK(switchyard_model_tensor_type(model, "not.a.tensor") == -1);
    CHECK(switchyard_model_bind(model, "not.a.tensor", &tensors[0]) == SWITCHYARD_RESULT_NOT_FOUND);
    CHECK(switchyard_model_set_expert(model, "physics", &by_write) == SWITCHYARD_RESULT_NOT_FOUND);
    switchyard_last_error(detail, sizeof detail);
    CHECK(strstr(detail, "physics") != NULL && strstr(detail, "math") != NULL);
    CHECK(switchyard_model_set_expert(model, "math", NULL) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_model_set_expert(model, "math", &no_write) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_model_set_expert(model, "code", &refusing) == SWITCHYARD_RESULT_CALLBACK_FAILED);

    /* Alternate the two ways of reaching the tensors: the results must not depend on it. */
    const char * order[] = {"math", "code", "math", "base"};
    for (int k = 0; k < 4; k++) {
        writes = 0;
        CHECK(switchyard_model_set_expert(model, order[k], k % 2 ? &by_memory : &by_write) == SWITCHYARD_RESULT_OK);
        CHECK(k % 2 ? writes == 0 : writes > 0);
        CHECK(switchyard_model_current_expert(model, &current) == SWITCHYARD_RESULT_OK);
        CHECK(strcmp(switchyard_model_expert_name(model, current), order[k]) == 0);
        /* the name lent before the switch still reads the same */
        CHECK(strcmp(math, "math") == 0);
        for (int i = 0; i < n; i++) {
            printf("%s %s %llu\n", argv[i + 2], order[k], checksum(&tensors[i]));
        }
    }
    /* Switching to the expert already in place writes nothing. */
    writes = 0;
    CHECK(switchyard_model_set_expert(model, "base", &by_write) == SWITCHYARD_RESULT_OK && writes == 0);

    /* This bundle has no router: routing says so instead of guessing. */
    int32_t routed = 0;
    const int32_t tokens[] = {1, 2, 3};
    CHECK(switchyard_model_has_router(model) == 0 && switchyard_model_has_router(NULL) == 0);
    CHECK(switchyard_model_route(model, tokens, 3, -1.0f, &routed, NULL) == SWITCHYARD_RESULT_NOT_FOUND);

    /* The deltas a host applies in its graph: the shape without converting, then the parts. */
    const char * w = "blk.0.attn_q.weight";
    CHECK(switchyard_model_in_graph(model, w) == 1 && switchyard_model_in_graph(model, "token_embd.weight") == 0);
    CHECK(switchyard_model_in_graph(NULL, w) == 0);
    int32_t type = -2;
    uint32_t n_salient = 999, rank = 999;
    CHECK(switchyard_model_graph_delta_shape(model, 0, w, -1, &type, &rank, &n_salient) == SWITCHYARD_RESULT_OK && type >= 0);
    CHECK(rank == 0); /* a codec delta */
    CHECK(switchyard_model_graph_delta_shape(model, 0, w, -1, NULL, &rank, &n_salient) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_model_graph_delta_shape(model, 0, w, -1, &type, NULL, &n_salient) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    switchyard_graph_delta * delta = NULL;
    CHECK(switchyard_model_graph_delta(model, 0, w, -1, &delta) == SWITCHYARD_RESULT_OK && delta != NULL);
    switchyard_graph_delta_parts parts;
    CHECK(switchyard_graph_delta_get_parts(delta, &parts) == SWITCHYARD_RESULT_OK);
    CHECK(parts.ggml_type == type && parts.n_salient == n_salient && parts.data != NULL && parts.data_size > 0);
    CHECK(parts.rank == 0 && parts.b == NULL && parts.b_size == 0);
    CHECK(parts.n_salient == 0 || (parts.salient_idx != NULL && parts.salient != NULL));
    CHECK(switchyard_graph_delta_get_parts(NULL, &parts) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    switchyard_graph_delta_free(delta);
    switchyard_graph_delta_free(NULL);
    CHECK(switchyard_model_graph_delta(model, 9, w, -1, &delta) == SWITCHYARD_RESULT_NOT_FOUND);
    CHECK(switchyard_model_graph_delta(model, 0, w, 100000, &delta) == SWITCHYARD_RESULT_INVALID);
    /* a tensor switched in place, or unknown: no delta in the graph's form, and no error */
    delta = (switchyard_graph_delta *) &type;
    CHECK(switchyard_model_graph_delta(model, 0, "token_embd.weight", -1, &delta) == SWITCHYARD_RESULT_OK && delta == NULL);
    CHECK(switchyard_model_graph_delta(model, 0, "not.a.tensor", -1, &delta) == SWITCHYARD_RESULT_OK && delta == NULL);
    switchyard_model_release_resident(model);
    switchyard_model_release_resident(NULL);

    switchyard_model_free(model);
    switchyard_model_free(NULL);
    for (int i = 0; i < n; i++) {
        free(tensors[i].data);
    }

    /* A trace reports writing its file from _finish; _free only releases, and takes NULL. */
    char trace_path[4096];
    CHECK(snprintf(trace_path, sizeof trace_path, "%s.trace.jsonl", argv[1]) < (int) sizeof trace_path);
    switchyard_trace * trace = NULL;
    CHECK(switchyard_trace_init(trace_path, 1, 4, &trace) == SWITCHYARD_RESULT_OK && trace != NULL);
    const int32_t picks[] = {3};
    const float weights[] = {1.0f};
    CHECK(switchyard_trace_layer(trace, 0, 1, 1, picks, weights, NULL) == SWITCHYARD_RESULT_OK);
    CHECK(switchyard_trace_finish(trace) == SWITCHYARD_RESULT_OK);
    CHECK(switchyard_trace_finish(trace) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_trace_layer(trace, 0, 1, 1, picks, weights, NULL) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_trace_finish(NULL) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    switchyard_trace_free(trace);
    switchyard_trace_free(NULL);
    FILE * f = fopen(trace_path, "r");
    CHECK(f != NULL);
    CHECK(fgetc(f) != EOF);
    fclose(f);
    return 0;
}
