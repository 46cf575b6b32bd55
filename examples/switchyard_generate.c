/* Embedding a switchyard bundle through llama.cpp's C API (built with -DLLAMA_SWITCHYARD=ON):
 * open the bundle, list its experts, switch between them in place, generate a few tokens with
 * each. Greedy decoding, so runs are reproducible.
 *
 *   switchyard_generate MODEL PROMPT N_TOKENS [EXPERT...]
 *
 * With experts named, the model must be a bundle; each expert in turn ("base" for the base
 * model) is switched in and generates N_TOKENS from PROMPT. Without, MODEL (any GGUF) generates
 * once. Each run prints one line: "<expert>\t<token ids>\t<switch ms>\t<text>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "llama-switchyard.h"

#include "example-common.h"

/* Greedy generation of n tokens after prompt; prints the line described above. */
static int generate(struct llama_context * ctx, const struct llama_vocab * vocab, const char * label,
                    const char * prompt, int n, double switch_ms) {
    llama_token tokens[512];
    const int n_prompt = llama_tokenize(vocab, prompt, (int32_t) strlen(prompt), tokens, 512, true, true);
    if (n_prompt < 0 || n_prompt + n > 512) {
        fprintf(stderr, "prompt too long\n");
        return 1;
    }
    llama_memory_clear(llama_get_memory(ctx), true);
    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    char text[4096] = "";
    printf("%s\t", label);
    for (int i = 0; i < n; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < llama_vocab_n_tokens(vocab); t++) {
            if (logits[t] > logits[best]) {
                best = t;
            }
        }
        printf("%s%d", i ? " " : "", best);
        char piece[128];
        const int len = llama_token_to_piece(vocab, best, piece, sizeof(piece) - 1, 0, true);
        if (len > 0 && strlen(text) + (size_t) len < sizeof(text)) {
            piece[len] = '\0';
            strcat(text, piece);
        }
        tokens[n_prompt + i] = best;
        batch = llama_batch_get_one(&tokens[n_prompt + i], 1);
    }
    for (char * c = text; *c; c++) {
        if (*c == '\n' || *c == '\t') {
            *c = ' ';
        }
    }
    printf("\t%.3f\t%s\n", switch_ms, text);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_TOKENS [EXPERT...]\n", argv[0]);
        return 2;
    }
    const int n_tokens = atoi(argv[3]);
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mparams = llama_model_default_params();
    struct llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == NULL) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 512;
    cparams.n_batch = 512;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    const int n_experts = llama_switchyard_n_experts(model);
    fprintf(stderr, "%s: %d experts:", argv[1], n_experts);
    for (int i = 0; i < n_experts; i++) {
        char name[64];
        llama_switchyard_expert_name(model, i, name, sizeof(name));
        fprintf(stderr, " %s", name);
    }
    fprintf(stderr, "\n");

    int rc = 0;
    if (argc == 4) {
        rc = generate(ctx, vocab, "-", argv[2], n_tokens, 0.0);
    }
    for (int a = 4; a < argc && rc == 0; a++) {
        const int64_t t0 = llama_time_us();
        if (llama_switchyard_set_expert(ctx, argv[a]) != 0) {
            fprintf(stderr, "cannot switch to expert '%s'\n", argv[a]);
            rc = 1;
            break;
        }
        const double ms = (llama_time_us() - t0) / 1000.0;
        if (strcmp(llama_switchyard_current_expert(model), argv[a]) != 0) {
            fprintf(stderr, "current expert is '%s', not '%s'\n", llama_switchyard_current_expert(model), argv[a]);
            rc = 1;
            break;
        }
        rc = generate(ctx, vocab, argv[a], argv[2], n_tokens, ms);
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
