/* CHECK(cond): the C tests' assertion; on failure prints the condition and switchyard's last
 * error detail, then exits 1. */
#pragma once

#include <stdio.h>
#include <stdlib.h>

#include "switchyard.h"

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            char detail[512];                                                 \
            switchyard_last_error(detail, sizeof detail);                     \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",     \
                    __FILE__, __LINE__, #cond, detail);                       \
            exit(1);                                                          \
        }                                                                     \
    } while (0)
