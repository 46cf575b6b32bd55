/* What routing costs next to the prefill it precedes, same build, same run, same prompts.
 *
 *   switchyard_route_bench BUNDLE PROMPTS.tsv [THREADS]
 *
 * PROMPTS.tsv holds one prompt per line, "LABEL<TAB>TEXT", with "\n", "\t" and "\\" escaped in
 * TEXT (scripts/bench-route.sh writes it from the routing sets). For every prompt: tokenize the
 * text and route it (what llama-server does for "model": "auto"), then prefill the same tokens
 * into an empty cache. Prints the routing accuracy against LABEL, the total and median times, and
 * routing time / prefill time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "llama-switchyard.h"

#include "example-common.h"

#define MAX_PROMPTS 4096
#define MAX_LINE (1 << 16)

/* undo the TSV escapes in place */
static void unescape(char * s) {
    char * out = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *out++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BUNDLE PROMPTS.tsv [THREADS]\n", argv[0]);
        return 2;
    }
    const int n_threads = argc > 3 ? atoi(argv[3]) : 2;
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mparams = llama_model_default_params();
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model || !llama_switchyard_has_router(model)) {
        fprintf(stderr, "%s: not a switchyard bundle with a router\n", argv[1]);
        return 1;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 4096;
    cparams.n_batch = 4096;
    cparams.n_ubatch = 512;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    FILE * f = fopen(argv[2], "r");
    if (!f || !ctx) {
        fprintf(stderr, "cannot open %s or create a context\n", argv[2]);
        return 1;
    }
    static char line[MAX_LINE];
    static double t_route[MAX_PROMPTS], t_prefill[MAX_PROMPTS], ratio[MAX_PROMPTS];
    static llama_token tokens[MAX_LINE];
    int n = 0, right = 0;
    long n_tokens = 0;
    double sum_route = 0, sum_prefill = 0;
    while (n < MAX_PROMPTS && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char * text = strchr(line, '\t');
        if (!text) {
            continue;
        }
        *text++ = '\0';
        unescape(text);

        /* routing as the server does it: tokenize the user's text, route, look up the name */
        const int64_t t0 = ggml_time_us();
        float confidence = 0.0f;
        const char * expert = llama_switchyard_route_text(model, text, -1.0f, &confidence);
        const int64_t t1 = ggml_time_us();
        if (!expert) {
            fprintf(stderr, "routing failed on line %d\n", n + 1);
            return 1;
        }
        right += strcmp(expert, line) == 0;

        /* the prefill of the same tokens */
        const int32_t n_tok = llama_tokenize(vocab, text, (int32_t) strlen(text), tokens, MAX_LINE, false, false);
        if (n_tok <= 0 || n_tok > (int32_t) cparams.n_ctx) {
            continue; /* empty or longer than the context: nothing to compare with */
        }
        llama_memory_clear(llama_get_memory(ctx), true);
        const int64_t t2 = ggml_time_us();
        if (llama_decode(ctx, llama_batch_get_one(tokens, n_tok)) != 0) {
            fprintf(stderr, "prefill failed on line %d\n", n + 1);
            return 1;
        }
        llama_synchronize(ctx);
        const int64_t t3 = ggml_time_us();

        t_route[n] = (t1 - t0) / 1000.0;
        t_prefill[n] = (t3 - t2) / 1000.0;
        ratio[n] = t_route[n] / t_prefill[n];
        sum_route += t_route[n];
        sum_prefill += t_prefill[n];
        n_tokens += n_tok;
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "%s: no prompts\n", argv[2]);
        return 1;
    }
    printf("prompts %d, tokens %ld (mean %.1f), threads %d\n", n, n_tokens, (double) n_tokens / n, n_threads);
    printf("routing accuracy %.4f (%d/%d)\n", (double) right / n, right, n);
    printf("total: route %.3f ms, prefill %.1f ms, route/prefill %.5f\n", sum_route, sum_prefill, sum_route / sum_prefill);
    const double worst = (qsort(ratio, (size_t) n, sizeof(double), cmp_double), ratio[n - 1]);
    printf("per prompt: median route %.4f ms, median prefill %.2f ms, median route/prefill %.5f, max %.5f\n",
        median(t_route, n), median(t_prefill, n), ratio[n / 2], worst);

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
