/*
 * bench: what the benchmark programs in tests/bench/ share.
 */
#ifndef EXAQ_TESTS_BENCH_H
#define EXAQ_TESTS_BENCH_H

#include <stdio.h>
#include <string.h>

/* The short commit hash of the tree being measured ("unknown" outside a checkout), for the
 * git_sha column of the CSV rows (STYLE 3.5). */
static inline const char *bench_git_sha(void)
{
    static char sha[64];
    if (sha[0])
        return sha;
    snprintf(sha, sizeof(sha), "unknown");
    FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (p) {
        if (fgets(sha, sizeof(sha), p))
            sha[strcspn(sha, "\n")] = '\0';
        pclose(p);
    }
    return sha;
}

#endif
