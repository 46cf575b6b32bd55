/* Routes prompts through the switchyard C ABI. Usage: route_test BUNDLE TOKENS...
 * where each TOKENS is a comma-separated list of token ids ("" for an empty prompt).
 * Prints "EXPERT CONFIDENCE" per prompt with the bundle's threshold, then the same with
 * threshold 2 (always base), for the Rust side to compare. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "switchyard.h"

#define MAX_TOKENS 256

static size_t parse_tokens(const char * s, int32_t * out) {
    size_t n = 0;
    while (*s) {
        char * end = NULL;
        long v = strtol(s, &end, 10);
        CHECK(end != s && n < MAX_TOKENS);
        out[n++] = (int32_t) v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char ** argv) {
    CHECK(argc >= 2);
    switchyard_model * model = NULL;
    CHECK(switchyard_model_init(argv[1], &model) == SWITCHYARD_RESULT_OK);
    CHECK(switchyard_model_has_router(model) == 1);

    int32_t expert = 7;
    float confidence = -1.0f;
    const int32_t some[] = {1, 2};
    CHECK(switchyard_model_route(NULL, some, 2, -1.0f, &expert, &confidence) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_model_route(model, some, 2, -1.0f, NULL, &confidence) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_model_route(model, NULL, 2, -1.0f, &expert, &confidence) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    /* a token outside the vocabulary is an error naming it, not a read out of bounds */
    const int32_t outside[] = {1, 1 << 30};
    CHECK(switchyard_model_route(model, outside, 2, -1.0f, &expert, &confidence) == SWITCHYARD_RESULT_INVALID);
    char detail[512];
    switchyard_last_error(detail, sizeof detail);
    CHECK(strstr(detail, "1073741824") != NULL);
    /* the confidence is optional */
    CHECK(switchyard_model_route(model, some, 2, -1.0f, &expert, NULL) == SWITCHYARD_RESULT_OK);

    const float thresholds[] = {-1.0f, 2.0f};
    for (int t = 0; t < 2; t++) {
        for (int i = 2; i < argc; i++) {
            int32_t tokens[MAX_TOKENS];
            size_t n = parse_tokens(argv[i], tokens);
            CHECK(switchyard_model_route(model, tokens, n, thresholds[t], &expert, &confidence) == SWITCHYARD_RESULT_OK);
            printf("%d %.9g\n", expert, confidence);
        }
    }
    switchyard_model_free(model);
    return 0;
}
