/* Expert switch latency next to loading the same expert as a standalone GGUF, same build, same
 * run. Loads are measured with the file in the page cache (the best case for reloading).
 *
 *   switchyard_bench BUNDLE ROUNDS NAME=EXTRACTED.gguf [NAME=EXTRACTED.gguf ...]
 *
 * Each round switches the bundle to every NAME in turn, then loads every EXTRACTED.gguf (model
 * and context, as a server would to serve it). Prints medians and their ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "llama-switchyard.h"

#include "example-common.h"

#define MAX_EXPERTS 16
#define MAX_ROUNDS 64

static struct llama_context * make_context(struct llama_model * model) {
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 512;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    return llama_init_from_model(model, cparams);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BUNDLE ROUNDS NAME=EXTRACTED.gguf...\n", argv[0]);
        return 2;
    }
    const int rounds = atoi(argv[2]);
    const int n = argc - 3;
    if (rounds < 1 || rounds > MAX_ROUNDS || n > MAX_EXPERTS) {
        fprintf(stderr, "1..%d rounds and at most %d experts\n", MAX_ROUNDS, MAX_EXPERTS);
        return 2;
    }
    char names[MAX_EXPERTS][64];
    const char * paths[MAX_EXPERTS];
    for (int i = 0; i < n; i++) {
        const char * eq = strchr(argv[i + 3], '=');
        if (eq == NULL || eq - argv[i + 3] >= 64) {
            fprintf(stderr, "'%s' is not NAME=PATH\n", argv[i + 3]);
            return 2;
        }
        snprintf(names[i], sizeof(names[i]), "%.*s", (int) (eq - argv[i + 3]), argv[i + 3]);
        paths[i] = eq + 1;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    const int64_t t_open = llama_time_us();
    struct llama_model * bundle = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (bundle == NULL) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context * ctx = make_context(bundle);
    const double open_ms = (llama_time_us() - t_open) / 1000.0;

    double switch_ms[MAX_EXPERTS][MAX_ROUNDS], load_ms[MAX_EXPERTS][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            const int64_t t0 = llama_time_us();
            if (llama_switchyard_set_expert(ctx, names[i]) != 0) {
                fprintf(stderr, "cannot switch to '%s'\n", names[i]);
                return 1;
            }
            switch_ms[i][r] = (llama_time_us() - t0) / 1000.0;
        }
        for (int i = 0; i < n; i++) {
            const int64_t t0 = llama_time_us();
            struct llama_model * m = llama_model_load_from_file(paths[i], llama_model_default_params());
            struct llama_context * c = m ? make_context(m) : NULL;
            if (c == NULL) {
                fprintf(stderr, "cannot load %s\n", paths[i]);
                return 1;
            }
            load_ms[i][r] = (llama_time_us() - t0) / 1000.0;
            llama_free(c);
            llama_model_free(m);
        }
    }
    printf("bundle %s opened (model + context) in %.1f ms; medians over %d rounds\n", argv[1], open_ms, rounds);
    printf("%-12s %12s %14s %10s\n", "expert", "switch ms", "load gguf ms", "load/switch");
    for (int i = 0; i < n; i++) {
        const double s = median(switch_ms[i], rounds), l = median(load_ms[i], rounds);
        printf("%-12s %12.2f %14.2f %10.1f\n", names[i], s, l, l / s);
    }
    llama_free(ctx);
    llama_model_free(bundle);
    llama_backend_free();
    return 0;
}
