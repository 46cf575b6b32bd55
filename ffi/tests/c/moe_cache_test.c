/* Drives a MoE cache through the switchyard C ABI, as llama.cpp's --moe-cache does.
 * Usage: moe_cache_test MOE.gguf N_LAYERS N_EXPERT N_EMBD TENSOR_BYTES...
 * where TENSOR_BYTES are the sizes of blk.L.ffn_{gate,up,down}_exps.weight, layer by layer.
 * Binds malloc'd memory for every stacked expert tensor and routes one token through every
 * layer twice, forwarding each layer's router probabilities, picks and gate weights: with a
 * cache of nothing, then with room for everything and reading one layer ahead (a zero gate
 * input, for which every router ranks experts 0 and 1 first). Prints, per layer and kind,
 * "L KIND E FNV1A" for the picked experts' bytes (the Rust side compares them with the file),
 * then each pass's counters. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "switchyard.h"

static const char * KINDS[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};

static uint64_t fnv1a(const uint8_t * p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

/* One token, top-2, through every layer: picks l % n and (l + 1) % n with router probabilities
 * `probs`; with a gate input x, each layer reads ahead for the next. */
static void route_one_token(switchyard_moe_cache * cache, uint8_t ** memory, const size_t * bytes, int n_layers,
                            int n_expert, const float * probs, const float * x, int n_embd) {
    for (int l = 0; l < n_layers; l++) {
        const int32_t picks[2] = {l % n_expert, (l + 1) % n_expert};
        CHECK(switchyard_moe_cache_eval_probs(cache, (uint32_t) l, probs, (size_t) n_expert, x,
                                              x != NULL ? (size_t) n_embd : 0) == SWITCHYARD_RESULT_OK);
        CHECK(switchyard_moe_cache_eval_topk(cache, (uint32_t) l, 2, picks, 2) == SWITCHYARD_RESULT_OK);
        float weights[2] = {0.5f, 0.5f};
        bool changed = true;
        CHECK(switchyard_moe_cache_eval_weights(cache, (uint32_t) l, weights, 2, &changed) == SWITCHYARD_RESULT_OK);
        /* no thresholds: nothing is skipped */
        CHECK(!changed && weights[0] == 0.5f && weights[1] == 0.5f);
        for (int k = 0; k < 3; k++) {
            const size_t per = bytes[3 * l + k] / (size_t) n_expert;
            for (int p = 0; p < 2; p++) {
                printf("%d %s %d %llu\n", l, KINDS[k], picks[p],
                       (unsigned long long) fnv1a(memory[3 * l + k] + (size_t) picks[p] * per, per));
            }
        }
    }
}

static void print_stats(const switchyard_moe_cache * cache) {
    switchyard_moe_cache_stats stats;
    CHECK(switchyard_moe_cache_get_stats(cache, &stats) == SWITCHYARD_RESULT_OK);
    printf("loads %llu budget %llu prefetched %llu prefetch_hits %llu\n", (unsigned long long) stats.loads,
           (unsigned long long) stats.budget, (unsigned long long) stats.prefetched,
           (unsigned long long) stats.prefetch_hits);
}

/* The default parameters with the budget, policy and thresholds changed. */
static switchyard_moe_cache_params params_with(const char * budget, const char * policy, float t1, float t2,
                                               bool skip_beta) {
    switchyard_moe_cache_params params = switchyard_moe_cache_default_params();
    params.budget = budget;
    params.policy = policy;
    params.t1 = t1;
    params.t2 = t2;
    params.skip_beta = skip_beta;
    return params;
}

int main(int argc, char ** argv) {
    CHECK(argc >= 5);
    const int n_layers = atoi(argv[2]), n_expert = atoi(argv[3]), n_embd = atoi(argv[4]);
    CHECK(n_layers > 0 && n_expert > 1 && n_embd > 0 && argc == 5 + 3 * n_layers);
    /* one spare float: a call that claims one more than n_embd reads no further than that */
    float * x = calloc((size_t) n_embd + 1, sizeof *x);
    float * even = malloc((size_t) n_expert * sizeof *even);
    CHECK(x != NULL && even != NULL);
    for (int e = 0; e < n_expert; e++) {
        even[e] = 1.0f / (float) n_expert;
    }

    const switchyard_moe_cache_params defaults = switchyard_moe_cache_default_params();
    CHECK(strcmp(defaults.budget, "100%") == 0 && strcmp(defaults.policy, "lru") == 0);
    CHECK(defaults.t1 == 1.0f && defaults.t2 == 1.0f && !defaults.skip_beta && defaults.prefetch == 0);

    switchyard_moe_cache * cache = NULL;
    CHECK(switchyard_moe_cache_init(argv[1], params_with("lots", "lru", 1, 1, false), &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(argv[1], params_with("50%", "belady", 1, 1, false), &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(NULL, defaults, &cache) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_init(argv[1], params_with(NULL, "lru", 1, 1, false), &cache) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_init(argv[1], params_with("50%", "lru", 1, 1.5f, false), &cache) == SWITCHYARD_RESULT_INVALID);
    /* low-precision loads and beta need what moe-pack adds, which this model lacks */
    CHECK(switchyard_moe_cache_init(argv[1], params_with("50%", "lru", 0.6f, 0.9f, false), &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(argv[1], params_with("50%", "lru", 1, 1, true), &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(cache == NULL);
    CHECK(switchyard_moe_cache_init(argv[1], params_with("0", "hobbit", 1, 1, false), &cache) == SWITCHYARD_RESULT_OK && cache != NULL);
    CHECK(switchyard_moe_cache_manages(cache, "token_embd.weight") == 0);
    CHECK(switchyard_moe_cache_manages(NULL, "blk.0.ffn_up_exps.weight") == 0);

    uint8_t ** memory = calloc((size_t) (3 * n_layers), sizeof *memory);
    size_t * bytes = calloc((size_t) (3 * n_layers), sizeof *bytes);
    CHECK(memory && bytes);
    char name[128];
    for (int l = 0; l < n_layers; l++) {
        for (int k = 0; k < 3; k++) {
            const int i = 3 * l + k;
            bytes[i] = (size_t) strtoull(argv[5 + i], NULL, 10);
            memory[i] = malloc(bytes[i]);
            CHECK(memory[i] != NULL);
            memset(memory[i], 0xAB, bytes[i]);
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, KINDS[k]);
            CHECK(switchyard_moe_cache_manages(cache, name) == 1);
            CHECK(switchyard_moe_cache_bind(cache, name, memory[i], bytes[i] - 1) == SWITCHYARD_RESULT_INVALID);
            CHECK(switchyard_moe_cache_bind(cache, name, memory[i], bytes[i]) == SWITCHYARD_RESULT_OK);
        }
    }

    route_one_token(cache, memory, bytes, n_layers, n_expert, even, NULL, 0);
    const int32_t outside[2] = {0, n_expert};
    CHECK(switchyard_moe_cache_eval_topk(cache, 0, 2, outside, 2) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_eval_topk(cache, 0, 2, NULL, 2) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_eval_topk(cache, (uint32_t) n_layers, 2, outside, 2) == SWITCHYARD_RESULT_INVALID);
    float weights[2] = {0.5f, 0.5f};
    bool changed = false;
    CHECK(switchyard_moe_cache_eval_weights(cache, 0, NULL, 2, &changed) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_eval_weights(cache, 0, weights, 2, NULL) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    print_stats(cache);
    switchyard_moe_cache_free(cache);
    switchyard_moe_cache_free(NULL);

    /* the same memory, rebound to a cache of everything that reads one layer ahead */
    cache = NULL;
    switchyard_moe_cache_params ahead = defaults;
    ahead.prefetch = 1;
    CHECK(switchyard_moe_cache_init(argv[1], ahead, &cache) == SWITCHYARD_RESULT_OK);
    for (int l = 0; l < n_layers; l++) {
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, KINDS[k]);
            CHECK(switchyard_moe_cache_bind(cache, name, memory[3 * l + k], bytes[3 * l + k]) == SWITCHYARD_RESULT_OK);
        }
    }
    CHECK(switchyard_moe_cache_eval_probs(cache, 0, even, 1, NULL, 0) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_eval_probs(cache, 0, NULL, (size_t) n_expert, NULL, 0) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_eval_probs(cache, 0, even, (size_t) n_expert, NULL, (size_t) n_embd) ==
          SWITCHYARD_RESULT_NULL_ARGUMENT);
    route_one_token(cache, memory, bytes, n_layers, n_expert, even, x, n_embd);
    print_stats(cache);
    /* a gate input that is not whole rows only feeds guesses: prefetching stops, the layer runs */
    CHECK(switchyard_moe_cache_eval_probs(cache, 0, even, (size_t) n_expert, x, (size_t) n_embd + 1) ==
          SWITCHYARD_RESULT_OK);
    switchyard_moe_cache_free(cache);
    free(x);
    free(even);
    for (int i = 0; i < 3 * n_layers; i++) {
        free(memory[i]);
    }
    free(memory);
    free(bytes);
    return 0;
}
