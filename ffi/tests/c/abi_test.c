/* Exercises the switchyard C ABI from C: version check, expert listing, binding host
 * tensors, switching, and the error paths. Usage: abi_test BUNDLE TENSOR...
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

    switchyard_model * model = NULL;
    CHECK(switchyard_model_init(NULL, &model) == SWITCHYARD_RESULT_NULL_ARGUMENT && model == NULL);
    CHECK(switchyard_model_init("/nonexistent/bundle.gguf", &model) == SWITCHYARD_RESULT_IO && model == NULL);
    char detail[512];
    CHECK(switchyard_last_error(detail, sizeof detail) > 0 && strstr(detail, "/nonexistent/bundle.gguf") != NULL);
    CHECK(switchyard_model_init(argv[1], &model) == SWITCHYARD_RESULT_OK && model != NULL);

    uint32_t n_experts = switchyard_model_n_experts(model);
    CHECK(n_experts == 2);
    char name[64];
    size_t name_len = 0;
    CHECK(switchyard_model_expert_name(model, 0, name, sizeof name, &name_len) == SWITCHYARD_RESULT_OK);
    CHECK(strcmp(name, "math") == 0 && name_len == 4);
    CHECK(switchyard_model_expert_name(model, 1, name, 3, &name_len) == SWITCHYARD_RESULT_BUFFER_TOO_SMALL && name_len == 4);
    CHECK(switchyard_model_expert_name(model, 2, name, sizeof name, NULL) == SWITCHYARD_RESULT_NOT_FOUND);
    CHECK(switchyard_model_current_expert(model, name, sizeof name, NULL) == SWITCHYARD_RESULT_OK && strcmp(name, "base") == 0);

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
    CHECK(switchyard_model_bind(model, "not.a.tensor", &tensors[0]) == SWITCHYARD_RESULT_INVALID);
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
        CHECK(switchyard_model_current_expert(model, name, sizeof name, NULL) == SWITCHYARD_RESULT_OK && strcmp(name, order[k]) == 0);
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

    switchyard_model_free(model);
    switchyard_model_free(NULL);
    for (int i = 0; i < n; i++) {
        free(tensors[i].data);
    }
    return 0;
}
