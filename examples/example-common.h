/* Helpers the example programs share: quiet logging and medians of timings. */
#pragma once

#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

/* llama.cpp's log, errors only: the examples print their own results. */
static inline void quiet_log(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static inline int cmp_double(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

/* Median of n values (sorts them in place). */
static inline double median(double * v, int n) {
    qsort(v, (size_t) n, sizeof(double), cmp_double);
    return v[n / 2];
}
