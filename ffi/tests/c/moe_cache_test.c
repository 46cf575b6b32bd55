/* Offloads a MoE GGUF's experts through the switchyard C ABI, as llama.cpp's --moe-cache does.
 * Usage: moe_cache_test MOE.gguf N_LAYERS N_EXPERT N_EMBD TENSOR_BYTES...
 * where TENSOR_BYTES are the sizes of blk.L.ffn_{gate,up,down}_exps.weight, layer by layer.
 * Binds malloc'd memory for every stacked expert tensor and routes one token through every
 * layer twice: with a cache of nothing, then with room for everything and prefetching (a zero
 * gate input, for which every router ranks experts 0 and 1 first). Prints, per layer and kind,
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

/* One token, top-2, through every layer: picks l % n and (l + 1) % n; with a gate input x, each
 * layer then prefetches for the next. */
static void route_one_token(switchyard_moe_cache * cache, uint8_t ** memory, const size_t * bytes, int n_layers,
                            int n_expert, const float * x, int n_embd) {
    for (int l = 0; l < n_layers; l++) {
        const int32_t picks[2] = {l % n_expert, (l + 1) % n_expert};
        uint8_t dropped[2] = {7, 7};
        CHECK(switchyard_moe_cache_prepare(cache, (uint32_t) l, 2, 1, picks, NULL, 0, dropped) == SWITCHYARD_RESULT_OK);
        CHECK(dropped[0] == 0 && dropped[1] == 0); /* no thresholds: nothing is skipped */
        for (int k = 0; k < 3; k++) {
            const size_t per = bytes[3 * l + k] / (size_t) n_expert;
            for (int p = 0; p < 2; p++) {
                printf("%d %s %d %llu\n", l, KINDS[k], picks[p],
                       (unsigned long long) fnv1a(memory[3 * l + k] + (size_t) picks[p] * per, per));
            }
        }
        if (x != NULL) {
            CHECK(switchyard_moe_cache_prefetch(cache, (uint32_t) l, 1, 2, 1, x, (uint32_t) n_embd) == SWITCHYARD_RESULT_OK);
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

int main(int argc, char ** argv) {
    CHECK(argc >= 5);
    const int n_layers = atoi(argv[2]), n_expert = atoi(argv[3]), n_embd = atoi(argv[4]);
    CHECK(n_layers > 0 && n_expert > 1 && n_embd > 0 && argc == 5 + 3 * n_layers);
    float * x = calloc((size_t) n_embd, sizeof *x);
    CHECK(x != NULL);

    switchyard_moe_cache * cache = NULL;
    CHECK(switchyard_moe_cache_init(argv[1], "lots", "lru", 1.0f, 1.0f, false, &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(argv[1], "50%", "belady", 1.0f, 1.0f, false, &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(NULL, "50%", "lru", 1.0f, 1.0f, false, &cache) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_init(argv[1], "50%", "lru", 1.0f, 1.5f, false, &cache) == SWITCHYARD_RESULT_INVALID);
    /* low-precision loads and beta need what moe-pack adds, which this model lacks */
    CHECK(switchyard_moe_cache_init(argv[1], "50%", "lru", 0.6f, 0.9f, false, &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_init(argv[1], "50%", "lru", 1.0f, 1.0f, true, &cache) == SWITCHYARD_RESULT_INVALID);
    CHECK(cache == NULL);
    CHECK(switchyard_moe_cache_init(argv[1], "0", "hobbit", 1.0f, 1.0f, false, &cache) == SWITCHYARD_RESULT_OK && cache != NULL);
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

    route_one_token(cache, memory, bytes, n_layers, n_expert, NULL, 0);
    const int32_t outside[2] = {0, n_expert};
    CHECK(switchyard_moe_cache_prepare(cache, 0, 2, 1, outside, NULL, 0, NULL) == SWITCHYARD_RESULT_INVALID);
    CHECK(switchyard_moe_cache_prepare(cache, 0, 2, 1, NULL, NULL, 0, NULL) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    print_stats(cache);
    CHECK(switchyard_moe_cache_free(cache) == SWITCHYARD_RESULT_OK);
    CHECK(switchyard_moe_cache_free(NULL) == SWITCHYARD_RESULT_OK);

    /* the same memory, rebound to a cache of everything that reads ahead */
    cache = NULL;
    CHECK(switchyard_moe_cache_init(argv[1], "100%", "lru", 1.0f, 1.0f, false, &cache) == SWITCHYARD_RESULT_OK);
    for (int l = 0; l < n_layers; l++) {
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, KINDS[k]);
            CHECK(switchyard_moe_cache_bind(cache, name, memory[3 * l + k], bytes[3 * l + k]) == SWITCHYARD_RESULT_OK);
        }
    }
    CHECK(switchyard_moe_cache_prefetch(cache, 0, 1, 2, 1, NULL, (uint32_t) n_embd) == SWITCHYARD_RESULT_NULL_ARGUMENT);
    CHECK(switchyard_moe_cache_prefetch(cache, 0, 1, 2, 1, x, (uint32_t) n_embd + 1) == SWITCHYARD_RESULT_INVALID);
    route_one_token(cache, memory, bytes, n_layers, n_expert, x, n_embd);
    print_stats(cache);
    CHECK(switchyard_moe_cache_free(cache) == SWITCHYARD_RESULT_OK);
    free(x);
    for (int i = 0; i < 3 * n_layers; i++) {
        free(memory[i]);
    }
    free(memory);
    free(bytes);
    return 0;
}
